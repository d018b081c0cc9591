/**
 * The part of a prom-client `Registry` the metrics use (prom-client 15: `new Registry()`, or
 * its default `register`, which `@willsoto/nestjs-prometheus` serves). Declared here so that
 * this package never loads prom-client itself: the registry is the application's, and our
 * metrics are objects it formats like its own.
 */
export interface MetricsRegistry {
  registerMetric(metric: object): void;
  getSingleMetric(name: string): unknown;
  removeSingleMetric(name: string): void;
}

/** The `metrics` option of `WsRoutesModule.forRoot()`. */
export interface WsRoutesMetricsOptions {
  /**
   * A prom-client registry to expose the metrics in, read at every scrape. Without one, the
   * counts are read with `WsRoutesMetrics.snapshot()`.
   */
  registry?: MetricsRegistry;
  /** First part of every metric name. Default `'ws_'`. */
  prefix?: string;
  /**
   * Upper bounds (seconds) of the `handler_duration_seconds` buckets, increasing. Default
   * 0.1 ms to 10 s: `[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
   * 0.25, 0.5, 1, 2.5, 5, 10]`.
   */
  handlerDurationBuckets?: readonly number[];
  /**
   * Upper bounds of the `broadcast_recipients` buckets, increasing. Default `[0, 1, 5, 10, 50,
   * 100, 500, 1000, 5000, 10000, 50000]`.
   */
  broadcastRecipientsBuckets?: readonly number[];
}
