import type { Socket } from 'node:net';
import * as ws from 'ws';
import { writeOut } from './direct-write.js';

/** How a route treats connections that do not read fast enough. */
export interface OutboundPolicy {
  /** Bytes a connection may have queued before `slowConsumer` applies. */
  maxBufferedAmount: number;
  /** Above this, `volatile` messages skip the connection, and `@OnDrain` is armed. */
  lowWatermark: number;
  /** `'close'`: close with 1013; `'drop'`: skip messages while over the cap, counting them. */
  slowConsumer: 'close' | 'drop';
}

// `Sender` is exported by ws (CommonJS and ESM alike) but missing from @types/ws.
const { Sender } = ws as unknown as { Sender: { frame(data: Buffer, options: object): Buffer[] } };

/**
 * Frames a message once for every recipient (RFC 6455 §5.2, unmasked as server frames are),
 * header and payload in one Buffer so that each socket gets one write. A string is encoded
 * straight into the frame (one allocation, one copy); bytes are framed by `ws`.
 */
export function frameMessage(payload: string | Buffer, binary: boolean): Buffer {
  if (typeof payload !== 'string') {
    const parts = frameParts(payload, binary);
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }
  const length = Buffer.byteLength(payload);
  const header = length < 126 ? 2 : length < 0x10000 ? 4 : 10;
  const frame = Buffer.allocUnsafe(header + length);
  frame[0] = binary ? 0x82 : 0x81; // FIN + opcode
  if (header === 2) {
    frame[1] = length;
  } else if (header === 4) {
    frame[1] = 126;
    frame.writeUInt16BE(length, 2);
  } else {
    frame[1] = 127;
    frame.writeUInt32BE(Math.floor(length / 0x100000000), 2);
    frame.writeUInt32BE(length >>> 0, 6);
  }
  frame.write(payload, header, length, 'utf8');
  return frame;
}

/** The payload of a frame made by {@link frameMessage}: a view of it, not a copy. */
export function payloadOf(frame: Buffer): Buffer {
  const length = frame[1] & 0x7f;
  return frame.subarray(length === 126 ? 4 : length === 127 ? 10 : 2);
}

/** The frame as `ws` builds it: a header and the payload itself (not copied). */
export function frameParts(payload: Buffer, binary: boolean): Buffer[] {
  return Sender.frame(payload, {
    fin: true,
    rsv1: false,
    opcode: binary ? 2 : 1,
    mask: false,
    readOnly: true,
  });
}

/** An empty ping (opcode 9), the heartbeat's: built once, shared by every socket. */
export const PING_FRAME: Buffer = Buffer.concat(
  Sender.frame(Buffer.alloc(0), { fin: true, rsv1: false, opcode: 9, mask: false, readOnly: true }),
);

/** Pending bytes up to which a flush copies them into one buffer; beyond, it uses writev. */
const CONCAT_LIMIT = 64 * 1024;

/**
 * Writes a batch of frames: one `write` of one buffer (one copy of small frames is cheaper
 * than a stream write each), or corked writes that leave as one `writev` for large batches and
 * for sockets that lag behind. `callback` (if any) goes with the last write.
 */
export function writeFrames(
  socket: Socket,
  parts: Buffer | Buffer[],
  total: number,
  fd: number,
  callback: ((error?: Error | null) => void) | undefined,
): void {
  if (!Array.isArray(parts)) {
    writeOut(socket, parts, fd, callback);
    return;
  }
  // A socket that keeps up (nothing left in its stream buffer) takes the copy at once and it
  // is freed; one that lags keeps references to the frames, which a broadcast shares between
  // all its sockets, instead of a copy each.
  if (total <= CONCAT_LIMIT && socket.writableLength === 0) {
    writeOut(socket, Buffer.concat(parts, total), fd, callback);
    return;
  }
  socket.cork();
  const last = parts.length - 1;
  for (let i = 0; i < last; i++) socket.write(parts[i]);
  socket.write(parts[last], callback);
  socket.uncork();
}

/** What a batch schedule flushes: our `WebSocket` subclass. */
export interface Batched {
  flushBatch(endOfTurn: boolean): void;
}

/**
 * Sockets with frames pending in this turn, and when they are written. Whatever closes a
 * socket first writes its batch (see `RoutesWebSocket`), so by the end of the turn a closed
 * socket has nothing left to lose.
 */
class FlushBatch {
  private readonly sockets: Batched[] = [];
  private scheduled = false;
  private readonly flush = (): void => {
    this.scheduled = false;
    const { sockets } = this;
    for (let i = 0; i < sockets.length; i++) sockets[i].flushBatch(true);
    sockets.length = 0;
  };

  constructor(private readonly schedule: (flush: () => void) => void) {}

  add(socket: Batched): void {
    this.sockets.push(socket);
    if (!this.scheduled) {
      this.scheduled = true;
      this.schedule(this.flush);
    }
  }
}

/**
 * Broadcasts (and heartbeat pings) flush when the code running now is done
 * (`process.nextTick`): a burst in one synchronous loop still leaves as one write per socket,
 * and a paced broadcast goes out without waiting for an event-loop iteration. Replies flush
 * after the poll phase (`setImmediate`), so the replies to every message read in one poll phase
 * go out together. Each schedule is the faster one for its traffic in `npm run bench`
 * (paced fan-out for the first, echo for the second); moving either costs that scenario.
 */
export const afterThisCode = new FlushBatch((flush) => process.nextTick(flush));
export const afterPoll = new FlushBatch((flush) => setImmediate(flush));
