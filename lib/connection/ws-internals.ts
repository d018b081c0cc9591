import { Logger } from '@nestjs/common';
import type { WebSocket } from 'ws';

/**
 * The one private field of `ws` that the write path reads: whether its `Sender` is idle
 * (nothing waiting for compression or for a Blob to be read). While it is not, a frame written
 * straight to the TCP socket would overtake what the sender holds, so messages go through
 * `ws.send()` instead. Everything else the write path needs comes from public API or from the
 * hooks of our `WebSocket` subclass.
 *
 * The field is probed on the first connection; if a future `ws` changes it, every message goes
 * through `ws.send()` (correct, without batching) and a warning says so once.
 */
interface SenderInternals {
  _sender?: { _state?: unknown } | null;
}

const SENDER_IDLE = 0;

let probed: boolean | undefined;

/** Checks once that `ws`'s sender state can be read; `false` means: never batch. */
export function probeWsInternals(ws: WebSocket): boolean {
  if (probed !== undefined) return probed;
  const sender = (ws as unknown as SenderInternals)._sender;
  probed = typeof sender?._state === 'number';
  if (!probed) {
    new Logger('WsRoutes').warn(
      'This version of ws does not expose the sender state the write path reads; ' +
        'messages are sent one by one through ws.send() (correct, but without write batching)',
    );
  }
  return probed;
}

/** Whether `ws`'s sender has nothing waiting, so a pre-built frame may go to the socket. */
export function senderIdle(ws: WebSocket): boolean {
  return (ws as unknown as { _sender: { _state: number } })._sender._state === SENDER_IDLE;
}
