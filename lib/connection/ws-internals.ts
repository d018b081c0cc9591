import { Logger } from '@nestjs/common';
import type { Socket } from 'node:net';
import type { WebSocket } from 'ws';

/**
 * The private fields of `ws` that the write path reads, all of them here:
 * - whether its `Sender` is idle (nothing waiting for compression or for a Blob to be read).
 *   While it is not, a frame written straight to the TCP socket would overtake what the sender
 *   holds, so messages go through `ws.send()` instead;
 * - whether the peer's close frame has arrived, to tell `ws`'s answer to it from other closes;
 * - its TCP socket (`_socket`), which the batch is written to;
 * - and, of Node's `net.Socket`, how many bytes the kernel has taken ({@link sentBytes}), for
 *   the heartbeat's verdict on a connection with a backlog.
 * Everything else comes from public API (`extensions`, `bufferedAmount`, error codes) or from
 * the methods our `WebSocket` subclass overrides: the public `close`, `send`, `ping`, `pong`,
 * `terminate`, and `setSocket`, which `ws`'s server calls once the 101 is written (not
 * documented, but the one place a subclass learns that the connection is open).
 *
 * They are probed on the first connection; if a future `ws` changes them, every message goes
 * through `ws.send()` (correct, without batching), the peer's close is answered at once, and a
 * warning says so once.
 */
interface Internals {
  _socket?: unknown;
  _sender?: { _state?: unknown } | null;
  _closeFrameReceived?: unknown;
}

const SENDER_IDLE = 0;

let probed: boolean | undefined;

/** Checks once that `ws`'s sender state can be read; `false` means: never batch. */
export function probeWsInternals(ws: WebSocket): boolean {
  if (probed !== undefined) return probed;
  const internals = ws as unknown as Internals;
  probed =
    typeof internals._socket === 'object' &&
    internals._socket !== null &&
    typeof internals._sender?._state === 'number' &&
    typeof internals._closeFrameReceived === 'boolean';
  if (!probed) {
    new Logger('WsRoutes').warn(
      'This version of ws does not expose the sender and close state the write path reads; ' +
        'messages are sent one by one through ws.send() (correct, but without write batching), ' +
        "and a peer's close is answered without waiting for the replies still being made",
    );
  }
  return probed;
}

/** Whether `ws`'s sender has nothing waiting, so a pre-built frame may go to the socket. */
export function senderIdle(ws: WebSocket): boolean {
  return (ws as unknown as { _sender: { _state: number } })._sender._state === SENDER_IDLE;
}

/** Whether the peer's close frame has arrived (false where the probe failed). */
export function peerCloseReceived(ws: WebSocket): boolean {
  return probed === true && (ws as unknown as { _closeFrameReceived: boolean })._closeFrameReceived;
}

/** The TCP socket of a connection, once its handshake is done. */
export function tcpSocketOf(ws: WebSocket): Socket | null {
  return (ws as unknown as { _socket: Socket | null })._socket;
}

/** Node's `net.Socket` internals behind {@link sentBytes}. */
interface NetInternals {
  _bytesDispatched?: unknown;
  _handle?: { writeQueueSize?: unknown } | null;
}

/**
 * Bytes of a TCP socket the kernel has taken so far. Node counts a write as done only when all
 * of it is taken, so one large write in progress would look stuck for as long as it lasts;
 * libuv's count of what it still holds (`writeQueueSize`) shows it moving. Without those
 * fields, the public count of completed writes.
 */
export function sentBytes(socket: Socket): number {
  const net = socket as unknown as NetInternals;
  const dispatched = net._bytesDispatched;
  const queued = net._handle?.writeQueueSize;
  if (typeof dispatched === 'number' && typeof queued === 'number') return dispatched - queued;
  return socket.bytesWritten - socket.writableLength;
}
