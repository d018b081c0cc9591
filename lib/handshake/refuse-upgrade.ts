import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';

/**
 * Answers an upgrade request with a plain HTTP error instead of 101 and closes the socket, as
 * `ws` does for a malformed handshake. The body is JSON in Nest's HTTP error shape, so a
 * refused client sees the same thing an HTTP route would have sent.
 */
export function refuseUpgrade(
  socket: Duplex,
  status: number,
  message: string | object = STATUS_CODES[status] ?? 'Error',
  headers: Record<string, string | number> = {},
): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify(
    typeof message === 'string' ? { statusCode: status, message } : message,
  );
  const head = {
    Connection: 'close',
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    ...headers,
  };
  const lines = Object.entries(head).map(([name, value]) => `${name}: ${value}`);
  socket.once('finish', () => socket.destroy());
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n${lines.join('\r\n')}\r\n\r\n${body}`,
  );
}
