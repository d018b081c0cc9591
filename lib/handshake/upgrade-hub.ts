import { Logger } from '@nestjs/common';
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { loggablePath } from '../routing/request-path.js';
import { handshakeArrived } from './handshake-timeout.js';
import { refuseUpgrade } from './refuse-upgrade.js';
import { holdSocketErrors } from './socket-errors.js';

/**
 * Takes an upgrade request and returns `true`, or returns `false` to pass it on. A handler that
 * claims a socket hands it to `ws` (whose `handleUpgrade` callback calls
 * `releaseSocketErrors`) or answers it; until then the hub's `'error'` listener is on it.
 */
export type UpgradeHandler = (request: IncomingMessage, socket: Duplex, head: Buffer) => boolean;

/** Told of each upgrade the hub answered itself: 404 (nobody claimed it) or 500. */
export type HubRefusalListener = (status: number) => void;

const hubs = new WeakMap<Server, UpgradeHub>();

/**
 * The single `upgrade` listener of one HTTP server. Our routes and, through `WsRoutesAdapter`,
 * classic `@WebSocketGateway` gateways register here, so one listener routes both and neither
 * destroys the other's sockets. A request nobody claims gets 404, unless some other library
 * also listens for upgrades on this server; then it is left to that library.
 *
 * From the moment of `'upgrade'` the socket has an `'error'` listener (Node removed its own
 * before emitting the event), so a client that resets during a slow guard cannot end the
 * process.
 */
export class UpgradeHub {
  private static readonly logger = new Logger('WsRoutes');
  private readonly handlers: UpgradeHandler[] = [];
  private readonly refusalListeners = new Map<UpgradeHandler, HubRefusalListener>();
  private readonly listener = (request: IncomingMessage, socket: Duplex, head: Buffer): void => {
    handshakeArrived(socket as Socket);
    holdSocketErrors(socket);
    try {
      for (const handler of this.handlers) {
        if (handler(request, socket, head)) return;
      }
    } catch (error) {
      // An exception here would escape into the HTTP server's 'upgrade' event and end the
      // process; one bad request must only cost its own socket.
      UpgradeHub.logger.error(
        `Upgrade of ${loggablePath(request)} failed`,
        error instanceof Error ? error.stack : String(error),
      );
      this.refuse(socket, 500, 'Internal server error');
      return;
    }
    if (this.server.listenerCount('upgrade') === 1)
      this.refuse(socket, 404, 'No WebSocket endpoint at this path');
  };

  private constructor(private readonly server: Server) {}

  /** The hub of a server, created on first use. */
  static of(server: Server): UpgradeHub {
    let hub = hubs.get(server);
    if (!hub) hubs.set(server, (hub = new UpgradeHub(server)));
    return hub;
  }

  /** Adds a handler; `onRefused` (the metrics' count of unmatched upgrades) is told of refusals. */
  add(handler: UpgradeHandler, onRefused?: HubRefusalListener): void {
    if (this.handlers.length === 0) this.server.on('upgrade', this.listener);
    this.handlers.push(handler);
    if (onRefused) this.refusalListeners.set(handler, onRefused);
  }

  remove(handler: UpgradeHandler): void {
    const index = this.handlers.indexOf(handler);
    if (index === -1) return;
    this.handlers.splice(index, 1);
    this.refusalListeners.delete(handler);
    if (this.handlers.length === 0) this.server.off('upgrade', this.listener);
  }

  private refuse(socket: Duplex, status: number, message: string): void {
    // A client that is gone gets no answer, and is not counted as one.
    if (socket.writable) for (const listener of this.refusalListeners.values()) listener(status);
    refuseUpgrade(socket, status, message);
  }
}
