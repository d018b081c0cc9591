import type { Server } from 'node:http';
import { Server as TlsServer } from 'node:tls';
import type { Socket } from 'node:net';

/** Sockets that have not sent their first request yet, with their cut-off time and timer. */
const pending = new Map<Socket, { server: Server; timer: NodeJS.Timeout; cutOffAt: number }>();
const RESPONSE_408 =
  'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n';

/**
 * Stops watching a server; `cutPendingAfter(grace)` brings the cut-off of its sockets that have
 * not sent a request yet forward to `grace` ms from now.
 */
export interface HandshakeWatch {
  stop(): void;
  cutPendingAfter(grace: number): void;
}

/**
 * Cuts off connections that do not finish their first request (the upgrade request, typically)
 * within `timeout` ms of connecting: the slowloris defence. Node's own `headersTimeout` is
 * checked only every `connectionsCheckingInterval` (30 s by default) and cannot be tightened on
 * a server that already exists.
 */
export function watchHandshakes(server: Server, timeout: number): HandshakeWatch {
  const connectionEvent = server instanceof TlsServer ? 'secureConnection' : 'connection';
  const onConnection = (socket: Socket) => {
    pending.set(socket, { server, ...cutOff(socket, timeout) });
    socket.on('close', onPendingClose);
  };
  const onRequest = (request: { socket: Socket }) => handshakeArrived(request.socket);
  // Upgrades are cleared by the UpgradeHub's listener, which calls handshakeArrived().
  server.on(connectionEvent, onConnection);
  server.on('request', onRequest);
  return {
    stop: () => {
      server.off(connectionEvent, onConnection);
      server.off('request', onRequest);
    },
    // At shutdown: browsers open spare connections that may never send a request, and
    // `server.close()` would wait for them until the handshake timeout. A request whose bytes
    // are on their way (a load balancer's health check, say) still gets its answer.
    cutPendingAfter: (grace) => {
      for (const [socket, entry] of pending) {
        if (entry.server !== server || entry.cutOffAt <= Date.now() + grace) continue;
        clearTimeout(entry.timer);
        Object.assign(entry, cutOff(socket, grace));
      }
    },
  };
}

/** Answers 408 and closes `socket` in `delay` ms unless its request arrives first. */
function cutOff(socket: Socket, delay: number): { timer: NodeJS.Timeout; cutOffAt: number } {
  const timer = setTimeout(() => {
    pending.delete(socket);
    if (socket.writable) {
      socket.once('finish', () => socket.destroy());
      socket.end(RESPONSE_408);
    } else {
      socket.destroy();
    }
  }, delay);
  timer.unref();
  return { timer, cutOffAt: Date.now() + delay };
}

/** The socket's request arrived (or it closed): it is no longer a slow handshake. */
export function handshakeArrived(socket: Socket): void {
  const entry = pending.get(socket);
  if (entry) {
    clearTimeout(entry.timer);
    pending.delete(socket);
    // One listener for every socket, taken off here: a closure per socket would stay on every
    // open WebSocket for its whole life.
    socket.off('close', onPendingClose);
  }
}

function onPendingClose(this: Socket): void {
  handshakeArrived(this);
}
