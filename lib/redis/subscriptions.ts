/** What `Subscriptions` asks of the subscriber connection. */
export interface SubscribeDriver {
  subscribe(channels: string[]): Promise<void>;
  unsubscribe(channels: string[]): Promise<void>;
}

/** Channels per SUBSCRIBE command when many are (re)subscribed at once. */
const BATCH = 1_000;

/**
 * Our own list of the channels this instance needs, the one source of truth for what is
 * subscribed: after a reconnect every channel in it is subscribed again from here (never left
 * to the client library to remember). Changes made in one event-loop turn go out as one
 * SUBSCRIBE and one UNSUBSCRIBE command. A channel that loses its last member stays subscribed
 * for `linger` ms, so a member who leaves and comes back (a page reload) costs no round trip.
 */
export class Subscriptions {
  private readonly wanted = new Set<string>();
  /** Channels no longer wanted, still subscribed, with the time they go. */
  private readonly lingering = new Map<string, number>();
  /** Changes of this turn, channel → subscribe (`true`) or unsubscribe; the last one wins. */
  private pending = new Map<string, boolean>();
  private flushScheduled = false;
  private sweepTimer: NodeJS.Timeout | undefined;
  private online = false;

  constructor(
    private readonly driver: SubscribeDriver,
    private readonly linger: number,
    private readonly failed: (error: unknown) => void,
  ) {}

  /** Number of channels wanted now. */
  get size(): number {
    return this.wanted.size;
  }

  /** Whether this channel is wanted now. */
  has(channel: string): boolean {
    return this.wanted.has(channel);
  }

  /** Every channel wanted now. */
  channels(): IterableIterator<string> {
    return this.wanted.keys();
  }

  /** Whether the channel is wanted or still lingering (subscribed on purpose either way). */
  keeps(channel: string): boolean {
    return this.wanted.has(channel) || this.lingering.has(channel);
  }

  /** Wanted and lingering channels. */
  get kept(): number {
    return this.wanted.size + this.lingering.size;
  }

  /** This instance needs the channel. */
  want(channel: string): void {
    if (this.wanted.has(channel)) return;
    this.wanted.add(channel);
    // Still subscribed from before the linger: nothing to send.
    if (this.lingering.delete(channel)) return;
    if (this.online) this.queue(channel, true);
  }

  /** This instance no longer needs the channel: it goes after the linger. */
  drop(channel: string): void {
    if (!this.wanted.delete(channel)) return;
    if (this.linger <= 0) {
      if (this.online) this.queue(channel, false);
      return;
    }
    this.lingering.set(channel, Date.now() + this.linger);
    this.sweepTimer ??= setInterval(() => this.sweep(), Math.max(10, this.linger / 4));
    this.sweepTimer.unref();
  }

  /**
   * The subscriber connection is (again) up: subscribes every wanted channel, in batches, and
   * resolves once Redis confirmed them all. Channels that lingered are simply dropped: the new
   * connection never subscribed them.
   */
  async restore(): Promise<void> {
    this.online = true;
    this.lingering.clear();
    this.pending.clear();
    const all = [...this.wanted];
    const batches: Promise<void>[] = [];
    for (let i = 0; i < all.length; i += BATCH)
      batches.push(this.driver.subscribe(all.slice(i, i + BATCH)));
    await Promise.all(batches);
  }

  /** The subscriber connection is down: changes are only recorded until `restore()`. */
  offline(): void {
    this.online = false;
    this.pending.clear();
  }

  /** Stops the linger timer (shutdown). */
  close(): void {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    this.online = false;
  }

  private sweep(): void {
    const now = Date.now();
    for (const [channel, until] of this.lingering) {
      if (until > now) continue;
      this.lingering.delete(channel);
      if (this.online) this.queue(channel, false);
    }
    if (this.lingering.size === 0 && this.sweepTimer) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = undefined;
    }
  }

  private queue(channel: string, subscribe: boolean): void {
    this.pending.set(channel, subscribe);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => this.flush());
  }

  private flush(): void {
    this.flushScheduled = false;
    const subscribe: string[] = [];
    const unsubscribe: string[] = [];
    for (const [channel, on] of this.pending) (on ? subscribe : unsubscribe).push(channel);
    this.pending.clear();
    if (!this.online) return;
    for (let i = 0; i < subscribe.length; i += BATCH)
      this.driver.subscribe(subscribe.slice(i, i + BATCH)).catch(this.failed);
    for (let i = 0; i < unsubscribe.length; i += BATCH)
      this.driver.unsubscribe(unsubscribe.slice(i, i + BATCH)).catch(this.failed);
  }
}
