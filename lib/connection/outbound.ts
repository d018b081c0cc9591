import type { Socket } from 'node:net';
import * as ws from 'ws';
import type { WebSocket } from 'ws';

/** How a route treats connections that do not read fast enough. */
export interface OutboundPolicy {
  /** Bytes a connection may have queued before `slowConsumer` applies. */
  maxBufferedAmount: number;
  /** Above this, `volatile` messages skip the connection, and `@OnDrain` is armed. */
  lowWatermark: number;
  /** `'close'`: close with 1013; `'drop'`: skip messages while over the cap, counting them. */
  slowConsumer: 'close' | 'drop';
}

/** The parts of `ws` internals the fast path reads; stable across ws 8.x. */
interface WsInternals {
  _socket: Socket | null;
  _sender: { _state: number };
  _extensions: Record<string, unknown>;
}

const SENDER_IDLE = 0;
const OPEN = 1;
// `Sender` is exported by ws (CommonJS and ESM alike) but missing from @types/ws.
const { Sender } = ws as unknown as { Sender: { frame(data: Buffer, options: object): Buffer[] } };

/**
 * Frames a message once for every recipient (RFC 6455 §5.2, unmasked as server frames are),
 * header and payload in one Buffer so that each socket gets one write.
 */
export function frameMessage(payload: Buffer, binary: boolean): Buffer {
  const parts = frameParts(payload, binary);
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
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

/**
 * Whether a pre-built frame may go straight to the TCP socket without reordering anything:
 * `ws`'s sender is idle (nothing waiting for compression or a Blob) and the connection does
 * not use per-message deflate (whose frames must be compressed per socket). Otherwise the
 * message goes through `ws.send()`.
 */
export function canWriteFrame(ws: WebSocket): boolean {
  const internals = ws as unknown as WsInternals;
  return internals._sender._state === SENDER_IDLE && !internals._extensions['permessage-deflate'];
}

/**
 * Frames (or frame parts) waiting for the end of the turn, in the order they were sent: `null`
 * for none yet, one Buffer (the common case, no array), or several.
 */
type Pending = Buffer | Buffer[] | null | undefined;
type BatchedSocket = Socket & { [kPending]?: Pending };
const kPending = Symbol('nestjs-ws-routes:pending');

/** Pending bytes up to which a flush copies them into one buffer; beyond, it uses writev. */
const CONCAT_LIMIT = 64 * 1024;

/**
 * Writes a socket's pending frames now: one `write` of one buffer (one copy of small frames is
 * cheaper than a stream write each), or corked writes that leave as one `writev` for large
 * batches and for sockets that lag behind.
 */
export function flushFrames(socket: Socket): void {
  const batched = socket as BatchedSocket;
  const parts = batched[kPending];
  if (parts === undefined) return;
  batched[kPending] = undefined;
  if (parts === null || !socket.writable) return;
  if (!Array.isArray(parts)) {
    socket.write(parts);
    return;
  }
  let total = 0;
  for (let i = 0; i < parts.length; i++) total += parts[i].length;
  // A socket that keeps up (nothing left in its stream buffer) takes the copy at once and it
  // is freed; one that lags keeps references to the frames, which a broadcast shares between
  // all its sockets, instead of a copy each.
  if (total <= CONCAT_LIMIT && socket.writableLength === 0) {
    socket.write(Buffer.concat(parts, total));
    return;
  }
  socket.cork();
  for (let i = 0; i < parts.length; i++) socket.write(parts[i]);
  socket.uncork();
}

/**
 * Connections with frames pending in this turn, and when they are written. A connection that
 * is no longer open by then (the peer's close frame arrived and ws answered it, or it was
 * terminated) gets nothing more: no data frame may follow a close frame (RFC 6455 §5.5.1).
 * `WsConnection.close()` writes what is pending before its close frame.
 */
class FlushBatch {
  private readonly sockets: WebSocket[] = [];
  private scheduled = false;
  private readonly flush = (): void => {
    this.scheduled = false;
    const { sockets } = this;
    for (let i = 0; i < sockets.length; i++) {
      const ws = sockets[i];
      const raw = rawSocket(ws);
      if (!raw) continue;
      if (ws.readyState === OPEN) flushFrames(raw);
      else (raw as BatchedSocket)[kPending] = undefined;
    }
    sockets.length = 0;
  };

  constructor(private readonly schedule: (flush: () => void) => void) {}

  add(socket: WebSocket): void {
    this.sockets.push(socket);
    if (!this.scheduled) {
      this.scheduled = true;
      this.schedule(this.flush);
    }
  }
}

/**
 * Broadcasts flush when the code running now is done (`process.nextTick`): a burst in one
 * synchronous loop still leaves as one write per socket, and a paced broadcast goes out without
 * waiting for an event-loop iteration. Replies flush after the poll phase (`setImmediate`), so
 * the replies to every message read in one poll phase go out together. Measured with
 * `npm run bench` (5,000 / 500 connections, ratios to raw ws): everything on setImmediate gave
 * paced fan-out 1.35×; everything on nextTick paced 0.82× but echo 0.82× throughput at 1.24×
 * CPU per reply; this split paced 0.82× and echo 0.93× at 1.16×.
 */
const afterThisCode = new FlushBatch((flush) => process.nextTick(flush));
const afterPoll = new FlushBatch((flush) => setImmediate(flush));

/**
 * Starts this turn's batch for a socket: every message sent to it until the end of the turn
 * (replies, broadcasts, a burst of 200 of them) is kept in order and written at the end in one
 * `write`. Each socket write costs ~13–15 µs of kernel time and each stream write ~0.5 µs of
 * JavaScript: batching saves both, as uWebSockets.js's `cork` does. A socket already in a batch
 * stays in it. Returns `true` for the first call of the turn on this socket.
 */
export function startBatch(ws: WebSocket, socket: Socket, broadcast: boolean): boolean {
  const batched = socket as BatchedSocket;
  if (batched[kPending] !== undefined) return false;
  batched[kPending] = null;
  (broadcast ? afterThisCode : afterPoll).add(ws);
  return true;
}

/** Adds a frame (or its parts, in order) to the socket's batch; `startBatch` came first. */
export function queueFrame(socket: Socket, frame: Buffer): void {
  const batched = socket as BatchedSocket;
  const parts = batched[kPending];
  if (parts === null || parts === undefined) batched[kPending] = frame;
  else if (Array.isArray(parts)) parts.push(frame);
  else batched[kPending] = [parts, frame];
}

/** Bytes in the socket's batch, not yet handed to it. */
export function pendingBytes(socket: Socket): number {
  const parts = (socket as BatchedSocket)[kPending];
  if (!parts) return 0;
  if (!Array.isArray(parts)) return parts.length;
  let total = 0;
  for (let i = 0; i < parts.length; i++) total += parts[i].length;
  return total;
}

/** The raw TCP socket of a `ws` WebSocket, or `null` once it is gone. */
export function rawSocket(ws: WebSocket): Socket | null {
  return (ws as unknown as WsInternals)._socket;
}
