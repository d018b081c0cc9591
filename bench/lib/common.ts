/** Helpers shared by the orchestrator, the server processes and the load processes. */
import { performance } from 'node:perf_hooks';

/**
 * Wall-clock milliseconds with sub-millisecond resolution, comparable between processes of
 * this machine: `performance.timeOrigin` is the process start in Unix time (µs precision),
 * `performance.now()` the monotonic time since then.
 */
export function now(): number {
  return performance.timeOrigin + performance.now();
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class TimeoutError extends Error {
  constructor(what: string, ms: number) {
    super(`timeout: ${what} took more than ${ms} ms`);
  }
}

/** Rejects with a {@link TimeoutError} when `promise` has not settled within `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(what, ms)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** What a histogram is sent as between processes (structured clone). */
export interface HistogramData {
  counts: Uint32Array;
  total: number;
  sum: number;
  max: number;
  /** Samples below zero (clock disagreement between processes), recorded as zero. */
  negative: number;
}

const GROWTH = 1.01;
const LOG_GROWTH = Math.log(GROWTH);
/** 1.01^2200 µs ≈ 3.2e9 µs: any latency this bench can see fits. */
const BUCKETS = 2200;

/**
 * Latency histogram with buckets 1 % wide, from 1 µs up: constant memory for millions of
 * samples, mergeable across processes, percentiles within 1 %.
 */
export class Histogram implements HistogramData {
  counts = new Uint32Array(BUCKETS);
  total = 0;
  sum = 0;
  max = 0;
  negative = 0;

  /** Records one sample, in milliseconds. */
  record(ms: number): void {
    if (ms < 0) {
      this.negative++;
      ms = 0;
    }
    const us = ms * 1000;
    const index = us <= 1 ? 0 : Math.min(BUCKETS - 1, Math.ceil(Math.log(us) / LOG_GROWTH));
    this.counts[index]++;
    this.total++;
    this.sum += ms;
    if (ms > this.max) this.max = ms;
  }

  merge(other: HistogramData): this {
    for (let i = 0; i < BUCKETS; i++) this.counts[i] += other.counts[i];
    this.total += other.total;
    this.sum += other.sum;
    this.negative += other.negative;
    if (other.max > this.max) this.max = other.max;
    return this;
  }

  /** The value (ms) below which `p` (0–1) of the samples lie; NaN without samples. */
  percentile(p: number): number {
    if (this.total === 0) return NaN;
    const rank = Math.max(1, Math.ceil(p * this.total));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i];
      if (seen >= rank) return Math.min(this.max, i === 0 ? 0.001 : GROWTH ** i / 1000);
    }
    return this.max;
  }

  get mean(): number {
    return this.total ? this.sum / this.total : NaN;
  }

  data(): HistogramData {
    return {
      counts: this.counts,
      total: this.total,
      sum: this.sum,
      max: this.max,
      negative: this.negative,
    };
  }

  reset(): void {
    this.counts = new Uint32Array(BUCKETS);
    this.total = this.sum = this.max = this.negative = 0;
  }

  static from(data: HistogramData[]): Histogram {
    const histogram = new Histogram();
    for (const part of data) histogram.merge(part);
    return histogram;
  }
}

/** `{"t":<send time>,"seq":<n>,"event":"tick","data":"xxx…"}`, about `bytes` long as JSON. */
export function tickMessage(t: number, seq: number, pad: string) {
  return { t, seq, event: 'tick', data: pad };
}

/** Padding that makes a tick message `bytes` long (±2 bytes, the digits of `seq` vary). */
export function tickPad(bytes: number): string {
  const base = JSON.stringify(tickMessage(now(), 100, '')).length;
  return 'x'.repeat(Math.max(0, bytes - base));
}

/** `{"event":"echo","data":"xxx…"}`, exactly `bytes` long. */
export function echoRequest(bytes: number): { text: string; data: string } {
  const base = JSON.stringify({ event: 'echo', data: '' }).length;
  const data = 'x'.repeat(Math.max(0, bytes - base));
  return { text: JSON.stringify({ event: 'echo', data }), data };
}

/** Reads the send time of a tick message without parsing it: it is the first field. */
export function tickTime(frame: Buffer): number {
  return parseFloat(frame.toString('latin1', 5, 32));
}

export function median(values: number[]): number {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
