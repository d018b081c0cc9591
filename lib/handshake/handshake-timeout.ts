import type { Server } from 'node:http';
import { Server as TlsServer } from 'node:tls';
import type { Socket } from 'node:net';

const timers = new WeakMap<Socket, NodeJS.Timeout>();
const RESPONSE_408 =
  'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n';

/**
 * Cuts off connections that do not finish their first request (the upgrade request, typically)
 * within `timeout` ms of connecting: the slowloris defence. Node's own `headersTimeout` is
 * checked only every `connectionsCheckingInterval` (30 s by default) and cannot be tightened on
 * a server that already exists. Returns the function that stops watching.
 */
export function watchHandshakes(server: Server, timeout: number): () => void {
  const connectionEvent = server instanceof TlsServer ? 'secureConnection' : 'connection';
  const onConnection = (socket: Socket) => {
    const timer = setTimeout(() => {
      timers.delete(socket);
      if (socket.writable) {
        socket.once('finish', () => socket.destroy());
        socket.end(RESPONSE_408);
      } else {
        socket.destroy();
      }
    }, timeout);
    timer.unref();
    timers.set(socket, timer);
    socket.once('close', () => handshakeArrived(socket));
  };
  const onRequest = (request: { socket: Socket }) => handshakeArrived(request.socket);
  // Upgrades are cleared by the UpgradeHub's listener, which calls handshakeArrived().
  server.on(connectionEvent, onConnection);
  server.on('request', onRequest);
  return () => {
    server.off(connectionEvent, onConnection);
    server.off('request', onRequest);
  };
}

/** The socket's request arrived (or it closed): it is no longer a slow handshake. */
export function handshakeArrived(socket: Socket): void {
  const timer = timers.get(socket);
  if (timer) {
    clearTimeout(timer);
    timers.delete(socket);
  }
}
