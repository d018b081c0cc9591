import { RESP_TYPES } from 'redis';
import type { SubscribeDriver } from './subscriptions.js';

/** A message listener in node-redis's buffer mode: the payload and the channel as bytes. */
type Listener = (message: Buffer, channel: Buffer) => void;

/**
 * The part of a node-redis client (`createClient()`) this transport uses. Written out here so
 * the package does not depend on node-redis's generic types.
 */
export interface NodeRedisClient {
  readonly isOpen: boolean;
  readonly isReady: boolean;
  connect(): Promise<unknown>;
  duplicate(overrides?: Record<string, unknown>): NodeRedisClient;
  withCommandOptions(options: { timeout?: number }): NodeRedisClient;
  publish(channel: string, message: Buffer): Promise<number>;
  sPublish(channel: string, message: Buffer): Promise<number>;
  subscribe(channels: string[], listener: Listener, bufferMode: true): Promise<void>;
  sSubscribe(channels: string[], listener: Listener, bufferMode: true): Promise<void>;
  unsubscribe(channels: string[], listener: Listener, bufferMode: true): Promise<void>;
  sUnsubscribe(channels: string[], listener: Listener, bufferMode: true): Promise<void>;
  sendCommand(args: (string | Buffer)[], options?: { typeMapping?: object }): Promise<unknown>;
  ping(): Promise<unknown>;
  getPubSubListeners(type: 'CHANNELS' | 'SHARDED'): Map<string, unknown>;
  on(event: string, listener: (...args: any[]) => void): unknown;
  off(event: string, listener: (...args: any[]) => void): unknown;
  close?(): Promise<void>;
  destroy(): void;
}

/** The part of a node-redis cluster (`createCluster()`) this transport uses. */
export interface NodeRedisCluster {
  readonly isOpen: boolean;
  readonly masters: readonly unknown[];
  connect(): Promise<unknown>;
  sPublish(channel: string, message: Buffer): Promise<number>;
  sSubscribe(channels: string, listener: Listener, bufferMode: true): Promise<void>;
  sUnsubscribe(channels: string, listener: Listener, bufferMode: true): Promise<void>;
  sendCommand(
    firstKey: string,
    isReadonly: boolean,
    args: (string | Buffer)[],
    options?: { typeMapping?: object },
  ): Promise<unknown>;
  on(event: string, listener: (...args: any[]) => void): unknown;
  off(event: string, listener: (...args: any[]) => void): unknown;
  close?(): Promise<void>;
  destroy(): void;
}

/** What the driver tells the transport. */
export interface DriverEvents {
  /** A frame arrived on one of our channels. */
  message(frame: Buffer): void;
  /** The subscriber connection (or a cluster node) is up again: subscriptions need checking. */
  up(): void;
  /** A connection dropped or failed to reconnect. */
  down(cause: unknown): void;
}

/** Pub/sub over node-redis, on one Redis or a cluster: what the transport needs, nothing more. */
export interface PubSubDriver extends SubscribeDriver {
  /** Sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`). */
  readonly sharded: boolean;
  /** Whether the publishing connection is usable now. */
  readonly publisherReady: boolean;
  /** Starts connecting in the background: resolves at once, even while Redis is down. */
  start(): void;
  publish(channel: string, frame: Buffer): Promise<unknown>;
  /**
   * Runs one command on the publishing connection (routed by `key` on a cluster); bulk
   * replies come back as Buffers.
   */
  command(key: string, args: (string | Buffer)[]): Promise<unknown>;
  /**
   * How many channels the subscriber connection has on the server, if it can tell
   * (`CLIENT INFO` over RESP3 on one Redis); `undefined` otherwise.
   */
  serverSubscriptions(): Promise<number | undefined>;
  /**
   * The channels the client library holds listeners for: what it subscribes again by itself
   * after a reconnect, whether we still want them or not.
   */
  libraryChannels(): Iterable<string>;
  /** Drops the subscriber connection and makes a new one (subscribed again by the transport). */
  recycle(): Promise<void>;
  close(): Promise<void>;
}

/** Bulk strings as Buffers: history entries are binary. */
const BUFFERS = { typeMapping: { [RESP_TYPES.BLOB_STRING]: Buffer } };

/** Owned: made (and closed) by the transport. Borrowed: the application's, left open. */
interface Ownership {
  owned: boolean;
}

/**
 * One Redis: publishes on the given (or made) client, subscribes on a duplicate of it over
 * RESP3, so the subscriber can answer `CLIENT INFO` and `PING` while subscribed.
 */
export class StandaloneDriver implements PubSubDriver {
  private subscriber: NodeRedisClient | undefined;
  private readonly publisher: NodeRedisClient;
  private readonly listener: Listener;
  private closed = false;

  constructor(
    private readonly client: NodeRedisClient,
    private readonly ownership: Ownership,
    readonly sharded: boolean,
    private readonly events: DriverEvents,
  ) {
    this.listener = (message) => events.message(message);
    // No per-command timer: a publish waits no longer than the socket (its timeout ends it).
    this.publisher = client.withCommandOptions({ timeout: 0 });
    client.on('error', this.onError);
  }

  get publisherReady(): boolean {
    return this.client.isReady;
  }

  start(): void {
    if (!this.client.isOpen) this.client.connect().catch(this.onError);
    this.makeSubscriber();
  }

  publish(channel: string, frame: Buffer): Promise<unknown> {
    return this.sharded
      ? this.publisher.sPublish(channel, frame)
      : this.publisher.publish(channel, frame);
  }

  command(_key: string, args: (string | Buffer)[]): Promise<unknown> {
    return this.client.sendCommand(args, BUFFERS);
  }

  async subscribe(channels: string[]): Promise<void> {
    const sub = this.subscriber;
    if (!sub?.isReady) throw new Error('the subscriber connection is not ready');
    if (this.sharded) {
      // One per channel: SSUBSCRIBE takes channels of one slot only.
      await Promise.all(channels.map((c) => sub.sSubscribe([c], this.listener, true)));
    } else await sub.subscribe(channels, this.listener, true);
  }

  async unsubscribe(channels: string[]): Promise<void> {
    const sub = this.subscriber;
    // Not silently: the library would subscribe the channel again when it reconnects.
    if (!sub?.isReady) throw new Error('the subscriber connection is not ready');
    if (this.sharded)
      await Promise.all(channels.map((c) => sub.sUnsubscribe([c], this.listener, true)));
    else await sub.unsubscribe(channels, this.listener, true);
  }

  async serverSubscriptions(): Promise<number | undefined> {
    const sub = this.subscriber;
    if (!sub?.isReady) return undefined;
    const info = String(await sub.sendCommand(['CLIENT', 'INFO']));
    const name = this.sharded ? 'ssub' : 'sub';
    const count = Number(new RegExp(`(?:^|\\s)${name}=(\\d+)`).exec(info)?.[1] ?? NaN);
    return Number.isFinite(count) ? count : undefined;
  }

  libraryChannels(): Iterable<string> {
    return this.subscriber?.getPubSubListeners(this.sharded ? 'SHARDED' : 'CHANNELS').keys() ?? [];
  }

  async recycle(): Promise<void> {
    const old = this.subscriber;
    this.subscriber = undefined;
    if (old) {
      old.off('ready', this.onReady);
      old.destroy();
    }
    if (!this.closed) this.makeSubscriber();
  }

  async close(): Promise<void> {
    this.closed = true;
    const sub = this.subscriber;
    this.subscriber = undefined;
    sub?.destroy();
    this.client.off('error', this.onError);
    if (this.ownership.owned) {
      try {
        if (this.client.isReady && this.client.close) await this.client.close();
        else this.client.destroy();
      } catch {
        this.client.destroy();
      }
    }
  }

  private makeSubscriber(): void {
    // RESP3: the subscribed connection still answers CLIENT INFO (counts we verify against).
    const sub = this.client.duplicate({ RESP: 3, disableOfflineQueue: true });
    this.subscriber = sub;
    sub.on('error', this.onError);
    sub.on('ready', this.onReady);
    sub.connect().catch(this.onError);
  }

  private readonly onReady = (): void => {
    if (!this.closed) this.events.up();
  };

  private readonly onError = (error: unknown): void => {
    if (!this.closed) this.events.down(error);
  };
}

/**
 * A Redis Cluster: sharded pub/sub, each channel on the shard of its hash tag. node-redis keeps
 * one subscriber connection per master and routes `SPUBLISH` by slot.
 */
export class ClusterDriver implements PubSubDriver {
  readonly sharded = true;
  private readonly listener: Listener;
  /** Channels node-redis holds a listener for (it subscribes them again after a failover). */
  private readonly held = new Set<string>();
  private closed = false;
  private connected = false;

  constructor(
    private readonly cluster: NodeRedisCluster,
    private readonly ownership: Ownership,
    private readonly events: DriverEvents,
  ) {
    this.listener = (message) => events.message(message);
    cluster.on('error', this.onError);
    cluster.on('node-error', this.onError);
    cluster.on('node-ready', this.onReady);
    cluster.on('connect', this.onConnect);
  }

  get publisherReady(): boolean {
    return this.connected && this.cluster.isOpen;
  }

  start(): void {
    if (this.cluster.isOpen) {
      this.connected = true;
      queueMicrotask(this.onReady);
      return;
    }
    const connect = (): void => {
      if (this.closed) return;
      this.cluster.connect().then(this.onConnect, (error: unknown) => {
        // The first discovery failed (every root node down): try again, for ever.
        this.onError(error);
        setTimeout(connect, 1_000).unref();
      });
    };
    connect();
  }

  publish(channel: string, frame: Buffer): Promise<unknown> {
    return this.cluster.sPublish(channel, frame);
  }

  command(key: string, args: (string | Buffer)[]): Promise<unknown> {
    return this.cluster.sendCommand(key, false, args, BUFFERS);
  }

  async subscribe(channels: string[]): Promise<void> {
    if (!this.connected) throw new Error('the cluster is not connected');
    await Promise.all(
      channels.map(async (c) => {
        await this.cluster.sSubscribe(c, this.listener, true);
        this.held.add(c);
      }),
    );
  }

  async unsubscribe(channels: string[]): Promise<void> {
    if (!this.connected) throw new Error('the cluster is not connected');
    await Promise.all(
      channels.map(async (c) => {
        await this.cluster.sUnsubscribe(c, this.listener, true);
        this.held.delete(c);
      }),
    );
  }

  libraryChannels(): Iterable<string> {
    return this.held;
  }

  async serverSubscriptions(): Promise<undefined> {
    return undefined;
  }

  async recycle(): Promise<void> {
    // node-redis reconnects each master's subscriber itself; the probe keeps checking.
  }

  async close(): Promise<void> {
    this.closed = true;
    this.cluster.off('error', this.onError);
    this.cluster.off('node-error', this.onError);
    this.cluster.off('node-ready', this.onReady);
    this.cluster.off('connect', this.onConnect);
    if (this.ownership.owned) {
      try {
        if (this.cluster.close) await this.cluster.close();
        else this.cluster.destroy();
      } catch {
        this.cluster.destroy();
      }
    }
  }

  private readonly onConnect = (): void => {
    this.connected = true;
    this.onReady();
  };

  private readonly onReady = (): void => {
    if (!this.closed && this.connected) this.events.up();
  };

  private readonly onError = (error: unknown): void => {
    if (!this.closed) this.events.down(error);
  };
}
