/** A histogram as `WsRoutesMetrics.snapshot()` reports it, cumulative like Prometheus's. */
export interface HistogramSnapshot {
  /** Observations `<= le`, for each bucket bound (the `+Inf` bucket is `count`). */
  buckets: { le: number; count: number }[];
  /** Sum of the observed values. */
  sum: number;
  /** Number of observations. */
  count: number;
}

/**
 * Counts per bucket, kept by us rather than by prom-client: an observation is a few
 * comparisons and an integer increment, and the registry reads the counts only when scraped.
 * Buckets are not cumulative here (one increment per observation); the snapshot adds them up.
 */
export class FixedHistogram {
  /** One count per bound, then the `+Inf` bucket. */
  readonly counts: number[];
  sum = 0;

  constructor(readonly bounds: readonly number[]) {
    this.counts = new Array<number>(bounds.length + 1).fill(0);
  }

  observe(value: number): void {
    const { bounds } = this;
    let i = 0;
    // Bounds are inclusive (`le`); the small values, the common ones, are found first.
    while (i < bounds.length && value > bounds[i]) i++;
    this.counts[i]++;
    this.sum += value;
  }

  snapshot(): HistogramSnapshot {
    const buckets: { le: number; count: number }[] = [];
    let cumulative = 0;
    for (let i = 0; i < this.bounds.length; i++) {
      cumulative += this.counts[i];
      buckets.push({ le: this.bounds[i], count: cumulative });
    }
    return { buckets, sum: this.sum, count: cumulative + this.counts[this.bounds.length] };
  }
}
