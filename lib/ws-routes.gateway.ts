import {
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
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { CloseCode, SHUTDOWN_CLOSE_REASON, WS_ROUTES_DEFAULTS } from './ws-routes.constants.js';
import { WS_ROUTES_OPTIONS } from './ws-routes.module-definition.js';
import type { WsRoutesModuleOptions } from './interfaces/ws-routes-module-options.interface.js';
import type { HandshakeGuard } from './interfaces/handshake-options.interface.js';
import { createGuardChain } from './handshake/handshake-guards.js';
import { watchHandshakes, type HandshakeWatch } from './handshake/handshake-timeout.js';
import { OriginGuard } from './handshake/origin.guard.js';
import { createProtocolSelector } from './handshake/select-protocol.js';
import { UpgradeHub } from './handshake/upgrade-hub.js';
import {
  createRouteServer,
  UpgradePipeline,
  type UpgradeRoute,
} from './handshake/upgrade-pipeline.js';
import {
  resolveGatewayConfig,
  resolveRouteConfig,
  type GatewayConfig,
} from './routing/route-config.js';
import { WsRouteExplorer, type WsRouteDefinition } from './routing/ws-route-explorer.js';
import { WsConnection } from './connection/ws-connection.js';
import { RateLimiter } from './connection/rate-limiter.js';
import { RouteLog } from './connection/route-log.js';
import { WsConnectionRegistry } from './connection/ws-connection-registry.js';
import { RecoveryHub } from './recovery/recovery-hub.js';
import { MetricsStore } from './metrics/metrics-store.js';
import { Heartbeat } from './connection/heartbeat.js';
import { RouteDispatcher } from './handlers/route-dispatcher.js';
import { WsHandlerFactory } from './handlers/ws-handler-factory.js';
import { WsRoutesExceptionFilter } from './handlers/ws-routes-exception-filter.js';

/**
 * Where the gateway is in its life: `'serving'`; `'draining'` once a shutdown began, still
 * serving and accepting upgrades for `drainDelay` while health checks report down;
 * `'closing'`: new upgrades get 503, connections get 1001.
 */
export type WsRoutesPhase = 'serving' | 'draining' | 'closing';

/** What a health check reads of the gateway: connections against their limits, and the phase. */
export interface WsRoutesStatus {
  phase: WsRoutesPhase;
  /** Open connections of this process. */
  connections: number;
  /** Handshakes in progress: they hold a slot of `maxConnections` too. */
  handshakes: number;
  /** The process limit (`maxConnections`). */
  maxConnections: number;
  /** Routes with their own `maxConnections`: open connections and the limit, by pattern. */
  routes: Record<string, { connections: number; maxConnections: number }>;
}

/** A route as it runs: what the upgrade pipeline needs, its dispatcher and its heartbeat. */
interface ActiveRoute extends UpgradeRoute {
  definition: WsRouteDefinition;
  dispatcher: RouteDispatcher;
  heartbeat: Heartbeat | undefined;
}

/**
 * Owns the WebSocket side of the application's lifecycle: at start-up it resolves each
 * route's configuration, guards, `ws` server, dispatcher and heartbeat and puts one `upgrade`
 * listener on the HTTP server (the application's, or its own on `port`); at `app.close()` it
 * refuses new upgrades and closes every connection. Each upgrade itself goes through the
 * {@link UpgradePipeline}.
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
  private readonly routes: ActiveRoute[] = [];
  private server: Server | undefined;
  private ownsServer = false;
  private phase: WsRoutesPhase = 'serving';
  private shutdown: Promise<void> | undefined;
  private handshakeWatch: HandshakeWatch | undefined;
  private readonly config: GatewayConfig;
  private readonly pipeline: UpgradePipeline;

  constructor(
    @Inject(WS_ROUTES_OPTIONS) private readonly options: WsRoutesModuleOptions,
    private readonly explorer: WsRouteExplorer,
    private readonly handlerFactory: WsHandlerFactory,
    private readonly registry: WsConnectionRegistry,
    private readonly httpAdapterHost: HttpAdapterHost,
    private readonly moduleRef: ModuleRef,
    private readonly recovery: RecoveryHub,
    private readonly metrics: MetricsStore,
  ) {
    this.config = resolveGatewayConfig(options);
    this.pipeline = new UpgradePipeline(
      this.config,
      registry,
      this.logger,
      () => this.phase === 'closing',
      metrics.enabled ? metrics.unmatchedHandshake : undefined,
    );
  }

  /** Address of the server the routes are served on (the separate `port`, or the app's). */
  address(): AddressInfo | null {
    const address = this.server?.address();
    return address && typeof address === 'object' ? address : null;
  }

  /**
   * Connections against their limits and the shutdown phase, for a health check (see
   * `WsRoutesHealthIndicator` in `nestjs-ws-routes/terminus`). Cheap: counters only.
   */
  status(): WsRoutesStatus {
    const routes: WsRoutesStatus['routes'] = {};
    for (const { pattern, config } of this.routes) {
      if (config.maxConnections === Infinity) continue;
      routes[pattern] = {
        connections: this.registry.byRoute(pattern).size,
        maxConnections: config.maxConnections,
      };
    }
    const connections = this.registry.size;
    return {
      phase: this.phase,
      connections,
      handshakes: Math.max(0, this.pipeline.slotsTaken - connections),
      maxConnections: this.config.maxConnections,
      routes,
    };
  }

  async onApplicationBootstrap(): Promise<void> {
    const exceptionFilter = new WsRoutesExceptionFilter();
    for (const definition of this.explorer.explore()) {
      const route = await this.activate(definition, exceptionFilter);
      this.pipeline.add(route);
      this.routes.push(route);
    }
    if (this.routes.length === 0) {
      this.logger.warn('WsRoutesModule is imported but no provider is decorated with @WsRoute()');
      return;
    }
    this.server = this.resolveServer();
    UpgradeHub.of(this.server).add(this.pipeline.handle, this.pipeline.countUnmatched);
    if (this.config.handshakeTimeout > 0)
      this.handshakeWatch = watchHandshakes(this.server, this.config.handshakeTimeout);
    if (this.server.listenerCount('upgrade') > 1) {
      this.logger.warn(
        'Another "upgrade" listener is attached to the HTTP server. If it is @nestjs/platform-ws WsAdapter, ' +
          'it destroys upgrades to @WsRoute paths: use app.useWebSocketAdapter(new WsRoutesAdapter(app)) instead.',
      );
    }
    if (this.ownsServer) await this.listen(this.server);
    for (const route of this.routes) route.heartbeat?.start();
  }

  /**
   * `app.close()` (or a signal with `enableShutdownHooks()`): report down and keep serving for
   * `drainDelay`, then refuse new upgrades with 503 and close every connection with 1001. In
   * `onModuleDestroy`, the first hook of Nest's shutdown, so `@OnClose` handlers still have
   * the providers that other modules release in their own hooks.
   */
  onModuleDestroy(): Promise<void> {
    return (this.shutdown ??= this.closeConnections());
  }

  /** Before Nest closes the HTTP server, which would wait for sockets that never sent a request. */
  beforeApplicationShutdown(): void {
    this.handshakeWatch?.cutPendingAfter(PENDING_GRACE);
  }

  async onApplicationShutdown(): Promise<void> {
    await this.onModuleDestroy();
    if (this.server) UpgradeHub.of(this.server).remove(this.pipeline.handle);
    this.pipeline.dropRefusals();
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
    const config = resolveRouteConfig(pattern, routeOptions, this.options);
    const selectProtocol = createProtocolSelector(routeOptions);
    const handlers = this.handlerFactory.createRouteHandlers(definition);
    const metrics = this.metrics.forRoute(pattern);
    const heartbeat = config.heartbeat
      ? new Heartbeat(config.heartbeat, () => this.registry.byRoute(pattern))
      : undefined;
    const dispatcher = new RouteDispatcher(
      `${routeClass.name} (${pattern})`,
      handlers,
      this.registry,
      exceptionFilter,
      this.logger,
      {
        rateLimiter: config.rateLimit ? new RateLimiter(config.rateLimit) : undefined,
        onRemoved: this.pipeline.releaseSlot,
        keepUpgradeRequest: config.keepUpgradeRequest,
        heartbeat: Boolean(config.heartbeat),
        inbound: config.inbound,
        closeTimeout: config.closeTimeout,
        recovery: config.recovery ? this.recovery : undefined,
        metrics,
      },
    );
    if (config.recovery)
      this.recovery.addRoute(pattern, config.recovery.window, config.recovery.maxMessages);
    const guards: CanActivate[] = [
      new OriginGuard(routeOptions.origins ?? this.options.origins, this.config.trustProxy),
      ...(await this.resolveGuards(this.options.guards)),
      ...(await this.resolveGuards(routeOptions.guards, definition.moduleRef)),
    ];
    const shared = {
      pattern,
      rooms: this.registry,
      events: dispatcher,
      outbound: config.outbound,
      metrics,
    };
    this.registry.setRouteLog(pattern, new RouteLog(shared));
    return {
      pattern,
      config,
      definition,
      wss: createRouteServer(config, selectProtocol !== undefined),
      dispatcher,
      heartbeat,
      selectProtocol,
      checkGuards: createGuardChain(guards, routeClass, definition.instance.constructor),
      checkClassGuards: handlers.handshake,
      metrics,
      shared,
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

  private async closeConnections(): Promise<void> {
    const { drainDelay } = this.config;
    if (drainDelay > 0) {
      this.phase = 'draining';
      this.logger.log(
        `Shutting down: serving ${this.registry.size} connection(s) for ${drainDelay} ms more while reporting down`,
      );
      await new Promise((resolve) => setTimeout(resolve, drainDelay));
    }
    this.phase = 'closing';
    this.handshakeWatch?.cutPendingAfter(PENDING_GRACE);
    for (const route of this.routes) route.heartbeat?.stop();
    const timeout = this.config.shutdownTimeout;
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
    // @OnClose of connections still handling messages waits for them until the deadline; then
    // it runs without them, and the @OnClose handlers themselves get a last second.
    const handlersDone = Promise.all(
      this.routes.map((route) => route.dispatcher.settled(deadline)),
    );
    if (!(await within(handlersDone, Math.max(deadline, Date.now()) + ON_CLOSE_GRACE))) {
      this.logger.warn('@OnClose handlers were still running when the shutdown timeout expired');
    }
  }
}

/**
 * At shutdown, how long a socket that has connected but not sent its request yet still gets
 * (ms): the bytes of a health check or an upgrade may be on their way.
 */
const PENDING_GRACE = 500;

/** How long `app.close()` waits for `@OnClose` handlers past the shutdown deadline (ms). */
const ON_CLOSE_GRACE = 1000;

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
