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
// `Sender` is exported by ws (CommonJS and ESM alike) but missing from @types/ws.
const { Sender } = ws as unknown as { Sender: { frame(data: Buffer, options: object): Buffer[] } };

/**
 * Frames a message once for every recipient (RFC 6455 §5.2, unmasked as server frames are),
 * header and payload in one Buffer so that each socket gets one write.
 */
export function frameMessage(payload: Buffer, binary: boolean): Buffer {
  const parts = Sender.frame(payload, {
    fin: true,
    rsv1: false,
    opcode: binary ? 2 : 1,
    mask: false,
    readOnly: true,
  });
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
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

const corked: Socket[] = [];
const kCorked = Symbol('corked');
let flushScheduled = false;

/**
 * Holds a socket's writes until the code running now is done (`process.nextTick`: the end of
 * this turn of the event loop, before any I/O), so that every message sent to it in the turn
 * (replies, broadcasts, a burst of 200 of them) leaves in one `writev` syscall. Each socket write costs ~13–15 µs of kernel time; this is the main saving of a
 * broadcast burst, the same thing uWebSockets.js's `cork` does. Order is untouched: cork
 * only batches the writes, in the order they were made. Returns `true` for the first call of
 * the turn on this socket.
 */
export function corkForThisTurn(socket: Socket): boolean {
  const flagged = socket as Socket & { [kCorked]?: boolean };
  if (flagged[kCorked]) return false;
  flagged[kCorked] = true;
  socket.cork();
  corked.push(socket);
  if (!flushScheduled) {
    flushScheduled = true;
    process.nextTick(uncorkAll);
  }
  return true;
}

function uncorkAll(): void {
  flushScheduled = false;
  for (let i = 0; i < corked.length; i++) {
    const socket = corked[i] as Socket & { [kCorked]?: boolean };
    socket[kCorked] = false;
    socket.uncork();
  }
  corked.length = 0;
}

/** The raw TCP socket of a `ws` WebSocket, or `null` once it is gone. */
export function rawSocket(ws: WebSocket): Socket | null {
  return (ws as unknown as WsInternals)._socket;
}
