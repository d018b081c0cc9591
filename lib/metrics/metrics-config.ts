import type {
  MetricsRegistry,
  WsRoutesMetricsOptions,
} from '../interfaces/metrics-options.interface.js';

/** Defaults of the `metrics` option; the README's defaults table lists the same values. */
export const METRICS_DEFAULTS = {
  /** Metrics are off: nothing is counted, nothing is timed. */
  enabled: false,
  prefix: 'ws_',
  /** Seconds: 0.1 ms to 10 s. A WebSocket handler is usually far below HTTP's 5 ms first bucket. */
  handlerDurationBuckets: [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
  ],
  broadcastRecipientsBuckets: [0, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 50000],
} as const;

/** The `metrics` option resolved and checked at start-up; `undefined` when metrics are off. */
export interface MetricsConfig {
  registry: MetricsRegistry | undefined;
  prefix: string;
  handlerDurationBuckets: readonly number[];
  broadcastRecipientsBuckets: readonly number[];
}

/** What Prometheus accepts as a metric name (the prefix starts one). */
const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;

/**
 * Resolves the `metrics` option; a bad value fails the application's start with an Error
 * naming the option, rather than a registry that refuses it at the first scrape.
 */
export function resolveMetricsConfig(
  option: boolean | WsRoutesMetricsOptions | undefined,
): MetricsConfig | undefined {
  if (option === undefined || option === false) return undefined;
  if (option !== true && (typeof option !== 'object' || option === null))
    fail('metrics', 'must be true, false or { registry, prefix, … }', option);
  const options = option === true ? {} : option;
  const { registry, prefix = METRICS_DEFAULTS.prefix } = options;
  if (
    registry !== undefined &&
    !(
      typeof registry === 'object' &&
      registry !== null &&
      typeof registry.registerMetric === 'function' &&
      typeof registry.getSingleMetric === 'function' &&
      typeof registry.removeSingleMetric === 'function'
    )
  )
    fail('metrics.registry', 'must be a prom-client Registry', registry);
  if (typeof prefix !== 'string' || !(prefix === '' || METRIC_NAME.test(prefix)))
    fail(
      'metrics.prefix',
      'must start a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)',
      prefix,
    );
  return {
    registry,
    prefix,
    handlerDurationBuckets: buckets(
      'metrics.handlerDurationBuckets',
      options.handlerDurationBuckets ?? METRICS_DEFAULTS.handlerDurationBuckets,
    ),
    broadcastRecipientsBuckets: buckets(
      'metrics.broadcastRecipientsBuckets',
      options.broadcastRecipientsBuckets ?? METRICS_DEFAULTS.broadcastRecipientsBuckets,
    ),
  };
}

function buckets(option: string, value: readonly number[]): readonly number[] {
  if (
    !Array.isArray(value) ||
    value.length === 0 ||
    value.some((bound, i) => !Number.isFinite(bound) || (i > 0 && bound <= value[i - 1]))
  )
    fail(option, 'must be a non-empty list of finite numbers, increasing', value);
  return Object.freeze([...value]);
}

function fail(option: string, problem: string, value: unknown): never {
  let shown: string;
  try {
    shown = Array.isArray(value) ? JSON.stringify(value) : String(value);
  } catch {
    shown = typeof value;
  }
  throw new Error(`WsRoutesModule: option ${option} ${problem}, got ${shown}`);
}
