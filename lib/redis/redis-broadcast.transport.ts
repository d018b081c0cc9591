import { Logger, type LoggerService } from '@nestjs/common';
import { EventEmitter } from 'node:events';
import { createClient, createCluster } from 'redis';
import {
  instanceOfConnection,
  isForEveryone,
  type BroadcastPacket,
} from '../broadcast/broadcast-packet.interface.js';
import type {
  BroadcastTransport,
  MembershipKind,
  RemoteCount,
  TransportBinding,
} from '../broadcast/broadcast-transport.interface.js';
import {
  decodeFrame,
  encodeControl,
  encodeCountRequest,
  encodePacket,
  isPacketFrom,
  PacketFormatError,
  type ControlMessage,
} from '../broadcast/wire-format.js';
import { ChannelNames } from './channel-names.js';
import { InstanceDirectory } from './instance-directory.js';
import { IoRedisDriver } from './ioredis-driver.js';
import {
  ClusterDriver,
  StandaloneDriver,
  type DriverEvents,
  type NodeRedisClient,
  type NodeRedisCluster,
  type PubSubDriver,
} from './node-redis-driver.js';
import { PendingCounts } from './pending-counts.js';
import { RecentPackets } from './recent-packets.js';
import {
  reconnectDelay,
  REDIS_TRANSPORT_DEFAULTS,
  type RedisBroadcastTransportOptions,
  type RedisClientOptions,
  type RedisIoRedisOptions,
} from './redis-transport-options.js';
import { Subscriptions } from './subscriptions.js';
import { RedisStreamHistory } from './stream-history.js';
import type { RecoveryHistory } from '../recovery/recovery-history.interface.js';

const MEMBER_KINDS: readonly MembershipKind[] = ['route', 'room', 'user'];
/** While down: how often the transport tries to verify its subscriptions again. */
const RETRY_INTERVAL = 1_000;
/** node-redis pings its connections this often, so a quiet one still reads (and times out). */
const PING_INTERVAL = 5_000;
/** How many times a probe that waits behind moving traffic gets another `probeTimeout`. */
const MAX_PROBE_EXTENSIONS = 10;
/** How long after becoming ready `count()` waits for the others' answers to its hello. */
const PRESENCE_SETTLE = 250;
/** How often a run of refused frames (another release's wire format) is logged. */
const REFUSAL_LOG_INTERVAL = 60_000;

/** What the transport has done since start-up: `RedisBroadcastTransport.stats`. */
export interface RedisTransportStats {
  /** Subscriptions verified and the probe answered: other instances are reached. */
  ready: boolean;
  /** Frames published (one per channel). */
  published: number;
  /** Publishes that failed or were refused because Redis was unreachable. */
  publishFailures: number;
  /** Broadcast frames that arrived on this instance's channels (its own echoes included). */
  received: number;
  /** Of `received`: echoes of this instance's own publishes (dropped unread). */
  echoes: number;
  /** Broadcast frames of other instances handed to this instance's connections. */
  delivered: number;
  /** Frames that arrived twice (a packet published to several channels) and were dropped. */
  deduplicated: number;
  /** Frames refused: another release's wire format, or not ours. */
  incompatible: number;
  /** Channels this instance is subscribed to (wanted now). */
  subscriptions: number;
  /** Other instances heard from on the control channel lately. */
  instances: number;
  /** Times the transport went down (lost Redis or failed a probe). */
  outages: number;
}

/**
 * Carries broadcasts between instances through Redis pub/sub (node-redis), on one Redis or a
 * Redis Cluster (sharded pub/sub). Import it from `nestjs-ws-routes/redis`:
 *
 * ```ts
 * WsRoutesModule.forRoot({
 *   broadcastTransport: new RedisBroadcastTransport({ url: 'redis://127.0.0.1:6379', keyPrefix: 'myapp' }),
 * });
 * ```
 *
 * An instance subscribes to the everyone and control channels, its own channel, and the
 * channel of each route, room and user it has a member of, only while it has one. Delivery
 * is at most once: what is published while Redis is unreachable is lost (counted and logged),
 * never queued. The transport reconnects for ever, subscribes again from its own list,
 * verifies, and only then reports ready; it emits `'ready'` and `'down'`.
 */
export class RedisBroadcastTransport extends EventEmitter implements BroadcastTransport {
  private readonly logger: LoggerService;
  private readonly tuning: Required<
    Omit<
      RedisBroadcastTransportOptions,
      'url' | 'client' | 'cluster' | 'ioredis' | 'logger' | 'sharded'
    >
  >;
  private binding: TransportBinding | undefined;
  private names!: ChannelNames;
  private self = '';
  private selfBytes = Buffer.alloc(0);
  private ownChannel = '';
  private driver: PubSubDriver | undefined;
  private subscriptions: Subscriptions | undefined;
  private directory!: InstanceDirectory;
  private counts!: PendingCounts;
  private readonly recent = new RecentPackets();
  private history: RedisStreamHistory | undefined;
  private ready = false;
  private closed = false;
  private verifying: Promise<void> | undefined;
  private downSince = 0;
  private downLogged = false;
  private everReady = false;
  private probeSerial = 0;
  private probeWaiting:
    { n: number; done: (ok: boolean) => void; result: Promise<boolean> } | undefined;
  private timers: NodeJS.Timeout[] = [];
  private refusedLoggedAt = -Infinity;
  /** Bytes of publishes sent and not answered yet. */
  private backlog = 0;
  /** Broadcast frames received: a probe that waits behind such traffic is not a dead link. */
  private framesSeen = 0;
  private publishesAnswered = 0;
  private readyAt = 0;
  private readonly counters = {
    published: 0,
    publishFailures: 0,
    received: 0,
    echoes: 0,
    delivered: 0,
    deduplicated: 0,
    incompatible: 0,
    outages: 0,
  };

  constructor(private readonly options: RedisBroadcastTransportOptions) {
    super();
    const defaults = REDIS_TRANSPORT_DEFAULTS;
    this.logger = options.logger ?? new Logger('WsRoutes:Redis');
    this.tuning = {
      keyPrefix: options.keyPrefix ?? defaults.keyPrefix,
      linger: options.linger ?? defaults.linger,
      heartbeatInterval: options.heartbeatInterval ?? defaults.heartbeatInterval,
      probeInterval: options.probeInterval ?? defaults.probeInterval,
      probeTimeout: options.probeTimeout ?? defaults.probeTimeout,
      maxChannelsPerPacket: options.maxChannelsPerPacket ?? defaults.maxChannelsPerPacket,
      maxPublishBacklog: options.maxPublishBacklog ?? defaults.maxPublishBacklog,
      maxReconnectDelay: options.maxReconnectDelay ?? defaults.maxReconnectDelay,
    };
    // Fails at construction, with the option named, rather than at the first publish.
    const ways = (['url', 'client', 'cluster', 'ioredis'] as const).filter((k) => k in options);
    if (ways.length !== 1)
      throw new TypeError(
        'RedisBroadcastTransport: give exactly one of url, client, cluster or ioredis' +
          (ways.length ? ` (got ${ways.join(', ')})` : ''),
      );
    this.names = new ChannelNames(this.tuning.keyPrefix);
    for (const [name, value] of Object.entries(this.tuning))
      if (typeof value === 'number' && !(value >= 0))
        throw new RangeError(`RedisBroadcastTransport: ${name} must be a number >= 0`);
  }

  /** Whether the other instances are reached: subscriptions verified, probe answered. */
  isReady(): boolean {
    return this.ready;
  }

  /** Counters since start-up. */
  get stats(): RedisTransportStats {
    return {
      ready: this.ready,
      ...this.counters,
      subscriptions: this.subscriptions?.size ?? 0,
      instances: this.directory ? this.directory.up().length : 0,
    };
  }

  /**
   * The history of recovery routes, in Redis Streams under this transport's `keyPrefix`:
   * called by `BroadcastService` at start-up, so `@WsRoute(path, { recovery })` works across
   * instances.
   */
  recoveryHistory(): RecoveryHistory {
    this.history ??= new RedisStreamHistory({
      names: this.names,
      driver: () => this.driver,
      isReady: () => this.ready && !this.closed && !!this.driver?.publisherReady,
      want: (channel) => this.subscriptions?.want(channel),
      reserve: (bytes) => {
        if (this.backlog + bytes > this.tuning.maxPublishBacklog)
          throw new Error(
            `Redis is not keeping up: ${this.backlog} bytes of publishes await an answer ` +
              `(maxPublishBacklog ${this.tuning.maxPublishBacklog})`,
          );
        this.backlog += bytes;
      },
      release: (bytes) => {
        this.backlog -= bytes;
        this.publishesAnswered++;
      },
    });
    return this.history;
  }

  /**
   * Called by `BroadcastService` at start-up. Starts connecting in the background: an instance
   * boots while Redis is down.
   */
  bind(binding: TransportBinding): void {
    if (this.binding) throw new Error('RedisBroadcastTransport: one transport per application');
    this.binding = binding;
    this.self = binding.instanceId;
    this.selfBytes = Buffer.from(this.self);
    this.ownChannel = this.names.instance(this.self);
    this.directory = new InstanceDirectory(this.self);
    this.counts = new PendingCounts(this.self);
    this.driver = this.makeDriver();
    this.subscriptions = new Subscriptions(this.driver, this.tuning.linger, this.subscribeFailed);
    for (const channel of [this.names.everyone, this.names.control, this.ownChannel])
      this.subscriptions.want(channel);
    for (const channel of this.history?.channels() ?? []) this.subscriptions.want(channel);
    for (const kind of MEMBER_KINDS)
      for (const name of binding.members(kind))
        this.subscriptions.want(this.names.member(kind, name));
    this.every(this.tuning.heartbeatInterval, () => this.hello());
    this.every(this.tuning.probeInterval, () => void this.probeWhileUp());
    this.every(RETRY_INTERVAL, () => {
      if (!this.ready) void this.verify();
    });
    this.markDown(undefined);
    this.driver.start();
  }

  /** This instance got its first member of a route, room or user (called by the registry). */
  subscribe(kind: MembershipKind, name: string): void {
    this.subscriptions?.want(this.names.member(kind, name));
  }

  /** This instance lost its last member of a route, room or user: unsubscribed after `linger`. */
  unsubscribe(kind: MembershipKind, name: string): void {
    this.subscriptions?.drop(this.names.member(kind, name));
  }

  /**
   * Called by `BroadcastService` after local delivery. One frame, encoded once, published to
   * each target channel (pipelined by node-redis in the same turn). Refused at once while the
   * transport is not ready, or beyond `maxPublishBacklog`.
   */
  publish(packet: BroadcastPacket): Promise<unknown> | undefined {
    const driver = this.driver;
    if (!driver || this.closed) return undefined;
    const channels = this.channelsOf(packet);
    if (channels.length === 0) return undefined;
    if (!this.ready || !driver.publisherReady) {
      this.counters.publishFailures += channels.length;
      throw new Error('Redis is unreachable: the broadcast did not reach the other instances');
    }
    const frame = encodePacket(packet, channels.length > 1);
    const bytes = frame.length * channels.length;
    if (this.backlog + bytes > this.tuning.maxPublishBacklog) {
      // Redis stopped answering without closing the connection: do not pile up memory.
      this.counters.publishFailures += channels.length;
      throw new Error(
        `Redis is not keeping up: ${this.backlog} bytes of publishes await an answer ` +
          `(maxPublishBacklog ${this.tuning.maxPublishBacklog})`,
      );
    }
    this.backlog += bytes;
    this.counters.published += channels.length;
    const sent =
      channels.length === 1
        ? driver.publish(channels[0], frame)
        : Promise.all(channels.map((channel) => driver.publish(channel, frame)));
    return sent.then(
      () => {
        this.backlog -= bytes;
        this.publishesAnswered++;
      },
      (error: unknown) => {
        this.backlog -= bytes;
        this.publishFailed(error);
      },
    );
  }

  /** For `count()`: asks every instance heard from lately; those that do not answer are `missing`. */
  async count(packet: BroadcastPacket, timeout: number): Promise<RemoteCount> {
    // Just (re)connected: the others answer this instance's hello within a round trip.
    const settling = this.readyAt + PRESENCE_SETTLE - Date.now();
    if (this.ready && settling > 0) await sleep(Math.min(settling, timeout));
    const expected = this.directory?.up() ?? [];
    if (!this.driver || expected.length === 0) return { count: 0, answered: [], missing: [] };
    if (!this.driver.publisherReady) return { count: 0, answered: [], missing: expected };
    const request = this.counts.newRequest();
    const answer = this.counts.wait(request, expected, timeout);
    this.driver.publish(this.names.control, encodeCountRequest(request, packet)).catch(() => {
      // Unanswered: the wait ends at the timeout with every instance missing.
    });
    return answer;
  }

  /** At shutdown: says goodbye, unsubscribes, closes the connections it made. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
    this.counts?.finishAll();
    this.probeWaiting?.done(false);
    const driver = this.driver;
    if (!driver) return;
    if (driver.publisherReady)
      await withDeadline(
        driver.publish(this.names.control, encodeControl({ type: 'bye', instance: this.self })),
        500,
      );
    // A borrowed client stays open: what this instance subscribed through it goes now.
    if (!('url' in this.options) && !('cluster' in this.options) && this.subscriptions)
      await withDeadline(driver.unsubscribe([...this.subscriptions.channels()]), 500);
    this.subscriptions?.close();
    this.ready = false;
    await driver.close();
  }

  private makeDriver(): PubSubDriver {
    const { options } = this;
    const events: DriverEvents = {
      message: (frame) => this.received(frame),
      up: () => void this.verify(),
      down: (cause) => this.markDown(cause),
    };
    const reconnectStrategy = reconnectDelay(this.tuning.maxReconnectDelay);
    const { heartbeatInterval, probeInterval } = this.tuning;
    const socket = {
      reconnectStrategy,
      connectTimeout: 5_000,
      // A frozen server ends the connection instead of holding commands for ever; pings (and
      // heartbeats, probes) keep a healthy one reading well within this.
      socketTimeout: Math.max(
        15_000,
        3 * Math.max(heartbeatInterval, probeInterval, PING_INTERVAL),
      ),
    };
    if ('url' in options) {
      const client = createClient({
        url: options.url,
        disableOfflineQueue: true,
        pingInterval: PING_INTERVAL,
        socket,
      });
      return new StandaloneDriver(
        client as unknown as NodeRedisClient,
        { owned: true },
        options.sharded ?? false,
        events,
      );
    }
    if ('cluster' in options) {
      const cluster = createCluster({
        rootNodes: options.cluster.rootNodes,
        defaults: { disableOfflineQueue: true, pingInterval: PING_INTERVAL, socket },
      });
      return new ClusterDriver(cluster as unknown as NodeRedisCluster, { owned: true }, events);
    }
    if ('ioredis' in options) {
      const { ioredis, sharded } = options as RedisIoRedisOptions;
      return new IoRedisDriver(ioredis, sharded ?? false, events);
    }
    const client = (options as RedisClientOptions).client;
    if ('masters' in client) return new ClusterDriver(client, { owned: false }, events);
    return new StandaloneDriver(client, { owned: false }, options.sharded ?? false, events);
  }

  /** The channels a packet goes to; above the threshold, the everyone channel once. */
  private channelsOf(packet: BroadcastPacket): string[] {
    const { names } = this;
    if (isForEveryone(packet)) return [names.everyone];
    const channels: string[] = [];
    for (const route of packet.routes ?? []) channels.push(names.member('route', route));
    for (const room of packet.rooms ?? []) channels.push(names.member('room', room));
    for (const user of packet.users ?? []) channels.push(names.member('user', user));
    if (packet.connections?.length) {
      const instances = new Set<string>();
      for (const id of packet.connections) {
        const instance = instanceOfConnection(id);
        // This instance's own connections were served already, by BroadcastService.
        if (instance !== undefined && instance !== this.self) instances.add(instance);
      }
      for (const instance of instances) channels.push(names.instance(instance));
    }
    const unique = channels.length > 1 ? [...new Set(channels)] : channels;
    return unique.length > this.tuning.maxChannelsPerPacket ? [names.everyone] : unique;
  }

  /** One frame from Redis: handled at once, never awaited, so the read path keeps up. */
  private received(bytes: Buffer): void {
    if (isPacketFrom(bytes, this.selfBytes)) {
      // The echo of this instance's own publish: delivered already, when it was sent.
      this.counters.received++;
      this.counters.echoes++;
      this.framesSeen++;
      return;
    }
    let frame;
    try {
      frame = decodeFrame(bytes);
    } catch (error) {
      this.refused(error);
      return;
    }
    const binding = this.binding!;
    if (frame.kind === 'packet') {
      this.counters.received++;
      this.framesSeen++;
      const { packet } = frame;
      if (packet.origin === this.self) {
        this.counters.echoes++;
        return;
      }
      if (frame.severalChannels && !this.recent.firstTime(packet.origin, packet.serial ?? 0)) {
        this.counters.deduplicated++;
        return;
      }
      this.counters.delivered++;
      this.safely(() => binding.deliver(packet));
    } else if (frame.kind === 'count-request') {
      const { packet, request } = frame;
      if (packet.origin === this.self) return;
      const count = this.safely(() => binding.count(packet)) ?? 0;
      this.send(this.names.instance(packet.origin), {
        type: 'count-reply',
        request,
        instance: this.self,
        count,
      });
    } else if (frame.kind === 'entry') {
      this.counters.received++;
      this.framesSeen++;
      const { route, epoch, seq, packet } = frame;
      this.safely(() => this.history?.heard(route, epoch, seq, packet));
    } else this.control(frame.control);
  }

  private control(message: ControlMessage): void {
    switch (message.type) {
      case 'hello':
        // A newcomer (or one back from an outage) learns of this instance at once, not at
        // its next heartbeat: its first count() already knows whom to ask.
        if (this.directory.seen(message.instance, message.interval))
          this.send(this.names.instance(message.instance), this.helloMessage());
        break;
      case 'bye':
        this.directory.gone(message.instance);
        break;
      case 'count-reply':
        this.counts.answer(message.request, message.instance, message.count);
        break;
      case 'probe':
        if (message.instance === this.self && this.probeWaiting?.n === message.n)
          this.probeWaiting.done(true);
        break;
    }
  }

  /**
   * After a (re)connect: every channel of our own list is subscribed again, the server's
   * count of them is checked where Redis can tell, and a probe must come back through the
   * subscriber. Only then is the transport ready.
   */
  private verify(): Promise<void> {
    if (this.closed || this.ready) return Promise.resolve();
    this.verifying ??= this.runVerify().finally(() => (this.verifying = undefined));
    return this.verifying;
  }

  private async runVerify(): Promise<void> {
    const driver = this.driver!;
    const subscriptions = this.subscriptions!;
    if (!driver.publisherReady) return;
    const deadline = 2 * this.tuning.probeTimeout + 5_000;
    try {
      await withDeadline(subscriptions.restore(), deadline, true);
    } catch (error) {
      this.markDown(error);
      return;
    }
    // What the library would subscribe again by itself but nobody here needs any more (a
    // room left while Redis was down): unsubscribed now.
    const extras = [...driver.libraryChannels()].filter((c) => !subscriptions.keeps(c));
    if (extras.length) {
      try {
        await withDeadline(driver.unsubscribe(extras), deadline, true);
      } catch (error) {
        this.markDown(error);
        return;
      }
    }
    const wanted = subscriptions.size;
    const onServer = await withDeadline(driver.serverSubscriptions(), deadline).catch(
      () => undefined,
    );
    if (onServer !== undefined && (onServer < wanted || onServer > subscriptions.kept)) {
      this.logger.warn(
        `The subscriber connection has ${onServer} channels on the server, ${wanted} are needed: ` +
          'making a new subscriber connection and subscribing again from our own list',
      );
      await driver.recycle();
      return;
    }
    if (!(await this.probe(false))) {
      this.markDown(new Error('the probe did not come back through the subscriber'));
      await driver.recycle();
      return;
    }
    if (this.closed) return;
    const wasDown = this.everReady ? Date.now() - this.downSince : 0;
    this.everReady = true;
    this.ready = true;
    this.readyAt = Date.now();
    this.downLogged = false;
    this.logger.log(
      `Redis reached: ${wanted} channels subscribed and verified` +
        (wasDown ? ` after ${Math.round(wasDown / 100) / 10} s without` : ''),
    );
    this.hello();
    this.emit('ready');
    this.history?.reachable();
  }

  /** A dropped connection, a failed retry or probe: not ready until verified again. */
  private markDown(cause: unknown): void {
    if (this.closed) return;
    this.history?.unreachable();
    if (this.ready || !this.downSince) this.downSince = Date.now();
    if (this.ready) {
      this.ready = false;
      this.counters.outages++;
      this.emit('down', cause);
    }
    if (cause !== undefined && !this.downLogged) {
      this.downLogged = true;
      this.logger.warn(
        `Redis unreachable (${describe(cause)}): broadcasts reach this instance's connections ` +
          'only, until it reconnects (it retries for ever)',
      );
    }
  }

  /**
   * A publish through the subscriber's own channel: the end-to-end check of the link. One at
   * a time: a probe still waiting is joined, never cut short by the next. `patient` (a link
   * that worked): it waits longer while traffic moves; a verification after a reconnect does
   * not, it tries again soon instead.
   */
  private probe(patient: boolean): Promise<boolean> {
    if (this.probeWaiting) return this.probeWaiting.result;
    const driver = this.driver!;
    const n = ++this.probeSerial;
    const { probeTimeout } = this.tuning;
    const sentAt = Date.now();
    let progress = this.progress();
    let extensions = 0;
    let lateExtended = false;
    let finish!: (ok: boolean) => void;
    let timer: NodeJS.Timeout | undefined;
    // The timer may fire before the socket is read (the event loop was blocked): decide after
    // the I/O phase. A probe queued behind a burst is not a dead link: while frames arrive or
    // publishes are answered, it waits longer (up to MAX_PROBE_EXTENSIONS timeouts).
    const expired = (): void =>
      void setImmediate(() => {
        if (this.probeWaiting?.n !== n) return;
        const now = this.progress();
        const moved = now !== progress;
        progress = now;
        const late = !lateExtended && Date.now() - sentAt > (extensions + 1.5) * probeTimeout;
        if ((patient && moved && extensions < MAX_PROBE_EXTENSIONS) || late) {
          if (late) lateExtended = true;
          extensions++;
          timer = setTimeout(expired, probeTimeout);
          timer.unref();
          return;
        }
        finish(false);
      });
    const result = new Promise<boolean>((resolve) => {
      timer = setTimeout(expired, probeTimeout);
      timer.unref();
      finish = (ok) => {
        clearTimeout(timer);
        if (this.probeWaiting?.n === n) this.probeWaiting = undefined;
        resolve(ok);
      };
    });
    this.probeWaiting = { n, done: finish, result };
    driver
      .publish(this.ownChannel, encodeControl({ type: 'probe', instance: this.self, n }))
      .catch(() => finish(false));
    return result;
  }

  /** Frames received plus publishes answered: it moves while the link works. */
  private progress(): number {
    return this.framesSeen + this.publishesAnswered;
  }

  private async probeWhileUp(): Promise<void> {
    if (!this.ready || this.verifying || this.probeWaiting) return;
    if (await this.probe(true)) return;
    if (!this.ready) return;
    this.markDown(new Error('a probe of the subscriber connection did not come back'));
    await this.driver!.recycle();
  }

  private hello(): void {
    if (this.driver?.publisherReady) this.send(this.names.control, this.helloMessage());
  }

  private helloMessage(): ControlMessage {
    return { type: 'hello', instance: this.self, interval: this.tuning.heartbeatInterval };
  }

  private send(channel: string, message: ControlMessage): void {
    this.driver?.publish(channel, encodeControl(message)).catch(() => {
      // Presence and answers are best effort; their absence is what the others observe.
    });
  }

  private every(interval: number, task: () => void): void {
    if (interval <= 0) return;
    const timer = setInterval(task, interval);
    timer.unref();
    this.timers.push(timer);
  }

  private publishFailed(error: unknown): never {
    this.counters.publishFailures++;
    throw error;
  }

  private readonly subscribeFailed = (error: unknown): void => {
    // The connection dropped under it: the next verification subscribes it again.
    this.markDown(error);
  };

  private refused(error: unknown): void {
    this.counters.incompatible++;
    const now = Date.now();
    if (now - this.refusedLoggedAt < REFUSAL_LOG_INTERVAL) return;
    this.refusedLoggedAt = now;
    const detail = error instanceof PacketFormatError ? error.message : describe(error);
    this.logger.error(
      `Refused a frame on the broadcast channels (${this.counters.incompatible} so far): ${detail}. ` +
        'Every instance sharing this keyPrefix must run a compatible release.',
    );
  }

  private safely<T>(task: () => T): T | undefined {
    try {
      return task();
    } catch (error) {
      this.logger.error(`Delivering a broadcast from another instance failed: ${describe(error)}`);
      return undefined;
    }
  }
}

/** Settles with the promise, or after `ms` (rejecting if `reject`, else resolving `undefined`). */
function withDeadline<T>(promise: Promise<T>, ms: number, reject = false): Promise<T | undefined> {
  return new Promise((resolve, fail) => {
    const timer = setTimeout(
      () => (reject ? fail(new Error(`no answer from Redis within ${ms} ms`)) : resolve(undefined)),
      ms,
    );
    timer.unref();
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        if (reject) fail(error);
        else resolve(undefined);
      },
    );
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

function describe(error: unknown): string {
  if (error instanceof Error) return error.message || error.name;
  return String(error);
}
