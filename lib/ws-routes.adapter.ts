import { WsAdapter } from '@nestjs/platform-ws';
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import { CloseCode, INTERNAL_ERROR_MESSAGE } from './ws-routes.constants.js';
import { refuseUpgrade } from './handshake/refuse-upgrade.js';
import { releaseSocketErrors } from './handshake/socket-errors.js';
import { UpgradeHub, type UpgradeHandler } from './handshake/upgrade-hub.js';
import { requestUrl } from './routing/request-path.js';

const SHARED_SERVER_PORT = 0;

/** A `ws` server the `WsAdapter` registered for a gateway, with the path it normalized. */
interface GatewayServer {
  path: string;
  handleUpgrade(
    request: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    callback: (ws: WebSocket) => void,
  ): void;
  emit(event: 'connection', ws: WebSocket, request: unknown): boolean;
}

/**
 * Nest's `WsAdapter` for classic `@WebSocketGateway` gateways, sharing the HTTP server's single
 * `upgrade` listener with `@WsRoute` routes. The plain `WsAdapter` destroys every upgrade whose
 * path is not one of its gateways, which includes our routes; this one passes them on. It
 * takes the same arguments as `WsAdapter` (the app or HTTP server, and options such as a
 * custom `messageParser`) and matches a gateway's path exactly as `WsAdapter` does.
 *
 * @example
 * ```ts
 * const app = await NestFactory.create(AppModule);
 * app.useWebSocketAdapter(new WsRoutesAdapter(app, { messageParser }));
 * ```
 */
export class WsRoutesAdapter extends WsAdapter {
  private readonly hubHandlers = new Map<Server, UpgradeHandler>();

  /** Every argument goes to `WsAdapter`: `(appOrHttpServer?, options?)`. */
  constructor(...args: ConstructorParameters<typeof WsAdapter>) {
    super(...args);
  }

  protected override ensureHttpServerExists(port: number, httpServer?: Server): Server | undefined {
    if (port !== SHARED_SERVER_PORT || !httpServer)
      return super.ensureHttpServerExists(port, httpServer);
    if (this.httpServersRegistry.has(port)) return undefined;
    this.httpServersRegistry.set(port, httpServer);
    const handler: UpgradeHandler = (request, socket, head) => {
      // WsAdapter's reading of the target: absolute-form and dot segments resolved, the path
      // still percent-encoded, compared exactly with the gateway's normalized path.
      const url = requestUrl(request);
      if (!url) {
        refuseUpgrade(socket, 400, 'Malformed request target');
        return true;
      }
      const servers = (this.wsServersRegistry.get(port) ?? []) as GatewayServer[];
      const wsServer = servers.find((candidate) => candidate.path === url.pathname);
      if (!wsServer) return false;
      wsServer.handleUpgrade(request, socket, head, (ws) => {
        releaseSocketErrors(socket); // ws listens now
        try {
          wsServer.emit('connection', ws, request);
        } catch (error) {
          // A throwing 'connection' listener must cost its connection only, not the process.
          this.logger.error(error);
          ws.close(CloseCode.InternalError, INTERNAL_ERROR_MESSAGE);
        }
      });
      return true;
    };
    UpgradeHub.of(httpServer).add(handler);
    this.hubHandlers.set(httpServer, handler);
    return httpServer;
  }

  override async dispose(): Promise<void> {
    for (const [server, handler] of this.hubHandlers) UpgradeHub.of(server).remove(handler);
    this.hubHandlers.clear();
    await super.dispose();
  }
}
