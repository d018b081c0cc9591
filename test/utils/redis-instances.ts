import { ChannelNames } from '../../lib/redis/channel-names.js';
import type { BroadcastCount, MembershipKind } from '../../lib/index.js';
import type { ConnectionInfo, InstanceStats, WireTarget } from '../fixtures/redis-instance.js';
import { startChildApp, type ChildApp } from './child-app.js';
import { pubsubNumsub, shardNumsub, type RedisCluster, type RedisServer } from './redis-server.js';
import { delay, TestClient } from './ws-client.js';

/** The fixture every instance runs. */
export const REDIS_INSTANCE_FIXTURE = 'test/fixtures/redis-instance.ts';

/** Where the instances meet: one standalone server, or a cluster (sharded pub/sub). */
export type RedisTopology = { server: RedisServer } | { cluster: RedisCluster };

/** The client the fixture builds its transport on, with a standalone server. */
export type RedisDriver = 'node-redis' | 'ioredis';

/** Options of {@link startInstance} and {@link startInstances}. */
export interface InstanceOptions {
  /** Which Redis the instances use; none: the in-memory transport (each one alone). */
  redis?: RedisTopology;
  /**
   * `REDIS_DRIVER` of the fixture, with a standalone server: `node-redis` (the transport's own
   * `{ url }` connections) or `ioredis` (`{ ioredis }`, the app's client). Unless told, the
   * test runner's own `REDIS_DRIVER`, so `REDIS_DRIVER=ioredis jest test/e2e/redis-faults.spec.ts`
   * runs a whole spec on ioredis; node-redis when neither says. A cluster: always node-redis.
   */
  driver?: RedisDriver;
  /** `KEY_PREFIX` (default `ws-e2e`). */
  keyPrefix?: string;
  /** `LINGER`, `HEARTBEAT_INTERVAL`, `PROBE_INTERVAL`, `PROBE_TIMEOUT` in ms, when given. */
  linger?: number;
  heartbeatInterval?: number;
  probeInterval?: number;
  probeTimeout?: number;
  /** More environment for the child. */
  env?: Record<string, string>;
}

/** A client of one instance, with everything it received, in order. */
export interface Peer {
  readonly name: string;
  /** Its connection id (`<instanceId>.<random>`), as the instance reported it. */
  readonly id: string;
  readonly instance: Instance;
  readonly client: TestClient;
  /** Every message it received, text as is, binary as `bin:<hex>`. */
  readonly seen: string[];
  /** Resolves with the close code and reason the server sent. */
  readonly closed: Promise<{ code: number; reason: string }>;
}

/** One app instance in its own process, running test/fixtures/redis-instance.ts. */
export class Instance {
  readonly peers: Peer[] = [];

  constructor(
    readonly app: ChildApp,
    readonly instanceId: string,
  ) {}

  /** Sends to `target` from this instance; resolves with its local deliveries. */
  broadcast(target: WireTarget | undefined, message: unknown, volatile?: boolean): Promise<number> {
    return this.app.request('broadcast', { target, message, volatile });
  }

  /** Sends these bytes (as a binary message) to `target`; resolves with local deliveries. */
  broadcastBinary(target: WireTarget | undefined, bytes: Buffer): Promise<number> {
    return this.app.request('broadcast', { target, hex: bytes.toString('hex') });
  }

  /** Sends each message to its own target, in this order, in one event-loop turn. */
  broadcastSeries(steps: { target?: WireTarget; message: string }[]): Promise<number> {
    return this.app.request('broadcastSeries', { steps });
  }

  /** Sends `${prefix}1` .. `${prefix}${count}` to `target` in one event-loop turn. */
  broadcastMany(target: WireTarget | undefined, count: number, prefix = ''): Promise<number> {
    return this.app.request('broadcastMany', { target, count, prefix });
  }

  /** Starts sending `${prefix}1`, `${prefix}2`, ... to `target` every `every` ms. */
  startLoop(target: WireTarget | undefined, every: number, prefix = ''): Promise<string> {
    return this.app.request('startLoop', { target, every, prefix });
  }

  /** Stops the loop; resolves with how many it sent. */
  stopLoop(): Promise<number> {
    return this.app.request('stopLoop');
  }

  join(target: WireTarget | undefined, ...rooms: string[]): Promise<number> {
    return this.app.request('join', { target, rooms });
  }

  leave(target: WireTarget | undefined, ...rooms: string[]): Promise<number> {
    return this.app.request('leave', { target, rooms });
  }

  disconnect(target: WireTarget | undefined, code?: number, reason?: string): Promise<number> {
    return this.app.request('disconnect', { target, code, reason });
  }

  count(target: WireTarget | undefined, timeout?: number): Promise<BroadcastCount> {
    return this.app.request('count', { target, timeout }, (timeout ?? 1000) + 5000);
  }

  stats(): Promise<InstanceStats> {
    return this.app.request('stats');
  }

  ids(): Promise<ConnectionInfo[]> {
    return this.app.request('ids');
  }

  /**
   * Opens `path?name=<name>[&user=<user>]` and resolves once this instance lists the
   * connection (its `@OnOpen` ran: a room route has joined its room).
   */
  async connect(path: string, name: string, user?: string): Promise<Peer> {
    const query = new URLSearchParams({ name, ...(user ? { user } : {}) });
    const client = await TestClient.open(this.app.url(`${path}?${query}`));
    const seen: string[] = [];
    client.socket.on('message', (data: Buffer, isBinary: boolean) =>
      seen.push(isBinary ? `bin:${data.toString('hex')}` : data.toString()),
    );
    const info = await waitFor(
      async () => (await this.ids()).find((conn) => conn.name === name),
      3000,
      `${name} listed by instance ${this.instanceId}`,
    );
    const peer: Peer = { name, id: info.id, instance: this, client, seen, closed: client.closed };
    this.peers.push(peer);
    return peer;
  }

  /** Closes this instance's clients (those still open). */
  async closePeers(): Promise<void> {
    await Promise.all(
      this.peers.map((peer) =>
        peer.client.socket.readyState === peer.client.socket.CLOSED
          ? undefined
          : within(peer.client.close(), 1000, `${peer.name} to close`).catch(() => undefined),
      ),
    );
  }
}

/** Starts one instance. */
export async function startInstance(options: InstanceOptions = {}): Promise<Instance> {
  const app = await startChildApp(REDIS_INSTANCE_FIXTURE, { env: instanceEnv(options) });
  try {
    const instanceId = await app.request<string>('instanceId');
    return new Instance(app, instanceId);
  } catch (error) {
    await app.stop();
    throw error;
  }
}

/** Starts `count` instances at once. If one fails to start, stops the others and rejects. */
export async function startInstances(
  count: number,
  options: InstanceOptions = {},
): Promise<Instance[]> {
  const results = await Promise.allSettled(
    Array.from({ length: count }, () => startInstance(options)),
  );
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await stopInstances(results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : [])));
    throw failed.reason;
  }
  return results.map((r) => (r as PromiseFulfilledResult<Instance>).value);
}

/** Closes the instances' clients and stops the processes (SIGTERM, then SIGKILL). */
export async function stopInstances(instances: (Instance | undefined)[]): Promise<void> {
  await Promise.all(
    instances.map(async (instance) => {
      if (!instance) return;
      if (instance.app.alive()) await instance.closePeers();
      await instance.app.stop();
    }),
  );
}

function instanceEnv(options: InstanceOptions): Record<string, string> {
  const env: Record<string, string> = { KEY_PREFIX: options.keyPrefix ?? 'ws-e2e' };
  // Not the parent's: a test runner started with REDIS_URL set must not leak it in.
  env.REDIS_URL = '';
  env.REDIS_CLUSTER = '';
  env.REDIS_DRIVER = '';
  if (options.redis && 'server' in options.redis) {
    env.REDIS_URL = options.redis.server.url;
    env.REDIS_DRIVER = options.driver ?? process.env.REDIS_DRIVER ?? '';
  }
  if (options.redis && 'cluster' in options.redis)
    env.REDIS_CLUSTER = JSON.stringify(options.redis.cluster.rootNodes.map((node) => node.url));
  if (options.linger !== undefined) env.LINGER = String(options.linger);
  if (options.heartbeatInterval !== undefined)
    env.HEARTBEAT_INTERVAL = String(options.heartbeatInterval);
  if (options.probeInterval !== undefined) env.PROBE_INTERVAL = String(options.probeInterval);
  if (options.probeTimeout !== undefined) env.PROBE_TIMEOUT = String(options.probeTimeout);
  return { ...env, ...options.env };
}

/**
 * Runs `body` and fails with the crashed child's stderr if any of the instances dies
 * meanwhile (see `ChildApp.whileAlive`).
 */
export function whileAllAlive<T>(instances: Instance[], body: () => Promise<T>): Promise<T> {
  return instances.reduce<() => Promise<T>>(
    (inner, instance) => () => instance.app.whileAlive(inner),
    body,
  )();
}

/** The channel names of a key prefix (lib/redis/channel-names.ts). */
export function channels(keyPrefix = 'ws-e2e'): ChannelNames {
  return new ChannelNames(keyPrefix);
}

/** A member channel's name, for subscriber counts. */
export function memberChannel(kind: MembershipKind, name: string, keyPrefix = 'ws-e2e'): string {
  return channels(keyPrefix).member(kind, name);
}

/**
 * Subscriber counts of `names`: `PUBSUB NUMSUB` on a standalone server, `PUBSUB SHARDNUMSUB`
 * summed over the nodes of a cluster (the transport uses sharded pub/sub there).
 */
export function numsub(redis: RedisTopology, names: string[]): Promise<Record<string, number>> {
  return 'server' in redis ? pubsubNumsub(redis.server, names) : shardNumsub(redis.cluster, names);
}

/** Waits until every channel of `expected` has exactly that many subscribers. */
export async function waitForSubscribers(
  redis: RedisTopology,
  expected: Record<string, number>,
  timeout = 5000,
): Promise<void> {
  const names = Object.keys(expected);
  let last: Record<string, number> = {};
  try {
    await waitFor(
      async () => {
        last = await numsub(redis, names);
        return names.every((name) => last[name] === expected[name]) || undefined;
      },
      timeout,
      'subscriber counts',
    );
  } catch (error) {
    const diff = names
      .filter((name) => last[name] !== expected[name])
      .map((name) => `${name}: ${last[name]} (expected ${expected[name]})`);
    (error as Error).message += `\n${diff.join('\n')}`;
    throw error;
  }
}

/**
 * Polls `probe` every 20 ms until it resolves with something other than `undefined`
 * (`false` counts as not yet), and resolves with that; rejects after `timeout` ms.
 */
export async function waitFor<T>(
  probe: () => Promise<T | undefined | false> | T | undefined | false,
  timeout: number,
  what: string,
): Promise<T> {
  const deadline = Date.now() + timeout;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const cause = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`waited ${timeout} ms for ${what}${cause}`);
    }
    await delay(20);
  }
}

/** Settles like `promise`, or rejects after `ms` (the timer is cleared either way). */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`waited ${ms} ms for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** `1..n` as strings with a prefix: what a client should have received, in order. */
export function numbered(count: number, prefix = ''): string[] {
  return Array.from({ length: count }, (_, i) => `${prefix}${i + 1}`);
}

/** The numbers of the `${prefix}<n>` messages among `seen`, in arrival order. */
export function numbersOf(seen: readonly string[], prefix: string): number[] {
  return seen.filter((m) => m.startsWith(prefix)).map((m) => Number(m.slice(prefix.length)));
}

/** Whether the instance's transport is ready (`transport.isReady()`). */
export async function isReady(instance: Instance): Promise<boolean> {
  return (await instance.stats()).ready;
}

/** What each peer of `peers` got of the messages `${prefix}<n>`, in arrival order. */
export function receivedBy(peers: Record<string, Peer>, prefix: string): Record<string, number[]> {
  return Object.fromEntries(
    Object.values(peers).map((peer) => [peer.name, numbersOf(peer.seen, prefix)]),
  );
}

/** What {@link sendNumbered} should give: `1..count` for each receiver, nothing for the rest. */
export function expectedBy(
  peers: Record<string, Peer>,
  receivers: readonly string[],
  count = 20,
): Record<string, number[]> {
  const all = numbered(count).map(Number);
  return Object.fromEntries(
    Object.values(peers).map((peer) => [peer.name, receivers.includes(peer.name) ? all : []]),
  );
}

/** Options of {@link sendNumbered}. */
export interface SendNumberedOptions {
  /** Every client to watch, by name (those not among the receivers must get nothing). */
  peers: Record<string, Peer>;
  /** The names of the clients that should get the messages. */
  receivers: readonly string[];
  /** The messages' prefix (`${prefix}1` ..). */
  prefix: string;
  /** How many (default 20). */
  count?: number;
  /** How long the receivers may take, in ms (default 5000). */
  timeout?: number;
  /** How long to wait after, for a duplicate or a stray delivery, in ms (default 150). */
  settle?: number;
}

/**
 * Sends `count` numbered messages to `target` from `from` in one event-loop turn, waits until
 * every receiver has that many (failing with what everyone got if not), then a little longer,
 * and resolves with the local deliveries `from` reported and what every peer got
 * ({@link receivedBy}): compare it with {@link expectedBy}.
 */
export async function sendNumbered(
  from: Instance,
  target: WireTarget | undefined,
  options: SendNumberedOptions,
): Promise<{ local: number; got: Record<string, number[]> }> {
  const { peers, receivers, prefix, count = 20, timeout = 5000, settle = 150 } = options;
  const local = await from.broadcastMany(target, count, prefix);
  await waitFor(
    () => receivers.every((name) => numbersOf(peers[name].seen, prefix).length >= count),
    timeout,
    `${receivers.join(', ')} to get ${count} messages ${prefix}`,
  ).catch((error: Error) => {
    error.message += `\n${JSON.stringify(receivedBy(peers, prefix))}`;
    throw error;
  });
  await delay(settle);
  return { local, got: receivedBy(peers, prefix) };
}

/**
 * Broadcasts `${prefix}<n>` to everyone from `from` every 100 ms or so until `peer` gets one:
 * the moment delivery between the two instances works again. Resolves with how long it took.
 */
export async function deliveryResumes(
  from: Instance,
  peer: Peer,
  timeout: number,
  prefix: string,
): Promise<number> {
  const started = Date.now();
  let n = 0;
  await waitFor(
    async () => {
      if (numbersOf(peer.seen, prefix).length > 0) return true;
      await from.broadcast(undefined, `${prefix}${++n}`);
      await delay(80);
      return numbersOf(peer.seen, prefix).length > 0;
    },
    timeout,
    `${peer.name} to get a broadcast from ${from.instanceId}`,
  );
  return Date.now() - started;
}

/** Peers by name, as {@link sendNumbered} and {@link expectedBy} take them. */
export function byName(peers: readonly Peer[]): Record<string, Peer> {
  return Object.fromEntries(peers.map((peer) => [peer.name, peer]));
}

/**
 * What {@link sendNumbered} from `from` should resolve with: `local` counts the messages to
 * the receivers on `from` itself, `got` is {@link expectedBy}.
 */
export function expectedSend(
  from: Instance,
  peers: Record<string, Peer>,
  receivers: readonly string[],
  count = 20,
): { local: number; got: Record<string, number[]> } {
  const local = receivers.filter((name) => peers[name].instance === from).length;
  return { local: count * local, got: expectedBy(peers, receivers, count) };
}

/**
 * Sends `${prefix}1` .. `${prefix}${count}` from `from` in one event-loop turn, message n to
 * `targets[(n - 1) % targets.length]`, waits until `peer` (in every target) has them all, then
 * 150 ms longer. See {@link sentTo} for what each client of some of the targets should get.
 */
export async function sendSeries(
  from: Instance,
  targets: readonly WireTarget[],
  options: { peer: Peer; prefix: string; count: number },
): Promise<void> {
  const { peer, prefix, count } = options;
  const steps = numbered(count, prefix).map((message, i) => ({
    target: targets[i % targets.length],
    message,
  }));
  await from.broadcastSeries(steps);
  await receivedAll([peer], prefix, count);
}

/**
 * Waits until each of `receivers` has `count` messages `${prefix}<n>` (5 s at most), then
 * `settle` ms longer: a duplicate or a stray delivery would have arrived by then.
 */
export async function receivedAll(
  receivers: readonly Peer[],
  prefix: string,
  count = 20,
  settle = 150,
): Promise<void> {
  await waitFor(
    () => receivers.every((peer) => numbersOf(peer.seen, prefix).length >= count),
    5000,
    `${receivers.map((peer) => peer.name).join(', ')} to get ${count} messages ${prefix}`,
  );
  await delay(settle);
}

/** The numbers of {@link sendSeries} (`count` over `period` targets) sent to the targets `kinds`. */
export function sentTo(count: number, period: number, ...kinds: number[]): number[] {
  return numbered(count)
    .map(Number)
    .filter((n) => kinds.includes((n - 1) % period));
}

/** Waits until every one of `instances` is ready (`ready` true) or every one is down. */
export async function waitForReadiness(
  instances: Instance[],
  ready: boolean,
  timeout: number,
  what: string,
): Promise<void> {
  await waitFor(
    async () => (await Promise.all(instances.map(isReady))).every((r) => r === ready),
    timeout,
    what,
  );
}

/** Waits until each of `instances` counts `expected` instances (asking with `countTimeout`). */
export async function waitForInstanceCount(
  instances: Instance[],
  expected: number,
  countTimeout = 500,
): Promise<void> {
  await Promise.all(
    instances.map((instance) =>
      waitFor(
        async () => (await instance.count(undefined, countTimeout)).instances === expected,
        5000,
        `instance ${instance.instanceId} to count ${expected} instances`,
      ),
    ),
  );
}

/** Options of {@link deliveryCheck}. */
export interface DeliveryCheckOptions {
  /** The messages' prefix before their sequence number (`${prefix}<seq>:<n>`). */
  prefix: string;
  /** Whether to check that `from` reports its own receivers' deliveries (default true). */
  local?: boolean;
}

/**
 * An `expectDelivery(from, target, receivers)` for the clients `peers` of `instances()`: it
 * sends 20 numbered messages to `target` from `from` in one event-loop turn (while every
 * instance stays alive) and expects exactly `receivers` to get them, each once, in order;
 * unless `local: false`, also that `from` reports its own clients among them.
 */
export function deliveryCheck(
  instances: () => Instance[],
  peers: Record<string, Peer>,
  options: DeliveryCheckOptions,
): (from: Instance, target: WireTarget | undefined, receivers: string[]) => Promise<void> {
  let sequence = 0;
  return async (from, target, receivers) => {
    const prefix = `${options.prefix}${++sequence}:`;
    const sent = await whileAllAlive(instances(), () =>
      sendNumbered(from, target, { peers, receivers, prefix }),
    );
    if (options.local === false) expect(sent.got).toEqual(expectedBy(peers, receivers));
    else expect(sent).toEqual(expectedSend(from, peers, receivers));
  };
}
