import type { TransportStats } from '../broadcast/broadcast-transport.interface.js';
import type { FixedHistogram } from './fixed-histogram.js';
import type { MetricsStore } from './metrics-store.js';
import type { RouteMetrics } from './route-metrics.js';

/** The `route` label of handshakes that no route matched. */
export const UNMATCHED_ROUTE = '(unmatched)';

/** One sample, in the shape prom-client's registry formats (`metric.get().values`). */
interface Sample {
  value: number;
  labels: Record<string, string | number>;
  /** For the `_bucket`, `_sum` and `_count` samples of a histogram. */
  metricName?: string;
}

type MetricType = 'counter' | 'gauge' | 'histogram';

/**
 * A metric as prom-client's `Registry` sees one: `name`, `help`, `type`, `aggregator` and an
 * async `get()` returning the samples, which it formats (text or OpenMetrics, default labels,
 * cluster aggregation) like those of its own `Counter`, `Gauge` and `Histogram`. The samples
 * are read from our counts at each scrape, so nothing on the per-message path calls into
 * prom-client, and this package never loads it.
 */
export class CollectedMetric {
  readonly aggregator = 'sum';

  constructor(
    /** Not readonly: prom-client strips `_total` from counters' names in OpenMetrics mode. */
    public name: string,
    readonly help: string,
    readonly type: MetricType,
    private readonly read: (name: string) => Sample[],
  ) {}

  get(): Promise<{
    name: string;
    help: string;
    type: MetricType;
    aggregator: string;
    values: Sample[];
  }> {
    const { name, help, type, aggregator } = this;
    return Promise.resolve({ name, help, type, aggregator, values: this.read(name) });
  }

  /**
   * `registry.resetMetrics()`: ignored. The counts belong to the connections, start at zero
   * when the application does, and are shared with `WsRoutesMetrics.snapshot()`.
   */
  reset(): void {}
}

/** What the metrics read besides the store, at scrape time. */
export interface MetricsReaders {
  connectionsOpen(pattern: string): number;
  /** `undefined` with the in-memory transport: no `transport_*` metrics. */
  readonly transport:
    { up(): boolean; publishFailures(): number; stats(): TransportStats | undefined } | undefined;
}

/** Every metric, named with `prefix`. */
export function prometheusMetrics(
  prefix: string,
  store: MetricsStore,
  readers: MetricsReaders,
): CollectedMetric[] {
  const routes = (): IterableIterator<RouteMetrics> => store.routes.values();
  const perRoute = (
    name: string,
    help: string,
    type: 'counter' | 'gauge',
    value: (route: RouteMetrics) => number,
  ): CollectedMetric =>
    new CollectedMetric(prefix + name, help, type, () =>
      Array.from(routes(), (route) => ({ value: value(route), labels: { route: route.pattern } })),
    );
  const metrics = [
    perRoute('connections_open', 'Open WebSocket connections.', 'gauge', (route) =>
      readers.connectionsOpen(route.pattern),
    ),
    new CollectedMetric(
      prefix + 'handshakes_total',
      'WebSocket upgrade requests answered, by HTTP status (101: a connection opened).',
      'counter',
      () => {
        const samples: Sample[] = [];
        const add = (route: string, counts: Map<number, number>): void => {
          for (const [status, value] of counts)
            samples.push({ value, labels: { route, status: String(status) } });
        };
        for (const route of routes()) add(route.pattern, route.handshakes);
        add(UNMATCHED_ROUTE, store.unmatched);
        return samples;
      },
    ),
    perRoute(
      'messages_received_total',
      'Messages received from clients.',
      'counter',
      (route) => route.messagesReceived,
    ),
    perRoute(
      'bytes_received_total',
      'Payload bytes of the messages received.',
      'counter',
      (route) => route.bytesReceived,
    ),
    perRoute(
      'messages_sent_total',
      'Messages queued to clients: replies, send() and broadcasts.',
      'counter',
      (route) => route.messagesSent,
    ),
    perRoute(
      'bytes_sent_total',
      'Payload bytes of the messages sent, before compression.',
      'counter',
      (route) => route.bytesSent,
    ),
    new CollectedMetric(
      prefix + 'messages_dropped_total',
      'Messages not handled or not sent on purpose: rate_limit (incoming), slow_consumer and volatile (outgoing).',
      'counter',
      () =>
        Array.from(routes()).flatMap((route) => [
          { value: route.droppedRateLimit, labels: { route: route.pattern, reason: 'rate_limit' } },
          {
            value: route.droppedSlowConsumer,
            labels: { route: route.pattern, reason: 'slow_consumer' },
          },
          { value: route.droppedVolatile, labels: { route: route.pattern, reason: 'volatile' } },
        ]),
    ),
    perRoute(
      'slow_consumer_closes_total',
      'Connections closed with 1013 for having more than maxBufferedAmount waiting to be sent.',
      'counter',
      (route) => route.slowConsumerCloses,
    ),
    perRoute(
      'rate_limit_closes_total',
      'Connections closed with 1008 for exceeding the rate limit.',
      'counter',
      (route) => route.rateLimitCloses,
    ),
    perRoute(
      'handler_errors_total',
      '@OnMessage handlers that threw or rejected.',
      'counter',
      (route) => route.handlerErrors,
    ),
    new CollectedMetric(
      prefix + 'handler_duration_seconds',
      'Time from calling an @OnMessage handler to its result.',
      'histogram',
      (name) =>
        Array.from(routes()).flatMap((route) =>
          histogramSamples(name, route.handlerDuration, { route: route.pattern }),
        ),
    ),
  ];
  const recipients = store.broadcastRecipients;
  if (recipients)
    metrics.push(
      new CollectedMetric(
        prefix + 'broadcast_recipients',
        'Connections of this instance a broadcast message was written to.',
        'histogram',
        (name) => histogramSamples(name, recipients, {}),
      ),
    );
  const { transport } = readers;
  if (transport) {
    const single = (name: string, help: string, type: 'counter' | 'gauge', value: () => number) =>
      new CollectedMetric(prefix + name, help, type, () => [{ value: value(), labels: {} }]);
    const stat = (
      name: string,
      help: string,
      type: 'counter' | 'gauge',
      key: keyof TransportStats,
    ) =>
      new CollectedMetric(prefix + name, help, type, () => {
        const value = transport.stats()?.[key];
        return typeof value === 'number' ? [{ value, labels: {} }] : [];
      });
    metrics.push(
      single(
        'transport_up',
        '1 while the broadcast transport reaches the other instances.',
        'gauge',
        () => (transport.up() ? 1 : 0),
      ),
      single(
        'transport_publish_failures_total',
        'Broadcasts the transport failed or refused to publish.',
        'counter',
        () => transport.publishFailures(),
      ),
      stat('transport_published_total', 'Frames the transport published.', 'counter', 'published'),
      stat(
        'transport_received_total',
        'Broadcast frames that arrived from the transport (own echoes included).',
        'counter',
        'received',
      ),
      stat(
        'transport_outages_total',
        'Times the transport lost the other instances.',
        'counter',
        'outages',
      ),
      stat('transport_instances', 'Other instances heard from lately.', 'gauge', 'instances'),
    );
  }
  return metrics;
}

/** A histogram's samples as prom-client's own `Histogram` gives them: cumulative buckets. */
function histogramSamples(
  name: string,
  histogram: FixedHistogram,
  labels: Record<string, string>,
): Sample[] {
  const { bounds, counts } = histogram;
  const samples: Sample[] = [];
  let cumulative = 0;
  for (let i = 0; i < bounds.length; i++) {
    cumulative += counts[i];
    samples.push({
      metricName: `${name}_bucket`,
      labels: { ...labels, le: bounds[i] },
      value: cumulative,
    });
  }
  cumulative += counts[bounds.length];
  samples.push({
    metricName: `${name}_bucket`,
    labels: { ...labels, le: '+Inf' },
    value: cumulative,
  });
  samples.push({ metricName: `${name}_sum`, labels, value: histogram.sum });
  samples.push({ metricName: `${name}_count`, labels, value: cumulative });
  return samples;
}
