import type { INestApplicationContext } from '@nestjs/common';
import { WsAdapter } from '@nestjs/platform-ws';
import type { Server } from 'node:http';
import { UpgradeHub, type UpgradeHandler } from './handshake/upgrade-hub.js';

const SHARED_SERVER_PORT = 0;

/**
 * Nest's `WsAdapter` for classic `@WebSocketGateway` gateways, sharing the HTTP server's single
 * `upgrade` listener with `@WsRoute` routes. The plain `WsAdapter` destroys every upgrade whose
 * path is not one of its gateways, which includes our routes; this one passes them on.
 *
 * @example
 * ```ts
 * const app = await NestFactory.create(AppModule);
 * app.useWebSocketAdapter(new WsRoutesAdapter(app));
 * ```
 */
export class WsRoutesAdapter extends WsAdapter {
  private readonly hubHandlers = new Map<Server, UpgradeHandler>();

  constructor(appOrHttpServer?: INestApplicationContext | object) {
    super(appOrHttpServer);
  }

  protected override ensureHttpServerExists(port: number, httpServer?: Server): Server | undefined {
    if (port !== SHARED_SERVER_PORT || !httpServer)
      return super.ensureHttpServerExists(port, httpServer);
    if (this.httpServersRegistry.has(port)) return undefined;
    this.httpServersRegistry.set(port, httpServer);
    const handler: UpgradeHandler = (request, socket, head) => {
      const url = request.url ?? '/';
      const queryAt = url.indexOf('?');
      const pathname = queryAt === -1 ? url : url.slice(0, queryAt);
      for (const wsServer of this.wsServersRegistry.get(port) ?? []) {
        if (wsServer.path !== pathname) continue;
        wsServer.handleUpgrade(request, socket, head, (ws: unknown) =>
          wsServer.emit('connection', ws, request),
        );
        return true;
      }
      return false;
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
