import type { Duplex } from 'node:stream';

/**
 * The raw socket's `'error'` listener from `'upgrade'` until `ws` owns the socket. Node
 * removes its own listener before it emits `'upgrade'`, so a reset during an async guard, or
 * an EPIPE on a refusal, would otherwise be an uncaught exception that ends the process. One
 * function for every socket: a closure each would cost a handshake's worth of heap per socket.
 */
function onEarlySocketError(this: Duplex): void {
  // The error is the client leaving; the socket is destroyed, and its 'close' frees the slot.
  this.destroy();
}

/** Listens for the socket's errors until {@link releaseSocketErrors}; safe to call twice. */
export function holdSocketErrors(socket: Duplex): void {
  if (!socket.listeners('error').includes(onEarlySocketError)) {
    socket.on('error', onEarlySocketError);
  }
}

/** `ws` listens now (its `handleUpgrade` callback ran): ours goes. */
export function releaseSocketErrors(socket: Duplex): void {
  socket.off('error', onEarlySocketError);
}

/** For a `ws` WebSocket nobody else listens on (one handed over during the shutdown). */
export function ignoreError(): void {}
