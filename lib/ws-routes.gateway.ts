import {
  HttpException,
  Inject,
  Injectable,
  Logger,
  type BeforeApplicationShutdown,
  type CanActivate,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
  type OnModuleDestroy,
} from '@nestjs/common';
import { HttpAdapterHost, ModuleRef } from '@nestjs/core';
import { parse as parseCookies } from 'cookie';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import {
  CloseCode,
  INTERNAL_ERROR_MESSAGE,
  SHUTDOWN_CLOSE_REASON,
  WS_ROUTES_DEFAULTS,
} from './ws-routes.constants.js';
import { WS_ROUTES_OPTIONS } from './ws-routes.module-definition.js';
import type { WsRoutesModuleOptions } from './interfaces/ws-routes-module-options.interface.js';
import type { HeartbeatOptions } from './interfaces/heartbeat-options.interface.js';
import type { HandshakeGuard } from './interfaces/handshake-options.interface.js';
import { clientIp } from './handshake/client-ip.js';
import { ConnectionLimiter } from './handshake/connection-limiter.js';
import {
  createGuardChain,
  HandshakeResponse,
  type HandshakeRequest,
} from './handshake/handshake-guards.js';
import { watchHandshakes, type HandshakeWatch } from './handshake/handshake-timeout.js';
import { OriginGuard } from './handshake/origin.guard.js';
import { refuseUpgrade } from './handshake/refuse-upgrade.js';
import { validateUpgrade } from './handshake/validate-upgrade.js';
import { createProtocolSelector } from './handshake/select-protocol.js';
import { UpgradeHub, type UpgradeHandler } from './handshake/upgrade-hub.js';
import { RouteMatcher } from './routing/route-matcher.js';
import { WsRouteExplorer, type WsRouteDefinition } from './routing/ws-route-explorer.js';
import { parseQuery, WsConnection, type ConnectionRoute } from './connection/ws-connection.js';
import { RateLimiter } from './connection/rate-limiter.js';
import { WsConnectionRegistry } from './connection/ws-connection-registry.js';
import { Heartbeat } from './connection/heartbeat.js';
import { RouteDispatcher } from './handlers/route-dispatcher.js';
import { WsHandlerFactory } from './handlers/ws-handler-factory.js';
import { WsRoutesExceptionFilter } from './handlers/ws-routes-exception-filter.js';

/** A route as it runs: its `ws` server (for the protocol), checks, dispatcher and heartbeat. */
interface ActiveRoute {
  pattern: string;
  definition: WsRouteDefinition;
  wss: WebSocketServer;
  dispatcher: RouteDispatcher;
  heartbeat: Heartbeat | undefined;
  /** The origin check and the handshake guards of the module and the route options. */
  checkGuards: (request: HandshakeRequest, response: HandshakeResponse) => Promise<void>;
  /** The class's `@UseGuards()` and the global guards. */
  checkClassGuards: (request: HandshakeRequest, response: HandshakeResponse) => Promise<unknown>;
  protocolRequired: boolean;
  /** What its connections share: pattern, rooms, outgoing-buffer policy, dispatcher. */
  shared: ConnectionRoute;
  maxConnections: number;
}

/** Response headers a guard set, for the 101. */
const responseHeaders = new WeakMap<IncomingMessage, Record<string, string | number>>();

/**
 * Owns the WebSocket side of the application: one `upgrade` listener on the HTTP server (the
 * application's, or its own on `port`), a `ws` server per route in `noServer` mode, the
 * heartbeats and the shutdown. Each upgrade goes through fixed steps: match the route →
 * checks → 101 → register the connection → `@OnOpen`.
 */
@Injectable()
export class WsRoutesGateway
  implements
    OnApplicationBootstrap,
    OnModuleDestroy,
    BeforeApplicationShutdown,
    OnApplicationShutdown
{
  private readonly logger = new Logger('WsRoutes');
  private readonly matcher = new RouteMatcher<ActiveRoute>();
  private readonly routes: ActiveRoute[] = [];
  private server: Server | undefined;
  private ownsServer = false;
  private closing = false;
  private shutdown: Promise<void> | undefined;
  private handshakeWatch: HandshakeWatch | undefined;
  private readonly limiter: ConnectionLimiter;
  private readonly trustProxy: boolean | number;
  private readonly handshakeTimeout: number;

  constructor(
    @Inject(WS_ROUTES_OPTIONS) private readonly options: WsRoutesModuleOptions,
    private readonly explorer: WsRouteExplorer,
    private readonly handlerFactory: WsHandlerFactory,
    private readonly registry: WsConnectionRegistry,
    private readonly httpAdapterHost: HttpAdapterHost,
    private readonly moduleRef: ModuleRef,
  ) {
    this.limiter = new ConnectionLimiter(
      options.maxConnections ?? WS_ROUTES_DEFAULTS.maxConnections,
      options.maxConnectionsPerIp ?? WS_ROUTES_DEFAULTS.maxConnectionsPerIp,
    );
    this.trustProxy = options.trustProxy ?? false;
    this.handshakeTimeout = options.handshakeTimeout ?? WS_ROUTES_DEFAULTS.handshakeTimeout;
  }

  /** Address of the server the routes are served on (the separate `port`, or the app's). */
  address(): AddressInfo | null {
    const address = this.server?.address();
    return address && typeof address === 'object' ? address : null;
  }

  async onApplicationBootstrap(): Promise<void> {
    const exceptionFilter = new WsRoutesExceptionFilter();
    for (const definition of this.explorer.explore()) {
      const route = await this.activate(definition, exceptionFilter);
      this.matcher.add(route);
      this.routes.push(route);
    }
    if (this.routes.length === 0) {
      this.logger.warn('WsRoutesModule is imported but no provider is decorated with @WsRoute()');
      return;
    }
    this.server = this.resolveServer();
    UpgradeHub.of(this.server).add(this.onUpgrade);
    if (this.handshakeTimeout > 0)
      this.handshakeWatch = watchHandshakes(this.server, this.handshakeTimeout);
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

  /** Before Nest closes the HTTP server, which would wait for sockets that never sent a request. */
  beforeApplicationShutdown(): void {
    this.handshakeWatch?.dropPending();
  }

  async onApplicationShutdown(): Promise<void> {
    await this.onModuleDestroy();
    if (this.server) UpgradeHub.of(this.server).remove(this.onUpgrade);
    this.handshakeWatch?.stop();
    for (const route of this.routes) route.wss.close();
    if (this.ownsServer && this.server?.listening) {
      const server = this.server;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    }
  }

  private async activate(
    definition: WsRouteDefinition,
    exceptionFilter: WsRoutesExceptionFilter,
  ): Promise<ActiveRoute> {
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
    wss.on('headers', (headers: string[], request: IncomingMessage) => {
      const extra = responseHeaders.get(request);
      if (extra)
        for (const [name, value] of Object.entries(extra)) headers.push(`${name}: ${value}`);
    });
    const rateLimit =
      routeOptions.rateLimit ?? this.options.rateLimit ?? WS_ROUTES_DEFAULTS.rateLimit;
    const heartbeatOptions = resolveHeartbeat(
      this.options.heartbeat,
      routeOptions.heartbeat,
      pattern,
    );
    const heartbeat =
      heartbeatOptions && new Heartbeat(heartbeatOptions, () => this.registry.byRoute(pattern));
    const dispatcher = new RouteDispatcher(
      `${routeClass.name} (${pattern})`,
      handlers,
      this.registry,
      exceptionFilter,
      this.logger,
      {
        rateLimiter: rateLimit ? new RateLimiter(rateLimit) : undefined,
        onRemoved: this.releaseSlot,
        keepUpgradeRequest:
          routeOptions.keepUpgradeRequest ??
          this.options.keepUpgradeRequest ??
          WS_ROUTES_DEFAULTS.keepUpgradeRequest,
        heartbeat: Boolean(heartbeat),
      },
    );
    const guards: CanActivate[] = [
      new OriginGuard(routeOptions.origins ?? this.options.origins, this.trustProxy),
      ...(await this.resolveGuards(this.options.guards)),
      ...(await this.resolveGuards(routeOptions.guards, definition.moduleRef)),
    ];
    return {
      pattern,
      definition,
      wss,
      dispatcher,
      heartbeat,
      checkGuards: createGuardChain(guards, routeClass, definition.instance.constructor),
      checkClassGuards: handlers.handshake,
      protocolRequired: routeOptions.requireProtocol ?? false,
      maxConnections: routeOptions.maxConnections ?? Infinity,
      shared: {
        pattern,
        rooms: this.registry,
        events: dispatcher,
        outbound: {
          maxBufferedAmount:
            routeOptions.maxBufferedAmount ??
            this.options.maxBufferedAmount ??
            WS_ROUTES_DEFAULTS.maxBufferedAmount,
          lowWatermark:
            routeOptions.lowWatermark ??
            this.options.lowWatermark ??
            WS_ROUTES_DEFAULTS.lowWatermark,
          slowConsumer:
            routeOptions.slowConsumer ??
            this.options.slowConsumer ??
            WS_ROUTES_DEFAULTS.slowConsumer,
        },
      },
    };
  }

  /**
   * Guard classes of the options: the provider if one is registered anywhere, otherwise an
   * instance created with injection in the module that provides the route (or, for the
   * module-wide guards, in this module).
   */
  private async resolveGuards(
    guards: HandshakeGuard[] = [],
    host = this.moduleRef,
  ): Promise<CanActivate[]> {
    return Promise.all(
      guards.map(async (guard) => {
        if (typeof guard !== 'function') return guard;
        try {
          return this.moduleRef.get(guard, { strict: false });
        } catch {
          return host.create(guard);
        }
      }),
    );
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

  /** Gives back a closed connection's slot in the connection limits. */
  private readonly releaseSlot = (conn: WsConnection): void =>
    this.limiter.release(conn.remoteAddress, conn.route);

  private readonly onUpgrade: UpgradeHandler = (request, socket, head) => {
    const url = request.url ?? '/';
    const queryAt = url.indexOf('?');
    const pathname = queryAt === -1 ? url : url.slice(0, queryAt);
    let found;
    try {
      found = this.matcher.match(pathname);
    } catch {
      this.refuse(request, socket, 400, 'Malformed percent-encoding in the path');
      return true;
    }
    if (!found) return false;
    const problem = validateUpgrade(request);
    if (problem) {
      this.refuse(request, socket, problem.status, problem.message, problem.headers);
    } else if (this.closing) {
      this.refuse(request, socket, 503, SHUTDOWN_CLOSE_REASON, { 'Retry-After': 5 });
    } else {
      const query = queryAt === -1 ? {} : parseQuery(url.slice(queryAt + 1));
      void this.handshake(found.route, request, socket, head, pathname, found.params, query);
    }
    return true;
  };

  /**
   * The steps between a matched path and the 101, in this order: limits (cheap, and they
   * count half-open handshakes) → subprotocol → origin and guards (may be async) → 101 →
   * register → `@OnOpen`. Every refusal is an HTTP answer and a log line; nothing is registered.
   */
  private async handshake(
    route: ActiveRoute,
    request: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    pathname: string,
    params: Record<string, string>,
    query: Record<string, string | string[]>,
  ): Promise<void> {
    const ip = clientIp(request, this.trustProxy);
    const exceeded = this.limiter.acquire(ip, route.pattern, route.maxConnections);
    if (exceeded) {
      const [status, message] =
        exceeded === 'ip'
          ? [429, 'Too many connections from this address']
          : [503, 'Too many connections'];
      this.refuse(request, socket, status, message, { 'Retry-After': exceeded === 'ip' ? 1 : 5 });
      return;
    }
    let released = false;
    const release = () => {
      if (!released) {
        released = true;
        this.limiter.release(ip, route.pattern);
      }
    };
    socket.once('close', release);

    if (route.protocolRequired && !this.agreesOnProtocol(route, request)) {
      this.refuse(request, socket, 400, 'No acceptable subprotocol');
      return;
    }

    const handshakeRequest = Object.assign(request, {
      params,
      query,
      ip,
      cookies: request.headers.cookie ? parseCookies(request.headers.cookie) : {},
    }) as HandshakeRequest;
    const response = new HandshakeResponse();
    const timer = setTimeout(
      () => this.refuse(request, socket, 503, 'Handshake timed out'),
      this.handshakeTimeout,
    );
    try {
      await route.checkGuards(handshakeRequest, response);
      await route.checkClassGuards(handshakeRequest, response);
    } catch (error) {
      this.refuseFor(error, request, socket, response);
      return;
    } finally {
      clearTimeout(timer);
    }
    if (!socket.writable) return; // the client left, or the timeout answered it
    if (Object.keys(response.headers).length) responseHeaders.set(request, response.headers);

    socket.off('close', release);
    route.wss.handleUpgrade(request, socket, head, (ws: WebSocket) => {
      if (this.closing) {
        ws.once('close', release);
        ws.close(CloseCode.GoingAway, SHUTDOWN_CLOSE_REASON);
        return;
      }
      // From here the slot is given back when the connection leaves the registry
      // (releaseSlot): a closure per connection would outlive the handshake.
      released = true;
      const conn = new WsConnection(
        ws,
        request,
        route.shared,
        // A static route's path is its pattern: one string for all its connections.
        pathname === route.pattern ? route.pattern : pathname,
        params,
        handshakeRequest.query,
        ip,
      );
      if (handshakeRequest.user !== undefined) conn.data.user = handshakeRequest.user;
      this.registry.add(conn);
      route.dispatcher.attach(conn);
    });
    // ws answered 400 itself if the request was malformed in a way validateUpgrade let through.
    if (!socket.writable) release();
  }

  private agreesOnProtocol(route: ActiveRoute, request: IncomingMessage): boolean {
    const header = request.headers['sec-websocket-protocol'];
    if (!header) return false;
    const offered = new Set(header.split(',').map((protocol) => protocol.trim()));
    const select = route.wss.options.handleProtocols;
    return select ? select(offered, request) !== false : false;
  }

  /** A guard said no or threw: its HTTP status and body, or a logged 500. */
  private refuseFor(
    error: unknown,
    request: IncomingMessage,
    socket: Duplex,
    response: HandshakeResponse,
  ): void {
    if (error instanceof HttpException) {
      const status = error.getStatus();
      if (status >= 500) this.logger.error(`Upgrade of ${request.url} failed`, error.stack);
      this.refuse(request, socket, status, error.getResponse(), response.headers);
      return;
    }
    this.logger.error(
      `A handshake guard of ${request.url} threw`,
      error instanceof Error ? error.stack : String(error),
    );
    this.refuse(request, socket, 500, INTERNAL_ERROR_MESSAGE, response.headers);
  }

  private refuse(
    request: IncomingMessage,
    socket: Duplex,
    status: number,
    message: string | object,
    headers?: Record<string, string | number>,
  ): void {
    if (!socket.writable) return;
    const reason =
      typeof message === 'string' ? message : ((message as { message?: unknown }).message ?? '');
    this.logger.warn(
      `Refused upgrade of ${request.url} from ${clientIp(request, this.trustProxy)}: ${status} ${String(reason)}`,
    );
    refuseUpgrade(socket, status, message, headers);
  }

  private async closeConnections(): Promise<void> {
    this.closing = true;
    this.handshakeWatch?.dropPending();
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
