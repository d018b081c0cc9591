import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import type { AttackStats } from '../fixtures/redis-attack-instance.js';
import { startChildApp } from '../utils/child-app.js';
import {
  channels,
  Instance,
  stopInstances,
  waitFor,
  whileAllAlive,
  within,
  type Peer,
} from '../utils/redis-instances.js';
import { describeRedis, startRedis, type RedisServer } from '../utils/redis-server.js';
import { delay } from '../utils/ws-client.js';

/*
 * Attacks on the Redis transport (issue 10): a redis-server killed in the middle of a
 * resubscription of thousands of channels, room churn while Redis flaps, a frozen server under
 * a publish loop, hostile room and user names, bursts of 5,000 broadcasts, a graceful
 * shutdown, a fresh instance's count(), a busy event loop under the probe, a linger across a
 * reconnect, a quiet configuration. Real redis-server processes, app instances in child
 * processes (test/fixtures/redis-attack-instance.ts), real ws clients.
 *
 * Four of them (3, 4, 7a, 7b) failed on the transport at 2975411 and were fixed after it; they
 * stay as regression tests. Not covered here: Redis Cluster (redis-cluster.spec.ts), the
 * ioredis driver (redis-ioredis.spec.ts).
 */
const FIXTURE = 'test/fixtures/redis-attack-instance.ts';
const PREFIX = 'ws-attack';
const names = channels(PREFIX);

/** The tuning every instance gets unless told: quick linger, probes and reconnects. */
const TUNING: Record<string, string> = {
  LINGER: '50',
  PROBE_INTERVAL: '500',
  PROBE_TIMEOUT: '1000',
  // The bursts (up to 80 MB in one turn) test Redis's output buffers, not this cap.
  MAX_PUBLISH_BACKLOG: String(128 * 1024 * 1024),
  MAX_RECONNECT_DELAY: '300',
};

async function boot(server: RedisServer, env: Record<string, string> = {}): Promise<Instance> {
  const app = await startChildApp(FIXTURE, {
    env: { REDIS_URL: server.url, REDIS_CLUSTER: '', KEY_PREFIX: PREFIX, ...TUNING, ...env },
  });
  try {
    return new Instance(app, await app.request<string>('instanceId'));
  } catch (error) {
    await app.stop();
    throw error;
  }
}

const statsOf = (instance: Instance) => instance.app.request<AttackStats>('stats');
const isReady = async (instance: Instance) => (await statsOf(instance)).ready;
const allReady = async (instances: Instance[]) =>
  (await Promise.all(instances.map(isReady))).every(Boolean);

/** Subscriber counts of `list`, in its order (names that are not valid UTF-16 included). */
async function subscribers(server: RedisServer, list: string[]): Promise<number[]> {
  const counts: number[] = [];
  for (let i = 0; i < list.length; i += 500) {
    const reply = await server.command('PUBSUB', 'NUMSUB', ...list.slice(i, i + 500));
    if (!Array.isArray(reply)) throw new Error(`NUMSUB answered ${String(reply)}`);
    for (let k = 1; k < reply.length; k += 2) counts.push(Number(reply[k]));
  }
  return counts;
}

function roomChannels(rooms: string[]): string[] {
  return rooms.map((room) => names.member('room', room));
}

/** What a peer saw, as a multiset of the messages starting with `prefix`. */
function withPrefix(peer: Peer, prefix: string): string[] {
  return peer.seen.filter((m) => m.startsWith(prefix)).sort();
}

function range(prefix: string, from: number, to: number): string[] {
  return Array.from({ length: to - from }, (_, i) => `${prefix}${from + i}`);
}

/** The numbers n of the messages `${prefix}n[|padding]` a peer got, in arrival order. */
function sequence(peer: Peer, prefix: string): number[] {
  return peer.seen.filter((m) => m.startsWith(prefix)).map((m) => parseInt(m.slice(prefix.length)));
}

/** A client of /sink that counts `${prefix}n|...` messages and checks their order. */
interface Sink {
  instance: Instance;
  id: string;
  socket: WebSocket;
  count: number;
  last: number;
  inOrder: boolean;
  watch(prefix: string): void;
}

async function openSink(instance: Instance, name: string): Promise<Sink> {
  const socket = new WebSocket(instance.app.url(`/sink?name=${name}`));
  await new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });
  const info = await waitFor(
    async () => (await instance.ids()).find((conn) => conn.name === name),
    3000,
    `${name} listed`,
  );
  let prefix = '\0';
  const sink: Sink = {
    instance,
    id: info.id,
    socket,
    count: 0,
    last: 0,
    inOrder: true,
    watch(next) {
      prefix = next;
      sink.count = 0;
      sink.last = 0;
      sink.inOrder = true;
    },
  };
  socket.on('message', (data: Buffer) => {
    const head = data.subarray(0, 64).toString();
    if (!head.startsWith(prefix)) return;
    const n = parseInt(head.slice(prefix.length));
    if (n !== sink.last + 1) sink.inOrder = false;
    sink.last = n;
    sink.count++;
  });
  socket.on('error', () => undefined);
  return sink;
}

/** Closes these clients (not the instance's other ones), and forgets them. */
async function closePeers(...peers: Peer[]): Promise<void> {
  await Promise.all(
    peers.map(async (peer) => {
      const list = peer.instance.peers;
      if (list.includes(peer)) list.splice(list.indexOf(peer), 1);
      if (peer.client.socket.readyState === peer.client.socket.CLOSED) return;
      await within(peer.client.close(), 1000, `${peer.name} to close`).catch(() =>
        peer.client.socket.terminate(),
      );
    }),
  );
}

/** A received sequence in short. */
function summary(peer: string, pad: number, got: number[]) {
  return {
    peer,
    pad,
    count: got.length,
    gaps: gapsOf(got).slice(0, 5),
    first: got[0],
    last: got.at(-1),
  };
}

/** Where a strictly increasing run of numbers skips some: `[after, before]` pairs. */
function gapsOf(numbers: number[]): [number, number][] {
  const gaps: [number, number][] = [];
  for (let i = 1; i < numbers.length; i++)
    if (numbers[i] !== numbers[i - 1] + 1) gaps.push([numbers[i - 1], numbers[i]]);
  return gaps;
}

function same(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}

/** The channels whose count differs, with both counts (the first 10). */
function mismatches(rooms: string[], got: number[], expected: number[]) {
  return rooms
    .map((room, i) => ({ room, got: got[i], expected: expected[i] }))
    .filter((entry) => entry.got !== entry.expected)
    .slice(0, 10);
}

/** What `got` lacks and has too many of, compared with `want` (multisets, first 10 each). */
function diff(got: string[], want: string[]): { missing: string[]; extra: string[] } {
  const counts = new Map<string, number>();
  for (const item of want) counts.set(item, (counts.get(item) ?? 0) + 1);
  const extra: string[] = [];
  for (const item of got) {
    const left = counts.get(item) ?? 0;
    if (left > 0) counts.set(item, left - 1);
    else extra.push(item);
  }
  const missing = [...counts].flatMap(([item, n]) => Array<string>(n).fill(item));
  return { missing: missing.slice(0, 10), extra: extra.slice(0, 10) };
}

/** No lone surrogate (`String.prototype.isWellFormed`, ES2024). */
function isWellFormed(text: string): boolean {
  return !/\p{Cs}/u.test(text);
}

/** Heap and off-heap bytes after a full GC in the child. */
async function liveBytes(instance: Instance): Promise<number> {
  const memory = await instance.app.request<NodeJS.MemoryUsage>('gc');
  return memory.heapUsed + memory.external; // external includes arrayBuffers
}

/** Round trip of a message to a local handler and back, in ms. */
async function echoRoundTrip(peer: Peer, tag: string): Promise<number> {
  const started = Date.now();
  const expected = JSON.stringify({ event: 'echo', data: tag });
  peer.client.emit('echo', tag);
  await waitFor(() => peer.seen.includes(expected), 5000, `echo ${tag}`);
  return Date.now() - started;
}

describeRedis('Redis transport under attack', () => {
  let server: RedisServer;
  let quietServer: RedisServer;
  let A: Instance;
  let B: Instance;
  let C: Instance;
  /** heartbeatInterval 0 and probeInterval 0, on a server of its own: watched until the end. */
  let Q: Instance | undefined;
  let D: Instance | undefined;
  let a1: Peer;
  let seq = 0;
  let bootedAt = 0;
  let churnReport: unknown;
  let burstReport: unknown;
  let quietReport: unknown;
  let frozenReport: {
    acceptedWhileDown: number;
    refusedWhileDown: number;
    grownWhileDownMB: number;
    lateDelivered: number;
    sentWhileDown: number;
  };
  const pidFile = join(tmpdir(), `ws-attack-redis-${process.pid}-${Date.now()}.pid`);
  const next = (tag: string) => `${tag}${++seq}:`;

  beforeAll(async () => {
    [server, quietServer] = await Promise.all([
      startRedis({ args: ['--pidfile', pidFile] }),
      startRedis(),
    ]);
    bootedAt = Date.now();
    [A, B, C, Q] = await Promise.all([
      boot(server),
      boot(server),
      boot(server),
      boot(quietServer, { HEARTBEAT_INTERVAL: '0', PROBE_INTERVAL: '0', KEY_PREFIX: 'quiet' }),
    ]);
    await waitFor(() => allReady([A, B, C, Q!]), 10_000, 'every instance ready');
    a1 = await A.connect('/live', 'a1');
    await Q.connect('/live', 'q1');
    await waitFor(
      async () => (await A.count(undefined, 300)).instances === 3,
      6000,
      'A to know B and C',
    );
  }, 30_000);

  // A test that failed midway must not leave the server frozen or dead for the next one.
  afterEach(async () => {
    if (server.alive) process.kill(server.pid, 'SIGCONT');
    else await server.restart();
    for (const instance of everyone())
      if (instance.app.alive()) await instance.app.request('stopLoop').catch(() => undefined);
  });

  afterAll(async () => {
    if (server?.alive) process.kill(server.pid, 'SIGCONT');
    await stopInstances([A, B, C, Q, D]);
    await rm(pidFile, { force: true });
  });

  const everyone = () => [A, B, C];

  it('4. hostile room and user names (lone surrogates included) reach exactly their members on other instances, never a member of the other kind', async () => {
    const hostile = [
      '}',
      '{',
      '\\',
      ':',
      '\\}',
      '}{',
      'a}b',
      '{r:7}',
      '7',
      'r:7',
      'u:7',
      '🎉 party',
      '',
      'x'.repeat(10_240),
      // Not well-formed UTF-16: a lone surrogate, as JSON.parse gives it from '"\ud800x"'.
      '\ud800x',
      '\ufffdx',
    ];
    const users = hostile.filter((name) => name !== ''); // '' is no user (userKeyOf)
    const hostilePeers: Peer[] = [];
    await whileAllAlive(everyone(), async () => {
      try {
        await hostileNames(hostile, users, hostilePeers);
      } finally {
        await closePeers(...hostilePeers);
      }
    });
  });

  it('5. a burst of 5,000 broadcasts in one turn reaches every member on the other instances, all of them, in order', async () => {
    await whileAllAlive(everyone(), async () => {
      const b = await B.connect('/live', 'burst-b');
      const c = await C.connect('/live', 'burst-c');
      try {
        await B.app.request('joinMany', { id: b.id, rooms: ['burst'] });
        await C.app.request('joinMany', { id: c.id, rooms: ['burst'] });
        await waitFor(
          async () => (await subscribers(server, roomChannels(['burst'])))[0] === 2,
          3000,
          'B and C on the burst channel',
        );
        const results: ReturnType<typeof summary>[] = [];
        // 5,000 short messages: every member gets each of them, in order.
        const prefix = next('burst');
        await A.app.request('broadcastMany', {
          target: { rooms: ['burst'] },
          count: 5000,
          prefix,
        });
        await waitFor(
          () => [b, c].every((peer) => sequence(peer, prefix).length >= 5000),
          10_000,
          `5,000 messages ${prefix} on B and C`,
        ).catch(() => undefined);
        await delay(100);
        for (const peer of [b, c]) results.push(summary(peer.name, 0, sequence(peer, prefix)));
        expect(results).toEqual(
          results.map((r) => ({ ...r, count: 5000, gaps: [], first: 1, last: 5000 })),
        );
        // 5,000 of 4 KB, then of 16 KB: 20 and 80 MB through Redis in one turn, to clients
        // that may queue that much (/sink). Redis must not drop a subscriber for its output
        // buffer (client-output-buffer-limit pubsub 32mb 8mb 60 by default).
        const sinks = await Promise.all([openSink(B, 'sink-b'), openSink(C, 'sink-c')]);
        try {
          for (const sink of sinks)
            await sink.instance.app.request('joinMany', { id: sink.id, rooms: ['burst'] });
          const transfers: unknown[] = [];
          const senderOutages: number[] = [];
          // Tried once, not kept: 5,000 of 64 KB (320 MB) overflows that limit; Redis closes
          // both subscribers again and again ("scheduled to be closed ASAP for overcoming of
          // output buffer limits") and they lose part of the burst. Redis's limit, not a defect.
          for (const pad of [4096, 16_384]) {
            const before = await Promise.all([B, C].map(statsOf));
            const senderBefore = await statsOf(A);
            const big = next(`big${pad}-`);
            for (const sink of sinks) sink.watch(big);
            await A.app.request('broadcastMany', {
              target: { rooms: ['burst'] },
              count: 5000,
              prefix: big,
              pad,
            });
            await waitFor(
              () => sinks.every((sink) => sink.count >= 5000),
              20_000,
              `5,000 of ${pad} bytes on the sinks`,
            ).catch(() => undefined);
            const after = await Promise.all([B, C].map(statsOf));
            // Not asserted (see 7a): the sender's own probe waits behind its 80 MB of publishes.
            senderOutages.push((await statsOf(A)).stats.outages - senderBefore.stats.outages);
            transfers.push({
              pad,
              sinks: sinks.map((sink) => ({
                count: sink.count,
                inOrder: sink.inOrder,
                last: sink.last,
              })),
              outages: after.map((s, i) => s.stats.outages - before[i].stats.outages),
            });
          }
          burstReport = { results, transfers, senderOutages };
          expect(transfers).toEqual(
            [4096, 16_384].map((pad) => ({
              pad,
              sinks: sinks.map(() => ({ count: 5000, inOrder: true, last: 5000 })),
              outages: [0, 0],
            })),
          );
        } finally {
          for (const sink of sinks) sink.socket.terminate();
        }
      } finally {
        await closePeers(b, c);
      }
    });
  });

  it('1. redis-server SIGKILLed while an instance resubscribes 3,500 channels: then every room delivers, once, and each channel has exactly its instances', async () => {
    const big = range('big:', 0, 2000);
    const late = range('late:', 0, 2000);
    await whileAllAlive(everyone(), async () => {
      const b = await B.connect('/live', 'many-b');
      const c = await C.connect('/live', 'many-c');
      try {
        await B.app.request('joinMany', { id: b.id, rooms: big });
        await C.app.request('joinMany', { id: c.id, rooms: big.slice(0, 100) });
        const expectedBig = (leftFrom: number) =>
          big.map((_, i) => (i < 100 ? 2 : i < leftFrom ? 1 : 0));
        await waitFor(
          async () => same(await subscribers(server, roomChannels(big)), expectedBig(2000)),
          5000,
          '2,000 rooms subscribed',
        );

        await server.kill('SIGKILL');
        await waitFor(async () => !(await isReady(B)) && !(await isReady(C)), 5000, 'B and C down');
        // While Redis is down: 2,000 new rooms (real SUBSCRIBEs in the resubscription), and
        // 500 left (node-redis would subscribe them again by itself).
        await B.app.request('joinMany', { id: b.id, rooms: late });
        await B.app.request('leaveMany', { id: b.id, rooms: big.slice(1500) });
        await delay(150); // past the linger
        await B.app.request('armKill', { pidFile, minBatch: 1000 });
        await server.restart();
        // B reconnects, node-redis resubscribes, B's own resubscription starts: killed then.
        await waitFor(
          async () => (await statsOf(B)).trap?.fired && !server.alive,
          10_000,
          'the trap',
        );
        const trap = (await statsOf(B)).trap!;
        expect(trap).toEqual({ fired: true, batch: 1000, fromRestore: true });
        await server.restart();
        await waitFor(() => allReady(everyone()), 10_000, 'every instance ready again');

        const expectedLate = late.map(() => 1);
        let last: number[][] = [];
        await waitFor(
          async () => {
            last = [
              await subscribers(server, roomChannels(big)),
              await subscribers(server, roomChannels(late)),
            ];
            return same(last[0], expectedBig(1500)) && same(last[1], expectedLate);
          },
          5000,
          'NUMSUB: exactly the instances with members',
        ).catch(() => undefined);
        expect(mismatches(big, last[0], expectedBig(1500))).toEqual([]);
        expect(mismatches(late, last[1], expectedLate)).toEqual([]);
        expect((await statsOf(B)).stats.subscriptions).toBe(4 + 1500 + 2000);

        // Every room delivers, exactly once.
        const prefix = next('many');
        const all = [...big, ...late];
        await A.app.request('sendEach', { rooms: all, prefix });
        const wantB = [...range(`${prefix}r`, 0, 1500), ...range(`${prefix}r`, 2000, 4000)].sort();
        const wantC = range(`${prefix}r`, 0, 100).sort();
        await waitFor(
          () => withPrefix(b, prefix).length >= wantB.length && withPrefix(c, prefix).length >= 100,
          10_000,
          'one message per room',
        ).catch(() => undefined);
        await delay(300);
        expect(diff(withPrefix(b, prefix), wantB)).toEqual({ missing: [], extra: [] });
        expect(diff(withPrefix(c, prefix), wantC)).toEqual({ missing: [], extra: [] });
      } finally {
        await closePeers(b, c);
      }
    });
  }, 40_000);

  it('2. room churn on two instances while Redis flaps twice: afterwards the server holds exactly the rooms with local members', async () => {
    const pool = range('churn:', 0, 300);
    await whileAllAlive(everyone(), async () => {
      await waitFor(() => allReady(everyone()), 10_000, 'every instance ready');
      const b = await B.connect('/live', 'churn-b');
      const c = await C.connect('/live', 'churn-c');
      const logsFrom = [B.app.logs.length, C.app.logs.length];
      try {
        for (const [instance, peer] of [
          [B, b],
          [C, c],
        ] as const)
          await instance.app.request('startChurn', { id: peer.id, pool, every: 1, moves: 40 });
        await delay(300);
        for (let round = 0; round < 2; round++) {
          await server.kill('SIGKILL');
          await delay(300);
          await server.restart();
          await delay(round === 0 ? 400 : 1200);
        }
        // Churning still: both instances must get ready while their rooms keep changing.
        const readyIn = Date.now();
        await waitFor(() => allReady([B, C]), 8000, 'B and C ready while churning');
        const readyAfter = Date.now() - readyIn;
        const roomsB = new Set(await B.app.request<string[]>('stopChurn', { id: b.id }));
        const roomsC = new Set(await C.app.request<string[]>('stopChurn', { id: c.id }));
        const expected = pool.map((room) => Number(roomsB.has(room)) + Number(roomsC.has(room)));
        let last: number[] = [];
        await waitFor(
          async () => same((last = await subscribers(server, roomChannels(pool))), expected),
          3000,
          'NUMSUB of the churned rooms',
        ).catch(() => undefined);
        expect(mismatches(pool, last, expected)).toEqual([]);
        const [sb, sc] = await Promise.all([B, C].map(statsOf));
        expect([sb.stats.subscriptions, sc.stats.subscriptions]).toEqual([
          4 + roomsB.size,
          4 + roomsC.size,
        ]);
        // And the rooms deliver: one message per room of the pool, to exactly its members.
        const prefix = next('churn');
        await A.app.request('sendEach', { rooms: pool, prefix });
        const want = (rooms: Set<string>) =>
          pool.flatMap((room, i) => (rooms.has(room) ? [`${prefix}r${i}`] : [])).sort();
        await waitFor(
          () =>
            withPrefix(b, prefix).length >= roomsB.size &&
            withPrefix(c, prefix).length >= roomsC.size,
          5000,
          'churned rooms deliver',
        ).catch(() => undefined);
        await delay(200);
        expect(diff(withPrefix(b, prefix), want(roomsB))).toEqual({ missing: [], extra: [] });
        expect(diff(withPrefix(c, prefix), want(roomsC))).toEqual({ missing: [], extra: [] });
        churnReport = {
          readyAfterMs: readyAfter,
          falseRecycles: [B, C].map(
            (instance, i) =>
              instance.app.logs
                .slice(logsFrom[i])
                .filter((line) => line.includes('channels on the server')).length,
          ),
        };
      } finally {
        await closePeers(b, c);
      }
    });
  }, 30_000);

  it('7a. a busy event loop (a 1.5 s CPU-bound task while a probe is in flight) is not taken for a Redis outage, and nothing received is lost', async () => {
    await whileAllAlive(everyone(), async () => {
      await waitFor(() => allReady(everyone()), 10_000, 'every instance ready');
      const b = await B.connect('/live', 'busy-b');
      try {
        await B.app.request('joinMany', { id: b.id, rooms: ['busy'] });
        await waitFor(
          async () => (await subscribers(server, roomChannels(['busy'])))[0] === 1,
          3000,
          'B on the busy channel',
        );
        const prefix = next('busy');
        await A.app.request('startLoop', { target: { rooms: ['busy'] }, prefix, every: 5 });
        await waitFor(() => sequence(b, prefix).length >= 20, 3000, 'b to get 20');
        const before = await statsOf(B);
        await B.app.request('stall', { ms: 1500, whileProbing: true }, 20_000);
        await delay(1500);
        const sent = await A.app.request<number>('stopLoop');
        await waitFor(() => sequence(b, prefix).at(-1) === sent, 5000, 'the last message').catch(
          () => undefined,
        );
        await delay(100);
        const got = sequence(b, prefix);
        const after = await statsOf(B);
        // The Redis connection was healthy all along: B was only busy. Expected: no outage,
        // and every message from the first one b got to the last, in order (none was lost in
        // a socket B threw away).
        expect({
          outages: after.stats.outages - before.stats.outages,
          gaps: gapsOf(got),
          last: got.at(-1),
        }).toEqual({ outages: 0, gaps: [], last: sent });
      } finally {
        await closePeers(b);
      }
    });
  });

  it('3. a frozen redis-server (SIGSTOP) under a publish loop: publishes are refused once the transport is down, memory stays bounded, nothing is delivered late', async () => {
    await whileAllAlive(everyone(), async () => {
      await waitFor(() => allReady(everyone()), 10_000, 'every instance ready');
      const b = await B.connect('/live', 'frozen-b');
      try {
        await B.app.request('joinMany', { id: b.id, rooms: ['frozen'] });
        await waitFor(
          async () => (await subscribers(server, roomChannels(['frozen'])))[0] === 1,
          3000,
          'B on the frozen channel',
        );
        const prefix = next('frozen');
        // 20 messages of 1 KB every 10 ms: about 2 MB/s.
        await A.app.request('startLoop', {
          target: { rooms: ['frozen'] },
          prefix,
          every: 10,
          batch: 20,
          pad: 1000,
        });
        await waitFor(() => sequence(b, prefix).length >= 100, 3000, 'b to get 100');
        await A.app.request('resetLag');
        process.kill(server.pid, 'SIGSTOP');
        let down: AttackStats;
        let end: AttackStats;
        let grown: number;
        let atDown: number;
        const roundTrips: number[] = [];
        try {
          await waitFor(async () => !(await isReady(A)), 5000, 'A to notice the frozen server');
          down = await statsOf(A);
          atDown = await liveBytes(A);
          for (let i = 0; i < 6; i++) {
            await delay(800);
            roundTrips.push(await echoRoundTrip(a1, `${prefix}echo${i}`));
          }
          end = await statsOf(A);
          grown = (await liveBytes(A)) - atDown;
        } finally {
          process.kill(server.pid, 'SIGCONT');
        }
        const sent = await A.app.request<number>('stopLoop');
        await waitFor(() => allReady(everyone()), 15_000, 'every instance ready after SIGCONT');
        await delay(500);
        const lateDelivered = sequence(b, prefix).filter((n) => n > down.loopSent).length;
        // Held: the process is alive (whileAllAlive), its event loop answers at once.
        expect(Math.max(...roundTrips)).toBeLessThan(250);
        expect(end.maxLagMs).toBeLessThan(250);
        frozenReport = {
          acceptedWhileDown: end.stats.published - down.stats.published,
          refusedWhileDown: end.stats.publishFailures - down.stats.publishFailures,
          grownWhileDownMB: Math.round(grown / 1e5) / 10,
          lateDelivered,
          sentWhileDown: sent - down.loopSent,
        };
        // Expected: once A reports down, it refuses publishes (fails fast, counted), holds no
        // growing backlog, and nothing published while down reaches B later ("at most once,
        // never queued"). Actual: see frozenReport in the message.
        expect({
          acceptedWhileDown: frozenReport.acceptedWhileDown,
          grownWhileDownUnder4MB: grown < 4e6,
          lateDelivered,
        }).toEqual({ acceptedWhileDown: 0, grownWhileDownUnder4MB: true, lateDelivered: 0 });
      } finally {
        await closePeers(b);
      }
    });
  }, 40_000);

  it('7b. count() on an instance that just got ready already counts the others', async () => {
    await whileAllAlive(everyone(), async () => {
      await waitFor(() => allReady(everyone()), 10_000, 'every instance ready');
      const b = await B.connect('/live', 'census-b');
      const c = await C.connect('/live', 'census-c');
      try {
        await B.app.request('joinMany', { id: b.id, rooms: ['census'] });
        await C.app.request('joinMany', { id: c.id, rooms: ['census'] });
        D = await boot(server, { HEARTBEAT_INTERVAL: '2000', LINGER: '2000' });
        await waitFor(() => isReady(D!), 10_000, 'D ready');
        const answer = await D.count({ rooms: ['census'] }, 1000);
        // Expected: B's and C's members counted, or B and C named in `missing`.
        expect({
          complete: answer.count === 2 && answer.instances === 4,
          honest: answer.count === 2 || answer.missing.length > 0,
          answer,
        }).toEqual({ complete: true, honest: true, answer });
      } finally {
        await closePeers(b, c);
      }
    });
  });

  it('7d. linger across a reconnect: a room left just before Redis died is not subscribed after it, one rejoined is', async () => {
    const late = D!;
    await whileAllAlive([...everyone(), late], async () => {
      await waitFor(() => allReady([...everyone(), late]), 10_000, 'every instance ready');
      const d1 = await late.connect('/live', 'linger-d1');
      const d2 = await late.connect('/live', 'linger-d2');
      try {
        await late.app.request('joinMany', { id: d1.id, rooms: ['linger:gone'] });
        await late.app.request('joinMany', { id: d2.id, rooms: ['linger:back'] });
        const both = roomChannels(['linger:gone', 'linger:back']);
        await waitFor(
          async () => same(await subscribers(server, both), [1, 1]),
          3000,
          'D on both rooms',
        );
        // Both left; Redis dies within the linger (2 s); one is joined again while it is down.
        await late.app.request('leaveMany', { id: d1.id, rooms: ['linger:gone'] });
        await late.app.request('leaveMany', { id: d2.id, rooms: ['linger:back'] });
        await server.kill('SIGKILL');
        await late.app.request('joinMany', { id: d2.id, rooms: ['linger:back'] });
        await server.restart();
        await waitFor(() => allReady([...everyone(), late]), 10_000, 'every instance ready');
        let last: number[] = [];
        await waitFor(
          async () => same((last = await subscribers(server, both)), [0, 1]),
          3000,
          'linger:gone unsubscribed, linger:back subscribed',
        ).catch(() => undefined);
        expect(last).toEqual([0, 1]);
        const prefix = next('linger');
        await A.app.request('sendEach', { rooms: ['linger:gone', 'linger:back'], prefix });
        await waitFor(() => withPrefix(d2, prefix).length >= 1, 3000, 'd2').catch(() => undefined);
        await delay(100);
        expect([withPrefix(d1, prefix), withPrefix(d2, prefix)]).toEqual([[], [`${prefix}r1`]]);
      } finally {
        await closePeers(d1, d2);
      }
    });
  });

  it('6. SIGTERM on an instance (app.close()): it says goodbye, the others drop it from count() at once, and log no error', async () => {
    await whileAllAlive([A, B], async () => {
      await waitFor(() => allReady([A, B, C]), 10_000, 'every instance ready');
      const c = await C.connect('/live', 'bye-c');
      await C.app.request('joinMany', { id: c.id, rooms: ['bye'] });
      await waitFor(
        async () => (await A.count({ rooms: ['bye'] }, 1000)).count === 1,
        5000,
        'A to count c',
      );
      if (D) {
        await stopInstances([D]);
        D = undefined;
      }
      await waitFor(
        async () => (await A.count(undefined, 300)).missing.length === 0,
        8000,
        'A to forget D',
      );
      const from = [A.app.logs.length, B.app.logs.length];
      process.kill(C.app.pid, 'SIGTERM');
      const exit = await within(C.app.exited, 8000, 'C to exit after SIGTERM');
      expect(exit).toEqual({ code: 0, signal: null });
      const started = Date.now();
      const answer = await A.count(undefined, 1000);
      const took = Date.now() - started;
      expect({ answer, quick: took < 500 }).toEqual({
        answer: { count: 1, instances: 2, missing: [] }, // a1 only
        quick: true,
      });
      expect(
        await subscribers(server, [names.instance(C.instanceId), names.member('room', 'bye')]),
      ).toEqual([0, 0]);
      await delay(500);
      const errors = [A, B].flatMap((instance, i) =>
        instance.app.logs.slice(from[i]).filter((line) => /^\[(error|warn)\]/.test(line)),
      );
      expect(errors).toEqual([]);
      expect(C.app.logs.filter((line) => line.startsWith('[error]'))).toEqual([]);
    });
  });

  // Failed before 2975411 (node-redis pings every 5 s now): with nothing else to read, the
  // 15 s socket timeout ended both healthy connections, an outage and a warning each time.
  it('7c. heartbeatInterval 0 and probeInterval 0 (accepted options): a quiet, healthy connection is never an outage', async () => {
    const quiet = Q!;
    await whileAllAlive([quiet], async () => {
      // The socket timeout is 15 s: wait until Q has been idle longer than that.
      const wait = bootedAt + 20_000 - Date.now();
      if (wait > 0) await delay(wait);
      const stats = await statsOf(quiet);
      quietReport = {
        sinceBoot: Date.now() - bootedAt,
        stats: stats.stats,
        logs: quiet.app.logs.slice(-8),
      };
      expect({
        outages: stats.stats.outages,
        warnings: quiet.app.logs.filter((line) => line.includes('Redis unreachable')),
      }).toEqual({ outages: 0, warnings: [] });
    });
  }, 30_000);

  it('reports what the attacks measured', () => {
    console.log(JSON.stringify({ burstReport, churnReport, frozenReport, quietReport }, null, 2));
  });

  async function hostileNames(hostile: string[], users: string[], opened: Peer[]): Promise<void> {
    {
      // On B and on C: one member of each room, one connection of each user.
      const rooms = new Map<Peer, number>();
      const userOf = new Map<Peer, number>();
      for (const instance of [A, B, C]) {
        const tag = instance === A ? 'a' : instance === B ? 'b' : 'c';
        const roomPeers = await Promise.all(
          hostile.map((_, i) => instance.connect('/live', `${tag}-room-${i}`)),
        );
        const userPeers = await Promise.all(
          users.map((_, i) => instance.connect('/live', `${tag}-user-${i}`)),
        );
        opened.push(...roomPeers, ...userPeers);
        for (const [i, peer] of roomPeers.entries()) {
          await instance.app.request('joinMany', { id: peer.id, rooms: [hostile[i]] });
          rooms.set(peer, i);
        }
        for (const [i, peer] of userPeers.entries()) {
          expect(await instance.app.request('setUser', { id: peer.id, user: users[i] })).toBe(
            users[i],
          );
          userOf.set(peer, i);
        }
      }
      await delay(200); // SUBSCRIBEs on the wire
      const prefix = next('hostile');
      await A.app.request('sendEach', { rooms: hostile, users, prefix });
      const expected = (peer: Peer) =>
        rooms.has(peer) ? [`${prefix}r${rooms.get(peer)}`] : [`${prefix}u${userOf.get(peer)}`];
      const peers = [...rooms.keys(), ...userOf.keys()];
      await waitFor(
        () => peers.every((peer) => withPrefix(peer, prefix).length >= 1),
        3000,
        'every hostile-name peer to get something',
      ).catch(() => undefined);
      await delay(200);
      const misdelivered = (subset: Peer[]) =>
        subset
          .filter(
            (peer) => JSON.stringify(withPrefix(peer, prefix)) !== JSON.stringify(expected(peer)),
          )
          .map((peer) => {
            const name = rooms.has(peer) ? hostile[rooms.get(peer)!] : users[userOf.get(peer)!];
            return {
              peer: peer.name,
              name: JSON.stringify(name).slice(0, 24),
              got: withPrefix(peer, prefix),
              expected: expected(peer),
            };
          });
      const nameOf = (peer: Peer) =>
        rooms.has(peer) ? hostile[rooms.get(peer)!] : users[userOf.get(peer)!];
      // Held: every well-formed name, however hostile, reaches exactly its own members, and
      // on the sending instance (A) every name does.
      const collides = (name: string) => !isWellFormed(name) || name === '\ufffdx';
      const remote = (peer: Peer) => peer.instance !== A;
      expect(
        misdelivered(peers.filter((peer) => !collides(nameOf(peer)) || !remote(peer))),
      ).toEqual([]);

      // Every channel of a well-formed name is its own and has the three instances on it.
      const wellFormed = hostile.filter((name) => !collides(name));
      expect(await subscribers(server, roomChannels(wellFormed))).toEqual(wellFormed.map(() => 3));
      const wellFormedUsers = users.filter((name) => !collides(name));
      expect(
        await subscribers(
          server,
          wellFormedUsers.map((user) => names.member('user', user)),
        ),
      ).toEqual(wellFormedUsers.map(() => 3));
      // count() of a hostile room: one member on each instance.
      for (const room of ['}', '', 'x'.repeat(10_240), '{r:7}'])
        expect(await A.count({ rooms: [room] }, 1000)).toEqual({
          count: 3,
          instances: 3,
          missing: [],
        });

      // Lone surrogates: '\ud800x' written as UTF-8 would be '\ufffdx', in the channel name
      // and in the frame, and reach the members of '\ufffdx' on the other instances. A client
      // gets such a name from JSON.parse of '"\\ud800x"'. Expected: nobody listed.
      expect(misdelivered(peers.filter((peer) => collides(nameOf(peer)) && remote(peer)))).toEqual(
        [],
      );
    }
  }
});
