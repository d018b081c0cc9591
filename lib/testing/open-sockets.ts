import type { WebSocket } from 'ws';
import { WS_TEST_DEFAULTS } from './testing.constants.js';

/**
 * Every socket the kit has opened and not yet seen closed, from the first byte of the
 * handshake on: {@link closeWsTestClients} closes them, so a failed test leaves nothing open.
 */
const sockets = new Set<WebSocket>();

export function track(socket: WebSocket): void {
  sockets.add(socket);
  socket.once('close', () => sockets.delete(socket));
}

/** Closes `socket` (1000), terminating it if the server does not answer within `timeout` ms. */
export function closeQuietly(
  socket: WebSocket,
  timeout: number = WS_TEST_DEFAULTS.timeout,
): Promise<void> {
  if (socket.readyState === socket.CLOSED) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => socket.terminate(), timeout);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    // A handshake in progress has nothing to close politely.
    if (socket.readyState === socket.CONNECTING) socket.terminate();
    else if (socket.readyState === socket.OPEN) socket.close(1000);
  });
}

/**
 * Closes every client the kit opened that is still open (close 1000, then terminate after
 * `timeout` ms), and every handshake still in progress, and resolves once all are closed. For
 * an `afterEach`, so one failed test cannot leave clients behind for the next one.
 */
export async function closeWsTestClients(options: { timeout?: number } = {}): Promise<void> {
  await Promise.all([...sockets].map((socket) => closeQuietly(socket, options.timeout)));
}

/** How many sockets the kit has open (handshakes in progress included). */
export function openWsTestClients(): number {
  return sockets.size;
}
