import {
  Inject,
  Injectable,
  Logger,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
  type OnModuleDestroy,
} from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { SHUTDOWN_CLOSE_REASON, WS_ROUTES_DEFAULTS, CloseCode } from './ws-routes.constants.js';
import { WS_ROUTES_OPTIONS } from './ws-routes.module-definition.js';
import type { WsRoutesModuleOptions } from './interfaces/ws-routes-module-options.interface.js';
import type { HeartbeatOptions } from './interfaces/heartbeat-options.interface.js';
import { refuseUpgrade } from './handshake/refuse-upgrade.js';
import { createProtocolSelector } from './handshake/select-protocol.js';
import { UpgradeHub, type UpgradeHandler } from './handshake/upgrade-hub.js';
import { RouteMatcher } from './routing/route-matcher.js';
import { WsRouteExplorer, type WsRouteDefinition } from './routing/ws-route-explorer.js';
import { WsConnection } from './connection/ws-connection.js';
import { WsConnectionRegistry } from './connection/ws-connection-registry.js';
import { Heartbeat } from './connection/heartbeat.js';
import { RouteDispatcher } from './handlers/route-dispatcher.js';
import { WsHandlerFactory } from './handlers/ws-handler-factory.js';
import { WsRoutesExceptionFilter } from './handlers/ws-routes-exception-filter.js';

/** A route as it runs: its `ws` server (for the protocol), dispatcher and heartbeat. */
interface ActiveRoute {
  pattern: string;
  definition: WsRouteDefinition;
  wss: WebSocketServer;
  dispatcher: RouteDispatcher;
  heartbeat: Heartbeat | undefined;
}

/**
 * Owns the WebSocket side of the application: one `upgrade` listener on the HTTP server (the
 * application's, or its own on `port`), a `ws` server per route in `noServer` mode, the
 * heartbeats and the shutdown. Each upgrade goes through fixed steps: match the route →
 * checks → 101 → register the connection → `@OnOpen`.
 */
@Injectable()
export class WsRoutesGateway
  implements OnApplicationBootstrap, OnModuleDestroy, OnApplicationShutdown
{
  private readonly logger = new Logger('WsRoutes');
  private readonly matcher = new RouteMatcher<ActiveRoute>();
  private readonly routes: ActiveRoute[] = [];
  private server: Server | undefined;
  private ownsServer = false;
  private closing = false;
  private shutdown: Promise<void> | undefined;

  constructor(
    @Inject(WS_ROUTES_OPTIONS) private readonly options: WsRoutesModuleOptions,
    private readonly explorer: WsRouteExplorer,
    private readonly handlerFactory: WsHandlerFactory,
    private readonly registry: WsConnectionRegistry,
    private readonly httpAdapterHost: HttpAdapterHost,
  ) {}

  /** Address of the server the routes are served on (the separate `port`, or the app's). */
  address(): AddressInfo | null {
    const address = this.server?.address();
    return address && typeof address === 'object' ? address : null;
  }

  async onApplicationBootstrap(): Promise<void> {
    const exceptionFilter = new WsRoutesExceptionFilter();
    for (const definition of this.explorer.explore()) {
      const route = this.activate(definition, exceptionFilter);
      this.matcher.add(route);
      this.routes.push(route);
    }
    if (this.routes.length === 0) {
      this.logger.warn('WsRoutesModule is imported but no provider is decorated with @WsRoute()');
      return;
    }
    this.server = this.resolveServer();
    UpgradeHub.of(this.server).add(this.onUpgrade);
    if (this.server.listenerCount('upgrade') > 1) {
      this.logger.warn(
        'Another "upgrade" listener is attached to the HTTP server. If it is @nestjs/platform-ws WsAdapter, ' +
          'it destroys upgrades to @WsRoute paths: use app.useWebSocketAdapter(new WsRoutesAdapter(app)) instead.',
      );
    }
    if (this.ownsServer) await this.listen(this.server);
    for (const route of this.routes) route.heartbeat?.start();
  }

  /** `app.close()`: refuse new upgrades with 503, close every connection with 1001. */
  onModuleDestroy(): Promise<void> {
    return (this.shutdown ??= this.closeConnections());
  }

  async onApplicationShutdown(): Promise<void> {
    await this.onModuleDestroy();
    if (this.server) UpgradeHub.of(this.server).remove(this.onUpgrade);
    for (const route of this.routes) route.wss.close();
    if (this.ownsServer && this.server?.listening) {
      const server = this.server;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    }
  }

  private activate(
    definition: WsRouteDefinition,
    exceptionFilter: WsRoutesExceptionFilter,
  ): ActiveRoute {
    const { options: routeOptions, pattern, routeClass } = definition;
    const wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      maxPayload:
        routeOptions.maxPayload ?? this.options.maxPayload ?? WS_ROUTES_DEFAULTS.maxPayload,
      perMessageDeflate:
        routeOptions.perMessageDeflate ??
        this.options.perMessageDeflate ??
        WS_ROUTES_DEFAULTS.perMessageDeflate,
      handleProtocols: createProtocolSelector(routeOptions),
    });
    const handlers = this.handlerFactory.createRouteHandlers(definition);
    const dispatcher = new RouteDispatcher(
      `${routeClass.name} (${pattern})`,
      handlers,
      this.registry,
      exceptionFilter,
      this.logger,
    );
    const heartbeatOptions = resolveHeartbeat(
      this.options.heartbeat,
      routeOptions.heartbeat,
      pattern,
    );
    const heartbeat =
      heartbeatOptions && new Heartbeat(heartbeatOptions, () => this.registry.byRoute(pattern));
    return { pattern, definition, wss, dispatcher, heartbeat };
  }

  private resolveServer(): Server {
    if (this.options.port !== undefined) {
      this.ownsServer = true;
      return createServer((_request, response) => {
        response.writeHead(426, {
          'Content-Type': 'text/plain',
          Upgrade: 'websocket',
          Connection: 'Upgrade',
        });
        response.end('Upgrade Required');
      });
    }
    const server = this.httpAdapterHost?.httpAdapter?.getHttpServer() as Server | undefined;
    if (!server) {
      throw new Error(
        'WsRoutesModule found no HTTP server: create the app with NestFactory.create(), or set the `port` option',
      );
    }
    return server;
  }

  private listen(server: Server): Promise<void> {
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.options.port, this.options.host ?? WS_ROUTES_DEFAULTS.host, () => {
        server.off('error', reject);
        const address = this.address();
        this.logger.log(`WebSocket routes listening on ${address?.address}:${address?.port}`);
        resolve();
      });
    });
  }

  private readonly onUpgrade: UpgradeHandler = (request, socket, head) => {
    const url = request.url ?? '/';
    const queryAt = url.indexOf('?');
    const pathname = queryAt === -1 ? url : url.slice(0, queryAt);
    let found;
    try {
      found = this.matcher.match(pathname);
    } catch {
      refuseUpgrade(socket, 400, 'Malformed percent-encoding in the path');
      return true;
    }
    if (!found) return false;
    if (this.closing) {
      refuseUpgrade(socket, 503, SHUTDOWN_CLOSE_REASON, { 'Retry-After': 5 });
      return true;
    }
    const { route, params } = found;
    this.upgrade(route, request, socket, head, pathname, params);
    return true;
  };

  private upgrade(
    route: ActiveRoute,
    request: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    pathname: string,
    params: Record<string, string>,
  ): void {
    route.wss.handleUpgrade(request, socket, head, (ws: WebSocket) => {
      if (this.closing) {
        ws.close(CloseCode.GoingAway, SHUTDOWN_CLOSE_REASON);
        return;
      }
      const conn = new WsConnection(ws, request, route.pattern, pathname, params, this.registry);
      this.registry.add(conn);
      route.dispatcher.attach(conn);
    });
  }

  private async closeConnections(): Promise<void> {
    this.closing = true;
    for (const route of this.routes) route.heartbeat?.stop();
    const timeout = this.options.shutdownTimeout ?? WS_ROUTES_DEFAULTS.shutdownTimeout;
    const deadline = Date.now() + timeout;
    const connections = [...this.registry];
    const closed = Promise.all(connections.map(whenClosed));
    for (const conn of connections) conn.close(CloseCode.GoingAway, SHUTDOWN_CLOSE_REASON);
    if (!(await within(closed, deadline))) {
      const stuck = connections.filter((conn) => conn.readyState !== WsConnection.CLOSED);
      this.logger.warn(
        `${stuck.length} connection(s) did not answer the close within ${timeout} ms; terminating`,
      );
      for (const conn of stuck) conn.terminate('Shutdown timeout');
      await within(closed, Date.now() + 1000);
    }
    const handlersDone = Promise.all(this.routes.map((route) => route.dispatcher.settled()));
    if (!(await within(handlersDone, Math.max(deadline, Date.now() + 100)))) {
      this.logger.warn('@OnClose handlers were still running when the shutdown timeout expired');
    }
  }
}

function whenClosed(conn: WsConnection): Promise<void> {
  if (conn.readyState === WsConnection.CLOSED) return Promise.resolve();
  return new Promise((resolve) => conn.socket.once('close', () => resolve()));
}

/** Waits for `promise` until `deadline`; `true` if it settled in time. */
async function within(promise: Promise<unknown>, deadline: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<false>(
    (resolve) => (timer = setTimeout(resolve, Math.max(0, deadline - Date.now()), false)),
  );
  try {
    return await Promise.race([promise.then(() => true as const), expired]);
  } finally {
    clearTimeout(timer);
  }
}

function resolveHeartbeat(
  moduleLevel: Partial<HeartbeatOptions> | false | undefined,
  routeLevel: Partial<HeartbeatOptions> | false | undefined,
  pattern: string,
): HeartbeatOptions | undefined {
  if (routeLevel === false || (routeLevel === undefined && moduleLevel === false)) return undefined;
  const options = {
    ...WS_ROUTES_DEFAULTS.heartbeat,
    ...(moduleLevel || {}),
    ...(routeLevel || {}),
  };
  if (!(options.interval > 0 && options.timeout > 0 && options.timeout < options.interval)) {
    throw new Error(
      `Heartbeat of ${pattern}: need 0 < timeout < interval, got interval ${options.interval} ms, timeout ${options.timeout} ms`,
    );
  }
  return options;
}
