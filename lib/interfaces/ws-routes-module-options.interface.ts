import type { PerMessageDeflateOptions } from 'ws';
import type { BroadcastTransport } from '../broadcast/broadcast-transport.interface.js';
import type { UserIdOf } from '../connection/user-key.js';
import type {
  HandshakeGuard,
  OriginPolicy,
  RateLimitOptions,
  RefusalMode,
} from './handshake-options.interface.js';
import type { HeartbeatOptions } from './heartbeat-options.interface.js';
import type { WsRoutesMetricsOptions } from './metrics-options.interface.js';

/** Options of `WsRoutesModule.forRoot()`; all optional, defaults in `WS_ROUTES_DEFAULTS`. */
export interface WsRoutesModuleOptions {
  /**
   * Serve the routes on their own port instead of the application's HTTP server. `0` picks a
   * free port (read it from `WsRoutesGateway.address()`).
   */
  port?: number;
  /** Host the separate `port` listens on. Default `'0.0.0.0'`. */
  host?: string;
  /** Largest accepted message in bytes. Default 1 MiB; larger messages close with 1009. */
  maxPayload?: number;
  /** Heartbeat for every route, or `false` to disable. Default `{ interval: 30000, timeout: 10000 }`. */
  heartbeat?: Partial<HeartbeatOptions> | false;
  /** Per-message deflate for every route. Default `false`. */
  perMessageDeflate?: boolean | PerMessageDeflateOptions;
  /** Milliseconds `app.close()` waits for clients to answer the 1001 close. Default 5000. */
  shutdownTimeout?: number;
  /**
   * Milliseconds a shutdown (`app.close()`, or SIGTERM with `enableShutdownHooks()`) keeps
   * serving before it refuses new upgrades with 503 and closes connections with 1001: the
   * health indicator (`nestjs-ws-routes/terminus`) reports down from the first moment, so a
   * load balancer stops sending clients here while those already here are still served.
   * Default 0: refuse and close at once.
   */
  drainDelay?: number;
  /**
   * Where broadcasts travel. Default: in memory (this process only). Pass a Redis transport
   * to reach the connections of every instance.
   */
  broadcastTransport?: BroadcastTransport;
  /**
   * Which user a connection belongs to, for `BroadcastService.toUser()` and
   * `registry.byUser()`. Default: `conn.user` (what a handshake guard put in `request.user`)
   * when it is a string or number, else its `id`, else its `sub`. Return `undefined` for none.
   * Read when the connection opens, after `@OnOpen`, and whenever `conn.user` is assigned.
   */
  userId?: UserIdOf;
  /** Browser origins allowed to connect. Default: same origin only. */
  origins?: OriginPolicy;
  /**
   * How refused upgrades are answered: `'http'` (default), a status a browser page cannot
   * read, or `'close'`, a 101 closed at once with `4000 + status` and the reason, which it can.
   * See {@link RefusalMode} for which refusals stay HTTP either way.
   */
  refuse?: RefusalMode;
  /** Guards run at the upgrade of every route, after the origin check. */
  guards?: HandshakeGuard[];
  /** Most open connections of this process; more are refused with 503. Default 10 000. */
  maxConnections?: number;
  /**
   * Most open connections from one client IP; more are refused with 429. Default: unlimited.
   * Turn it on only where the server sees real client addresses: directly, or behind a proxy
   * with `trustProxy` set (otherwise every user has the proxy's address).
   */
  maxConnectionsPerIp?: number;
  /**
   * Take the client IP from `X-Forwarded-For`: `true` trusts the whole header (its left-most
   * address is the client), a number trusts that many proxy hops from the right. Default
   * `false`: the TCP peer is the client. Only enable it behind a proxy that sets the header.
   */
  trustProxy?: boolean | number;
  /** Per-connection message rate limit. Default 100 messages per second, then close with 1008. */
  rateLimit?: RateLimitOptions | false;
  /**
   * Milliseconds a client has, from opening the TCP connection, to complete the upgrade
   * request, and for the handshake checks to finish. Default 10 000; `0` turns both off.
   */
  handshakeTimeout?: number;
  /**
   * Outgoing bytes a connection may have queued (a client that does not read). Beyond it the
   * `slowConsumer` policy applies, so one stuck client cannot grow server memory. Default 1 MiB.
   */
  maxBufferedAmount?: number;
  /** Outgoing buffer level above which `volatile` messages skip a connection. Default 64 KiB. */
  lowWatermark?: number;
  /**
   * `'close'` (default): close a connection over `maxBufferedAmount` with 1013; `'drop'`:
   * skip its messages (counted in `conn.droppedMessages`) until it catches up.
   */
  slowConsumer?: 'close' | 'drop';
  /**
   * Keep `conn.request` (the upgrade `IncomingMessage`) for the connection's life. Default
   * `false`: it is released once `@OnOpen` has finished, saving about 1 KB of heap per
   * connection; `conn.headers`, `query`, `params` and `remoteAddress` stay either way.
   */
  keepUpgradeRequest?: boolean;
  /**
   * Bytes of received messages a connection may have waiting while its handler is busy; at
   * the cap the server stops reading its socket (TCP flow control holds the client back)
   * until the queue halves. Default 4 × `maxPayload`. The count is capped at 1,024 too.
   */
  maxQueuedBytes?: number;
  /**
   * Count connections, handshakes, messages, drops and handler time per route pattern, read
   * with `WsRoutesMetrics.snapshot()` or scraped from a prom-client `registry`. Default
   * `false`: nothing is counted or timed.
   */
  metrics?: boolean | WsRoutesMetricsOptions;
}
