import { FixedHistogram } from './fixed-histogram.js';

/**
 * The counts of one route, made once at start-up and shared by the handshake
 * pipeline, the route's connections and its executors, which increment the fields directly
 * (`metrics.messagesSent++`): on the per-message path a count is one integer increment, and a
 * route without metrics has `undefined` here and pays one branch.
 */
export class RouteMetrics {
  messagesReceived = 0;
  bytesReceived = 0;
  messagesSent = 0;
  /** Payload bytes, before per-message deflate, without frame headers. */
  bytesSent = 0;
  /** Incoming messages over the rate limit, discarded (`action: 'drop'`). */
  droppedRateLimit = 0;
  /** Outgoing messages not queued: the connection was over `maxBufferedAmount` (`'drop'`). */
  droppedSlowConsumer = 0;
  /** Outgoing `volatile` messages not queued: the connection was over `lowWatermark`. */
  droppedVolatile = 0;
  slowConsumerCloses = 0;
  rateLimitCloses = 0;
  /** `@OnMessage` handlers that threw or rejected. */
  handlerErrors = 0;
  /** Upgrade requests answered, by HTTP status (101 included). */
  readonly handshakes = new Map<number, number>([[101, 0]]);
  /** Seconds from calling an `@OnMessage` handler to its result (a Promise settled). */
  readonly handlerDuration: FixedHistogram;

  constructor(
    readonly pattern: string,
    handlerDurationBuckets: readonly number[],
  ) {
    this.handlerDuration = new FixedHistogram(handlerDurationBuckets);
  }

  /** An upgrade request was answered with `status`. */
  handshake(status: number): void {
    countStatus(this.handshakes, status);
  }

  /** An `@OnMessage` handler that started at `start` (`performance.now()`) is done. */
  handled(start: number, failed: boolean): void {
    this.handlerDuration.observe((performance.now() - start) / 1000);
    if (failed) this.handlerErrors++;
  }
}

/** Adds one to the count of `status`. */
export function countStatus(counts: Map<number, number>, status: number): void {
  counts.set(status, (counts.get(status) ?? 0) + 1);
}
