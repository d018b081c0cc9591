import { Logger } from '@nestjs/common';
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { handshakeArrived } from './handshake-timeout.js';
import { refuseUpgrade } from './refuse-upgrade.js';

/** Takes an upgrade request and returns `true`, or returns `false` to pass it on. */
export type UpgradeHandler = (request: IncomingMessage, socket: Duplex, head: Buffer) => boolean;

const hubs = new WeakMap<Server, UpgradeHub>();

/**
 * The single `upgrade` listener of one HTTP server. Our routes and, through `WsRoutesAdapter`,
 * classic `@WebSocketGateway` gateways register here, so one listener routes both and neither
 * destroys the other's sockets. A request nobody claims gets 404, unless some other library
 * also listens for upgrades on this server; then it is left to that library.
 */
export class UpgradeHub {
  private static readonly logger = new Logger('WsRoutes');
  private readonly handlers: UpgradeHandler[] = [];
  private readonly listener = (request: IncomingMessage, socket: Duplex, head: Buffer): void => {
    handshakeArrived(socket as Socket);
    try {
      for (const handler of this.handlers) {
        if (handler(request, socket, head)) return;
      }
    } catch (error) {
      // An exception here would escape into the HTTP server's 'upgrade' event and end the
      // process; one bad request must only cost its own socket.
      UpgradeHub.logger.error(`Upgrade of ${request.url} failed`, (error as Error)?.stack);
      refuseUpgrade(socket, 500, 'Internal server error');
      return;
    }
    if (this.server.listenerCount('upgrade') === 1)
      refuseUpgrade(socket, 404, 'No WebSocket endpoint at this path');
  };

  private constructor(private readonly server: Server) {}

  /** The hub of a server, created on first use. */
  static of(server: Server): UpgradeHub {
    let hub = hubs.get(server);
    if (!hub) hubs.set(server, (hub = new UpgradeHub(server)));
    return hub;
  }

  add(handler: UpgradeHandler): void {
    if (this.handlers.length === 0) this.server.on('upgrade', this.listener);
    this.handlers.push(handler);
  }

  remove(handler: UpgradeHandler): void {
    const index = this.handlers.indexOf(handler);
    if (index === -1) return;
    this.handlers.splice(index, 1);
    if (this.handlers.length === 0) this.server.off('upgrade', this.listener);
  }
}
