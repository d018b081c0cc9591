/**
 * WebSocket close codes (RFC 6455 §7.4.1) used by this package. Application codes live in
 * 4000–4999 and may be passed to `WsConnection.close()` directly.
 */
export const CloseCode = {
  /** Normal closure. */
  Normal: 1000,
  /** The server is going away (shutdown) or the page navigated away. */
  GoingAway: 1001,
  /** The peer broke the protocol (e.g. an unmasked client frame). */
  ProtocolError: 1002,
  /** The endpoint cannot accept this kind of data. */
  UnsupportedData: 1003,
  /** No status code was present in the close frame (reported, never sent). */
  NoStatus: 1005,
  /** The connection dropped without a close frame (reported, never sent). */
  Abnormal: 1006,
  /** A text frame was not valid UTF-8. */
  InvalidPayload: 1007,
  /** A policy was violated (rate limit, forbidden action). */
  PolicyViolation: 1008,
  /** A message was larger than `maxPayload`. */
  MessageTooBig: 1009,
  /** The server hit an unexpected condition (e.g. `@OnOpen` threw). */
  InternalError: 1011,
  /** The server is overloaded; try again later. */
  TryAgainLater: 1013,
  /**
   * An upgrade refused with `refuse: 'close'` closes with `4000 + status`: these four are the
   * usual ones (graphql-ws's 4401 and 4403 are the convention); a guard's 409 is 4409.
   */
  Unauthorized: 4401,
  Forbidden: 4403,
  TooManyRequests: 4429,
  ServiceUnavailable: 4503,
} as const;

/** A close code from {@link CloseCode}. */
export type CloseCodeValue = (typeof CloseCode)[keyof typeof CloseCode];

/** Defaults of {@link WsRoutesModuleOptions}; the README's defaults table lists the same values. */
export const WS_ROUTES_DEFAULTS = {
  /** Largest accepted message in bytes (1 MiB); a larger one closes the connection with 1009. */
  maxPayload: 1024 * 1024,
  /** Ping every 30 s; a peer that has not answered within 10 s is terminated. */
  heartbeat: { interval: 30_000, timeout: 10_000 },
  /** How long `app.close()` waits for clients to answer the 1001 close before terminating them. */
  shutdownTimeout: 5_000,
  /**
   * How long a shutdown keeps serving (and accepting upgrades) after it began, with the health
   * indicator down, before it refuses new upgrades and closes connections: none.
   */
  drainDelay: 0,
  /** Per-message deflate costs 50–80 KB per connection once used; opt in per route. */
  perMessageDeflate: false,
  /** Host the separate `port` listens on, when one is configured. */
  host: '0.0.0.0',
  /** Open connections per process; beyond, upgrades get 503. */
  maxConnections: 10_000,
  /**
   * Open connections per client IP: unlimited. Behind a proxy, a load balancer or a carrier NAT
   * many users share one address; set a number (with `trustProxy` behind a proxy) to turn it on.
   */
  maxConnectionsPerIp: Infinity,
  /** Messages per connection: 100 per second (burst 100), then close with 1008. */
  rateLimit: { messages: 100, per: 1_000, action: 'close' },
  /** Time to complete the upgrade request and the handshake checks; `0` turns both watches off. */
  handshakeTimeout: 10_000,
  /** Outgoing bytes a connection may have queued before the slow-consumer policy applies. */
  maxBufferedAmount: 1024 * 1024,
  /** Outgoing buffer level above which volatile messages skip a connection. */
  lowWatermark: 64 * 1024,
  /** What happens to a connection over `maxBufferedAmount`. */
  slowConsumer: 'close',
  /** `conn.request` is released once `@OnOpen` has finished (about 1 KB per connection). */
  keepUpgradeRequest: false,
  /** Received messages a connection may have waiting for a busy handler before reading pauses. */
  maxQueuedMessages: 1024,
  /**
   * Bytes of received messages a connection may have waiting before reading pauses, as a
   * multiple of `maxPayload` (default 4 × 1 MiB).
   */
  maxQueuedPayloads: 4,
  /** How a refused upgrade is answered: an HTTP status (`'http'`) or a 101 and a close. */
  refuse: 'http',
  /**
   * Refusals answered with a 101 and a close (`refuse: 'close'`) that may be waiting for the
   * client's close at once; beyond, a refusal is an HTTP status, so a flood of refused
   * upgrades costs at most this many sockets.
   */
  maxClosingRefusals: 256,
  /** How long such a refusal waits for the client's close before the socket is destroyed (ms). */
  refusalCloseTimeout: 1_000,
} as const;

/** Metadata keys written by the decorators and read once at start-up by the explorer. */
export const WS_ROUTE_METADATA = 'nestjs-ws-routes:route';
export const WS_ROUTE_HANDLER_METADATA = 'nestjs-ws-routes:handler';

/** Reason sent with the 1001 close on shutdown. */
export const SHUTDOWN_CLOSE_REASON = 'Server shutting down';
/** Message a client gets for an error the application did not mean to show. */
export const INTERNAL_ERROR_MESSAGE = 'Internal server error';
