import { HttpException, type LoggerService } from '@nestjs/common';
import { parse as parseCookies } from 'cookie';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import {
  CloseCode,
  INTERNAL_ERROR_MESSAGE,
  SHUTDOWN_CLOSE_REASON,
} from '../ws-routes.constants.js';
import { RoutesWebSocket } from '../connection/routes-websocket.js';
import { parseQuery, WsConnection, type ConnectionRoute } from '../connection/ws-connection.js';
import type { WsConnectionRegistry } from '../connection/ws-connection-registry.js';
import type { GatewayConfig, RouteConfig } from '../routing/route-config.js';
import type { RouteMetrics } from '../metrics/route-metrics.js';
import { requestUrl } from '../routing/request-path.js';
import { RouteMatcher } from '../routing/route-matcher.js';
import { clientIp } from './client-ip.js';
import { CloseRefusals, refusalCloseCode } from './close-refusal.js';
import { ConnectionLimiter } from './connection-limiter.js';
import { HandshakeResponse, type HandshakeRequest } from './handshake-guards.js';
import { headerLines } from './header-lines.js';
import { refusalText } from './refusal-reason.js';
import { refuseUpgrade } from './refuse-upgrade.js';
import { chooseProtocol, offeredProtocols, type ProtocolSelector } from './select-protocol.js';
import { ignoreError, releaseSocketErrors } from './socket-errors.js';
import type { UpgradeHandler } from './upgrade-hub.js';
import { validateUpgrade } from './validate-upgrade.js';

/** A route as the upgrade pipeline sees it. */
export interface UpgradeRoute {
  readonly pattern: string;
  readonly config: RouteConfig;
  /** Made by {@link createRouteServer}: speaks the protocol, in `noServer` mode. */
  readonly wss: WebSocketServer;
  /** What the route's connections share: pattern, rooms, outgoing-buffer policy, dispatcher. */
  readonly shared: ConnectionRoute;
  readonly dispatcher: { attach(conn: WsConnection): void };
  /** The route's subprotocol choice; `undefined`: `ws`'s default (the client's first offer). */
  readonly selectProtocol: ProtocolSelector | undefined;
  /** The route's counts; `undefined` when metrics are off. */
  readonly metrics: RouteMetrics | undefined;
  /** The origin check and the handshake guards of the module and the route options. */
  readonly checkGuards: (request: HandshakeRequest, response: HandshakeResponse) => Promise<void>;
  /** The class's `@UseGuards()` and the global guards. */
  readonly checkClassGuards: (
    request: HandshakeRequest,
    response: HandshakeResponse,
  ) => Promise<unknown>;
}

/** Headers of the 101 that `ws` writes itself. */
const RESERVED_101 = new Set([
  'upgrade',
  'connection',
  'sec-websocket-accept',
  'sec-websocket-protocol',
  'sec-websocket-extensions',
]);

/** The subprotocol chosen before `handleUpgrade`, for `ws`'s `handleProtocols` to return. */
const chosenProtocols = new WeakMap<IncomingMessage, string>();
/** Validated header lines a guard set, for the 101. */
const upgradeHeaders = new WeakMap<IncomingMessage, string[]>();
const NO_LINES: readonly string[] = [];

function chosenProtocol(_offered: Set<string>, request: IncomingMessage): string | false {
  return chosenProtocols.get(request) ?? false;
}

function addUpgradeHeaders(headers: string[], request: IncomingMessage): void {
  const lines = upgradeHeaders.get(request);
  if (lines) {
    upgradeHeaders.delete(request);
    for (const line of lines) headers.push(line);
  }
}

/**
 * A route's `ws` server: `noServer` (the pipeline hands it each upgrade), no client set (the
 * registry tracks connections), our `WebSocket` subclass (whose write path joins the batch),
 * and the subprotocol the pipeline already chose.
 */
export function createRouteServer(config: RouteConfig, selector: boolean): WebSocketServer {
  const wss = new WebSocketServer({
    noServer: true,
    clientTracking: false,
    maxPayload: config.maxPayload,
    perMessageDeflate: config.perMessageDeflate,
    WebSocket: RoutesWebSocket,
    handleProtocols: selector ? chosenProtocol : undefined,
  });
  wss.on('headers', addUpgradeHeaders);
  return wss;
}

/**
 * The steps between an upgrade request and an open connection, in this order: read the
 * target as Nest does → match the route → RFC 6455 checks → limits (cheap, and they count
 * half-open handshakes) → subprotocol → origin and guards (may be async, bounded by
 * `handshakeTimeout`) → 101 → register → attach to the dispatcher (`@OnOpen`).
 *
 * Every step ends in an HTTP answer (and a log line naming the path, never the query: it may
 * hold a token) or a quiet drop of a socket the client already left; nothing here throws into
 * the HTTP server or leaves a rejection unhandled, whatever a user callback does.
 */
export class UpgradePipeline {
  private readonly matcher = new RouteMatcher<UpgradeRoute>();
  private readonly limiter: ConnectionLimiter;
  /** Connections whose attach failed: their slot was given back then, not when they leave. */
  private readonly orphans = new WeakSet<WsConnection>();
  /** Refusals answered with a 101 and a close (`refuse: 'close'`), bounded in count and time. */
  private readonly closeRefusals = new CloseRefusals();

  constructor(
    private readonly config: GatewayConfig,
    private readonly registry: WsConnectionRegistry,
    private readonly logger: LoggerService,
    /** `true` once `app.close()` began: new upgrades get 503. */
    private readonly isClosing: () => boolean,
    /**
     * Counts the upgrades no route matched: those refused here before a match, and the 404s
     * of the `UpgradeHub`. `undefined` when metrics are off.
     */
    readonly countUnmatched?: (status: number) => void,
  ) {
    this.limiter = new ConnectionLimiter(config.maxConnections, config.maxConnectionsPerIp);
  }

  add(route: UpgradeRoute): void {
    this.matcher.add(route);
  }

  /** Slots of the process limit taken: open connections and handshakes in progress. */
  get slotsTaken(): number {
    return this.limiter.counts.total;
  }

  /** At shutdown: destroys the refusals still waiting for their client's close. */
  dropRefusals(): void {
    this.closeRefusals.dropAll();
  }

  /** Gives back a closed connection's slot in the connection limits (the dispatcher's `onRemoved`). */
  readonly releaseSlot = (conn: WsConnection): void => {
    if (this.orphans.has(conn)) return;
    this.limiter.release(conn.remoteAddress, conn.route);
  };

  /** The `UpgradeHub` handler: claims the requests for our routes. */
  readonly handle: UpgradeHandler = (request, socket, head) => {
    const url = requestUrl(request);
    if (!url) {
      this.refuse(
        undefined,
        request,
        socket,
        '(malformed request target)',
        400,
        'Malformed request target',
      );
      return true;
    }
    const { pathname } = url;
    let found;
    try {
      found = this.matcher.match(pathname);
    } catch {
      this.refuse(
        undefined,
        request,
        socket,
        pathname,
        400,
        'Malformed percent-encoding in the path',
      );
      return true;
    }
    if (!found) return false;
    const problem = validateUpgrade(request);
    if (problem) {
      this.refuse(
        found.route,
        request,
        socket,
        pathname,
        problem.status,
        problem.message,
        problem.headers,
      );
    } else if (this.isClosing()) {
      this.refuseOn(found.route, head, request, socket, pathname, 503, SHUTDOWN_CLOSE_REASON, {
        'Retry-After': 5,
      });
    } else {
      const query = url.search.length > 1 ? parseQuery(url.search.slice(1)) : {};
      this.handshake(found.route, request, socket, head, pathname, found.params, query).catch(
        (error: unknown) => this.failed(error, found.route, request, socket, pathname),
      );
    }
    return true;
  };

  private async handshake(
    route: UpgradeRoute,
    request: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    pathname: string,
    params: Record<string, string>,
    query: Record<string, string | string[]>,
  ): Promise<void> {
    const ip = clientIp(request, this.config.trustProxy);
    const exceeded = this.limiter.acquire(ip, route.pattern, route.config.maxConnections);
    if (exceeded) {
      const [status, message] =
        exceeded === 'ip'
          ? [429, 'Too many connections from this address']
          : [503, 'Too many connections'];
      this.refuseOn(route, head, request, socket, pathname, status, message, {
        'Retry-After': exceeded === 'ip' ? 1 : 5,
      });
      return;
    }
    // Until the connection is registered, the socket's close gives the slot back; from then on
    // the registry does (releaseSlot), so no closure outlives the handshake.
    let released = false;
    const release = () => {
      if (!released) {
        released = true;
        this.limiter.release(ip, route.pattern);
      }
    };
    socket.once('close', release);

    if (!this.agreeOnProtocol(route, request, socket, head, pathname)) return;

    const handshakeRequest = Object.assign(request, {
      params,
      query,
      ip,
      cookies: request.headers.cookie ? parseCookies(request.headers.cookie) : {},
    }) as HandshakeRequest;
    const response = new HandshakeResponse();
    const { handshakeTimeout } = this.config;
    // A refusal sent as a close leaves the socket writable (it waits for the client's close),
    // so the guards' late answer is ignored by this flag rather than by `socket.writable`.
    let timedOut = false;
    const timer =
      handshakeTimeout > 0
        ? setTimeout(() => {
            timedOut = true;
            this.refuseOn(route, head, request, socket, pathname, 503, 'Handshake timed out');
          }, handshakeTimeout)
        : undefined;
    try {
      await route.checkGuards(handshakeRequest, response);
      await route.checkClassGuards(handshakeRequest, response);
    } catch (error) {
      if (!timedOut) this.refuseFor(error, route, head, request, socket, pathname, response);
      return;
    } finally {
      clearTimeout(timer);
    }
    if (timedOut || !socket.writable) return; // the timeout answered it, or the client left

    const lines = headerLines(response.headers, RESERVED_101, (name, reason) =>
      this.logger.error(`Dropped response header ${name} of the upgrade of ${pathname}: ${reason}`),
    );
    if (lines.length) upgradeHeaders.set(request, lines);
    route.wss.handleUpgrade(request, socket, head, (ws: WebSocket) => {
      releaseSocketErrors(socket); // ws listens now
      route.metrics?.handshake(101);
      chosenProtocols.delete(request);
      if (this.isClosing()) {
        // Its close frees the slot (the socket's close listener is still on).
        ws.on('error', ignoreError);
        ws.close(CloseCode.GoingAway, SHUTDOWN_CLOSE_REASON);
        return;
      }
      socket.off('close', release);
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
      try {
        route.dispatcher.attach(conn);
      } catch (error) {
        this.attachFailed(error, conn, ws, pathname);
      }
    });
  }

  /**
   * Makes the subprotocol choice now, before `handleUpgrade`, so that a throwing
   * `selectProtocol` is a logged 500 rather than an exception inside `ws`; `ws` then only
   * returns the choice. `false` when the handshake was refused.
   */
  private agreeOnProtocol(
    route: UpgradeRoute,
    request: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    pathname: string,
  ): boolean {
    const offered = offeredProtocols(request);
    if (!offered) {
      // Malformed: no 101 can answer it, so HTTP whatever `refuse` says.
      this.refuse(route, request, socket, pathname, 400, 'Invalid Sec-WebSocket-Protocol header');
      return false;
    }
    let chosen: string | false = false;
    if (route.selectProtocol) {
      try {
        chosen = chooseProtocol(route.selectProtocol, offered, request);
      } catch (error) {
        this.logger.error(`selectProtocol of ${pathname} threw`, stackOf(error));
        this.refuseOn(route, head, request, socket, pathname, 500, INTERNAL_ERROR_MESSAGE);
        return false;
      }
    }
    if (route.config.requireProtocol && !chosen) {
      this.refuseOn(route, head, request, socket, pathname, 400, 'No acceptable subprotocol');
      return false;
    }
    if (chosen) chosenProtocols.set(request, chosen);
    return true;
  }

  /**
   * The dispatcher could not take the connection: it leaves the registry, its slot is given
   * back now (and not again when it closes), and the client gets 1011.
   */
  private attachFailed(error: unknown, conn: WsConnection, ws: WebSocket, pathname: string): void {
    this.logger.error(`Opening a connection on ${pathname} failed`, stackOf(error));
    ws.on('error', ignoreError);
    if (!this.orphans.has(conn)) {
      this.orphans.add(conn);
      this.registry.remove(conn);
      this.limiter.release(conn.remoteAddress, conn.route);
    }
    try {
      ws.close(CloseCode.InternalError, INTERNAL_ERROR_MESSAGE);
    } catch {
      ws.terminate();
    }
  }

  /** Something the steps did not expect: logged, and a 500 if the client is still there. */
  private failed(
    error: unknown,
    route: UpgradeRoute,
    request: IncomingMessage,
    socket: Duplex,
    pathname: string,
  ): void {
    try {
      this.logger.error(`Upgrade of ${pathname} failed`, stackOf(error));
      this.refuse(route, request, socket, pathname, 500, INTERNAL_ERROR_MESSAGE);
    } catch {
      socket.destroy();
    }
  }

  /** A guard said no or threw: its HTTP status and body, or a logged 500. */
  private refuseFor(
    error: unknown,
    route: UpgradeRoute,
    head: Buffer,
    request: IncomingMessage,
    socket: Duplex,
    pathname: string,
    response: HandshakeResponse,
  ): void {
    if (error instanceof HttpException) {
      const status = error.getStatus();
      // A 1xx/2xx/3xx "refusal" would read as something else to the client (a 101 as success).
      if (Number.isInteger(status) && status >= 400 && status <= 599) {
        if (status >= 500) this.logger.error(`Upgrade of ${pathname} failed`, error.stack);
        const message = error.getResponse();
        this.refuseOn(route, head, request, socket, pathname, status, message, response.headers);
        return;
      }
    }
    this.logger.error(`A handshake guard of ${pathname} threw`, stackOf(error));
    this.refuseOn(
      route,
      head,
      request,
      socket,
      pathname,
      500,
      INTERNAL_ERROR_MESSAGE,
      response.headers,
    );
  }

  /**
   * A refusal once the route is known and the request is a well-formed upgrade: with
   * `refuse: 'close'`, a 101 closed at once with `4000 + status` (see {@link CloseRefusals});
   * otherwise, or when no more close-refusals may wait, the HTTP status.
   */
  private refuseOn(
    route: UpgradeRoute,
    head: Buffer,
    request: IncomingMessage,
    socket: Duplex,
    pathname: string,
    status: number,
    message: string | object,
    headers?: Record<string, string | number>,
  ): void {
    if (route.config.refuse === 'close' && socket.writable) {
      const reason = refusalText(status, message, request);
      const code = refusalCloseCode(status);
      const protocol = chosenProtocols.get(request) ?? false;
      chosenProtocols.delete(request);
      const lines = headers
        ? headerLines(headers, RESERVED_101, (name, why) =>
            this.logger.error(
              `Dropped response header ${name} of the refusal of ${pathname}: ${why}`,
            ),
          )
        : NO_LINES;
      if (this.closeRefusals.refuse(request, socket, head, code, reason, protocol, lines)) {
        // Counted by the refusal's status: the 101 that carries it opens no connection.
        route.metrics?.handshake(status);
        this.logger.warn(
          `Refused upgrade of ${pathname} from ${clientIp(request, this.config.trustProxy)}: ${status} ${reason} (close ${code})`,
        );
        return;
      }
    }
    this.refuse(route, request, socket, pathname, status, message, headers);
  }

  /** Answers with an HTTP error, logged and counted; `route` is `undefined` before a match. */
  private refuse(
    route: UpgradeRoute | undefined,
    request: IncomingMessage,
    socket: Duplex,
    pathname: string,
    status: number,
    message: string | object,
    headers?: Record<string, string | number>,
  ): void {
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    if (route) route.metrics?.handshake(status);
    else this.countUnmatched?.(status);
    this.logger.warn(
      `Refused upgrade of ${pathname} from ${clientIp(request, this.config.trustProxy)}: ${status} ${refusalText(status, message, request)}`,
    );
    refuseUpgrade(socket, status, message, headers, (name, why) =>
      this.logger.error(`Dropped response header ${name} of the refusal of ${pathname}: ${why}`),
    );
  }
}

function stackOf(error: unknown): string {
  return error instanceof Error ? (error.stack ?? error.message) : String(error);
}
