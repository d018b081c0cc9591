import type { DriverEvents, PubSubDriver } from './node-redis-driver.js';

/**
 * The part of an ioredis client (`new Redis()`) this transport uses, written out so the package
 * needs no ioredis types. Standalone Redis only (an ioredis `Cluster` is not supported).
 */
export interface IoRedisClient {
  readonly status: string;
  connect(): Promise<void>;
  duplicate(override?: Record<string, unknown>): IoRedisClient;
  publish(channel: string, message: Buffer): Promise<unknown>;
  callBuffer(command: string, ...args: (string | Buffer)[]): Promise<unknown>;
  spublish(channel: string, message: Buffer): Promise<unknown>;
  subscribe(...channels: string[]): Promise<unknown>;
  unsubscribe(...channels: string[]): Promise<unknown>;
  ssubscribe(...channels: string[]): Promise<unknown>;
  sunsubscribe(...channels: string[]): Promise<unknown>;
  on(event: string, listener: (...args: any[]) => void): unknown;
  off(event: string, listener: (...args: any[]) => void): unknown;
  disconnect(reconnect?: boolean): void;
}

/**
 * Pub/sub over an application's ioredis client (Nest microservice users have one): publishes
 * on it, subscribes on a duplicate. ioredis subscribes its channels again after a reconnect;
 * the transport's own list is checked against what this driver holds, as with node-redis.
 */
export class IoRedisDriver implements PubSubDriver {
  private subscriber: IoRedisClient | undefined;
  /** Channels confirmed subscribed on the current subscriber (ioredis restores these). */
  private readonly held = new Set<string>();
  private closed = false;

  constructor(
    private readonly client: IoRedisClient,
    readonly sharded: boolean,
    private readonly events: DriverEvents,
  ) {
    client.on('error', this.onError);
  }

  get publisherReady(): boolean {
    return this.client.status === 'ready';
  }

  start(): void {
    if (this.client.status === 'wait') this.client.connect().catch(this.onError);
    this.makeSubscriber();
  }

  publish(channel: string, frame: Buffer): Promise<unknown> {
    // ioredis would queue it while offline; this transport refuses instead (at most once).
    if (this.client.status !== 'ready') return Promise.reject(new Error('Redis is not ready'));
    return this.sharded
      ? this.client.spublish(channel, frame)
      : this.client.publish(channel, frame);
  }

  command(_key: string, args: (string | Buffer)[]): Promise<unknown> {
    if (this.client.status !== 'ready') return Promise.reject(new Error('Redis is not ready'));
    const [name, ...rest] = args;
    return this.client.callBuffer(String(name), ...rest);
  }

  async subscribe(channels: string[]): Promise<void> {
    const sub = this.readySubscriber();
    if (this.sharded) await Promise.all(channels.map((c) => sub.ssubscribe(c)));
    else await sub.subscribe(...channels);
    for (const channel of channels) this.held.add(channel);
  }

  async unsubscribe(channels: string[]): Promise<void> {
    const sub = this.readySubscriber();
    if (this.sharded) await Promise.all(channels.map((c) => sub.sunsubscribe(c)));
    else await sub.unsubscribe(...channels);
    for (const channel of channels) this.held.delete(channel);
  }

  libraryChannels(): Iterable<string> {
    return this.held;
  }

  async serverSubscriptions(): Promise<undefined> {
    // A RESP2 subscriber cannot run CLIENT INFO; the probe checks the link end to end.
    return undefined;
  }

  async recycle(): Promise<void> {
    const old = this.subscriber;
    this.subscriber = undefined;
    this.held.clear();
    if (old) {
      old.off('ready', this.onReady);
      old.disconnect(false);
    }
    if (!this.closed) this.makeSubscriber();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.subscriber?.disconnect(false);
    this.subscriber = undefined;
    this.client.off('error', this.onError);
  }

  private readySubscriber(): IoRedisClient {
    const sub = this.subscriber;
    if (sub?.status !== 'ready') throw new Error('the subscriber connection is not ready');
    return sub;
  }

  private makeSubscriber(): void {
    const sub = this.client.duplicate({ lazyConnect: true, enableOfflineQueue: false });
    this.subscriber = sub;
    sub.on('error', this.onError);
    sub.on('close', this.onClose);
    sub.on('ready', this.onReady);
    sub.on(this.sharded ? 'smessageBuffer' : 'messageBuffer', this.onMessage);
    sub.connect().catch(this.onError);
  }

  private readonly onMessage = (_channel: Buffer, message: Buffer): void => {
    this.events.message(message);
  };

  private readonly onReady = (): void => {
    if (!this.closed) this.events.up();
  };

  private readonly onClose = (): void => {
    if (!this.closed) this.events.down(new Error('the subscriber connection closed'));
  };

  private readonly onError = (error: unknown): void => {
    if (!this.closed) this.events.down(error);
  };
}
