import type { HistogramSnapshot } from './fixed-histogram.js';

export type { HistogramSnapshot };

/** What `WsRoutesMetrics.snapshot()` returns: every count since start-up, as plain data. */
export interface WsRoutesMetricsSnapshot {
  /** Whether metrics are on (the `metrics` option); when off, every count below is empty. */
  enabled: boolean;
  /** By route pattern (`/rooms/:room`, never a concrete path). */
  routes: Record<string, WsRouteMetricsSnapshot>;
  /**
   * Upgrade requests that no route matched (answered 404) or whose target could not be read
   * (400), by HTTP status; `route="(unmatched)"` in Prometheus.
   */
  unmatchedHandshakes: Record<string, number>;
  /** Connections of this instance each broadcast message was written to. */
  broadcastRecipients: HistogramSnapshot;
  /** The broadcast transport, unless it is the in-memory one. */
  transport: TransportMetricsSnapshot | undefined;
}

/** The counts of one route. */
export interface WsRouteMetricsSnapshot {
  connectionsOpen: number;
  /** Upgrade requests answered, by HTTP status: `101` opened a connection. */
  handshakes: Record<string, number>;
  messagesReceived: number;
  /** Payload bytes received. */
  bytesReceived: number;
  /** Messages queued to the route's connections: replies, `send()`, broadcasts. */
  messagesSent: number;
  /** Payload bytes of those, before per-message deflate, without frame headers. */
  bytesSent: number;
  messagesDropped: {
    /** Incoming, over the rate limit with `action: 'drop'`. */
    rateLimit: number;
    /** Outgoing, to a connection over `maxBufferedAmount` with `slowConsumer: 'drop'`. */
    slowConsumer: number;
    /** Outgoing `volatile`, to a connection over `lowWatermark`. */
    volatile: number;
  };
  /** Connections closed with 1013 for being over `maxBufferedAmount`. */
  slowConsumerCloses: number;
  /** Connections closed with 1008 for exceeding the rate limit. */
  rateLimitCloses: number;
  /** `@OnMessage` handlers that threw or rejected. */
  handlerErrors: number;
  /** Seconds from calling an `@OnMessage` handler to its result. */
  handlerDuration: HistogramSnapshot;
}

/** The broadcast transport's state and counters. */
export interface TransportMetricsSnapshot {
  /** Whether it reaches the other instances now. */
  up: boolean;
  /** Publishes that failed or were refused (`BroadcastService.publishFailures`). */
  publishFailures: number;
  /** What the transport's `stats` reports, when it does. */
  published: number | undefined;
  received: number | undefined;
  outages: number | undefined;
  instances: number | undefined;
}
