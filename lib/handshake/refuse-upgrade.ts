import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import { headerLines, type DroppedHeader } from './header-lines.js';
import { holdSocketErrors } from './socket-errors.js';

/** Headers of a refusal that the server writes itself: they frame the response. */
const RESERVED = new Set(['connection', 'content-length', 'content-type', 'transfer-encoding']);

/**
 * Answers an upgrade request with a plain HTTP error instead of 101 and closes the socket, as
 * `ws` does for a malformed handshake. The body is JSON in Nest's HTTP error shape, so a
 * refused client sees the same thing an HTTP route would have sent. Extra `headers` (a guard's
 * `WWW-Authenticate`, a `Retry-After`) are validated; invalid ones are left out and reported to
 * `dropped`. Never throws: a client that is gone by now (EPIPE, ECONNRESET) costs nothing.
 */
export function refuseUpgrade(
  socket: Duplex,
  status: number,
  message: string | object = STATUS_CODES[status] ?? 'Error',
  headers: Readonly<Record<string, string | number>> = {},
  dropped: DroppedHeader = () => undefined,
): void {
  holdSocketErrors(socket);
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = jsonBody(status, message);
  const lines = [
    'Connection: close',
    'Content-Type: application/json; charset=utf-8',
    `Content-Length: ${Buffer.byteLength(body)}`,
    ...headerLines(headers, RESERVED, dropped),
  ];
  socket.once('finish', () => socket.destroy());
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n${lines.join('\r\n')}\r\n\r\n${body}`,
  );
}

/** The body; an HttpException response that is not JSON (a BigInt, a cycle) gets the generic one. */
function jsonBody(status: number, message: string | object): string {
  if (typeof message !== 'string') {
    try {
      const body = JSON.stringify(message);
      if (typeof body === 'string') return body;
    } catch {
      // Falls through to the generic body.
    }
    message = STATUS_CODES[status] ?? 'Error';
  }
  return JSON.stringify({ statusCode: status, message });
}
