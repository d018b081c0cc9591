import {
  byName,
  deliveryResumes,
  expectedBy,
  isReady,
  memberChannel,
  numbered,
  numbersOf,
  numsub,
  receivedAll,
  sendNumbered,
  startInstance,
  startInstances,
  stopInstances,
  waitFor,
  waitForInstanceCount,
  waitForReadiness,
  waitForSubscribers,
  whileAllAlive,
  type Instance,
  type Peer,
  type RedisTopology,
} from '../utils/redis-instances.js';
import { describeRedis, startRedis, type RedisServer } from '../utils/redis-server.js';
import { delay } from '../utils/ws-client.js';

/*
 * Issue 10, faults: the redis-server under two app instances is SIGKILLed in the middle of a
 * stream of broadcasts and started again; an instance boots while Redis is down; the server
 * freezes (SIGSTOP). Local delivery never stops, delivery to other instances is at most once
 * and comes back by itself, isReady() says which state the transport is in, and no instance
 * crashes.
 */
describeRedis('Redis faults: the server dies, comes back, freezes', () => {
  const tuning = { linger: 50, heartbeatInterval: 500, probeInterval: 500 };
  let server: RedisServer;
  let redis: RedisTopology;
  let instances: Instance[] = [];
  let late: Instance | undefined;
  let A: Instance;
  let B: Instance;
  let a1: Peer;
  let a2: Peer;
  let b1: Peer;
  let b2: Peer;
  let sequence = 0;

  /** Whether A runs its broadcast loop (stopped after a test that failed midway). */
  let looping = false;

  afterEach(async () => {
    if (looping && A.app.alive()) await A.stopLoop();
    looping = false;
  });

  beforeAll(async () => {
    server = await startRedis();
    redis = { server };
    instances = await startInstances(2, { redis, ...tuning });
    [A, B] = instances;
    a1 = await A.connect('/live', 'a1');
    a2 = await A.connect('/rooms/r', 'a2');
    b1 = await B.connect('/live', 'b1');
    b2 = await B.connect('/rooms/r', 'b2');
    await waitForSubscribers(redis, {
      [memberChannel('route', '/live')]: 2,
      [memberChannel('room', 'r')]: 2,
    });
    await waitForReadiness(instances, true, 5000, 'both ready');
    await waitForInstanceCount(instances, 2, 300);
  }, 30_000);

  afterAll(async () => {
    if (server?.alive) process.kill(server.pid, 'SIGCONT');
    await stopInstances([...instances, late]);
    await server?.stop();
  });

  /** Sends 20 numbered messages from `from` to everyone; each of `receivers` gets 1..20. */
  async function expectEveryoneGets(from: Instance, receivers: Peer[]): Promise<void> {
    const peers = byName(receivers);
    const names = Object.keys(peers);
    const prefix = `e${++sequence}:`;
    const { got } = await sendNumbered(from, undefined, {
      peers,
      receivers: names,
      prefix,
      settle: 100,
    });
    expect(got).toEqual(expectedBy(peers, names));
  }

  const probe = () => `probe${++sequence}:`;

  it('SIGKILL mid-stream: local delivery goes on, the other instance misses some, then gets the rest, never twice', async () => {
    await whileAllAlive(instances, async () => {
      const prefix = 'f:';
      await A.startLoop(undefined, 20, prefix);
      looping = true;
      await waitFor(() => numbersOf(b1.seen, prefix).length >= 10, 3000, 'b1 to get 10');

      await server.kill('SIGKILL');
      const killedAt = numbersOf(a1.seen, prefix).length;
      await waitForReadiness([A, B], false, 3000, 'both down');
      // count() cannot reach B: its own connections only, B named as missing.
      expect(await A.count(undefined, 300)).toEqual({
        count: 2,
        instances: 1,
        missing: [B.instanceId],
      });
      await delay(1000);
      // A's own clients kept getting every message while Redis was gone.
      expect(numbersOf(a1.seen, prefix).length).toBeGreaterThan(killedAt + 20);
      const down = await A.stats();
      expect(down.ready).toBe(false);
      expect(down.stats!.publishFailures).toBeGreaterThan(0);
      expect(down.publishFailures).toBeGreaterThan(0);

      await server.restart();
      const restartedAt = Date.now();
      const onB = numbersOf(b1.seen, prefix).length;
      await waitFor(
        () => numbersOf(b1.seen, prefix).length >= onB + 5,
        10_000,
        'b1 to get messages again after the restart',
      );
      const resumedIn = Date.now() - restartedAt;
      await waitForReadiness([A, B], true, 10_000, 'both ready');
      looping = false;
      const sent = await A.stopLoop();

      await waitFor(
        () =>
          numbersOf(b1.seen, prefix).at(-1) === sent && numbersOf(a1.seen, prefix).length === sent,
        5000,
        `the last message (${sent}) on a1 and b1`,
      );
      await delay(100);
      // A's clients: all of them, in order. B's: some missed, none twice, in order.
      expect(numbersOf(a1.seen, prefix)).toEqual(numbered(sent).map(Number));
      expect(numbersOf(a2.seen, prefix)).toEqual(numbered(sent).map(Number));
      for (const peer of [b1, b2]) {
        const got = numbersOf(peer.seen, prefix);
        expect(got.every((n, i) => i === 0 || n > got[i - 1])).toBe(true);
        expect(got.length).toBeLessThan(sent);
        expect(got.at(-1)).toBe(sent);
      }
      expect(resumedIn).toBeLessThan(10_000);
      const after = await A.stats();
      expect(after.ready).toBe(true);
      expect(after.stats!.outages).toBeGreaterThanOrEqual(1);
      // Steady again: 20 in a row, both ways.
      await expectEveryoneGets(A, [a1, a2, b1, b2]);
      await expectEveryoneGets(B, [a1, a2, b1, b2]);
    });
  });

  it('membership changes while Redis is down: after the reconnect, subscribed from the list of what is needed', async () => {
    await whileAllAlive(instances, async () => {
      await server.kill('SIGKILL');
      await waitForReadiness([A, B], false, 3000, 'both down');
      // B loses its only member of room r, and gets a member of the new room late.
      b2.client.emit('leave', 'r');
      await waitFor(() => b2.seen.includes('{"event":"left","data":"r"}'), 3000, 'b2 to leave r');
      const b3 = await B.connect('/rooms/late', 'b3');
      await delay(200); // past the linger (50 ms)
      await server.restart();
      await waitForReadiness([A, B], true, 10_000, 'both ready');

      await waitForSubscribers(redis, { [memberChannel('room', 'late')]: 1 });
      const before = await B.stats();
      const prefix = `member${++sequence}:`;
      await A.broadcastMany({ rooms: ['late'] }, 20, `${prefix}late:`);
      await A.broadcastMany({ rooms: ['r'] }, 20, `${prefix}r:`);
      await receivedAll([b3], `${prefix}late:`);
      expect(numbersOf(b3.seen, `${prefix}late:`)).toEqual(numbered(20).map(Number));
      expect(numbersOf(a2.seen, `${prefix}r:`)).toEqual(numbered(20).map(Number));
      expect(numbersOf(b2.seen, `${prefix}r:`)).toEqual([]);
      const after = await B.stats();
      // B has no member of r: Redis must not count it as a subscriber of r, nor send it r's
      // packets (20 for late only).
      expect({
        subscribersOfR: (await numsub(redis, [memberChannel('room', 'r')]))[
          memberChannel('room', 'r')
        ],
        receivedByB: after.stats!.received - before.stats!.received,
      }).toEqual({ subscribersOfR: 1, receivedByB: 20 });
      await b3.client.close();
    });
  });

  it('an instance started while Redis is down boots, serves its own clients, and joins once Redis is back', async () => {
    await server.kill('SIGKILL');
    await whileAllAlive(instances, async () => {
      await waitForReadiness([A, B], false, 3000, 'both down');
      late = await startInstance({ redis, ...tuning });
      const C = late;
      await whileAllAlive([C], async () => {
        const c1 = await C.connect('/live', 'c1');
        const c2 = await C.connect('/rooms/r', 'c2');
        expect(await C.broadcast(undefined, 'local only')).toBe(2);
        await waitFor(() => c1.seen.includes('local only'), 3000, 'c1 to get its local broadcast');
        expect(c2.seen).toEqual(['local only']);
        const stats = await C.stats();
        expect(stats.ready).toBe(false);
        expect(stats.publishFailures).toBe(1);

        await server.restart();
        await waitFor(() => isReady(C), 10_000, 'the late instance to be ready');
        await waitForReadiness([A, B], true, 10_000, 'A and B ready');
        await deliveryResumes(A, c1, 10_000, probe());
        await deliveryResumes(C, b1, 10_000, probe());
        await waitFor(
          async () => (await C.count(undefined, 300)).instances === 3,
          5000,
          'C to know A and B',
        );
        await expectEveryoneGets(A, [a1, b1, c1, c2]);
        await expectEveryoneGets(C, [a1, a2, b1, b2, c1]);
        expect(await B.count({ route: 'LiveRoute' })).toEqual({
          count: 3,
          instances: 3,
          missing: [],
        });
      });
    });
  });

  it('a stall shorter than probeTimeout is not an outage (probeInterval 500 ms, probeTimeout 2000 ms)', async () => {
    const watched = late ? [...instances, late] : instances;
    await whileAllAlive(watched, async () => {
      const before = await Promise.all(watched.map((i) => i.stats()));
      expect(before.map((s) => s.ready)).toEqual(watched.map(() => true));
      // Frozen for 1 s: every probe sent meanwhile comes back within 2 s of being sent.
      process.kill(server.pid, 'SIGSTOP');
      const readiness: boolean[] = [];
      try {
        const until = Date.now() + 1000;
        while (Date.now() < until) {
          readiness.push(await isReady(A));
          await delay(50);
        }
      } finally {
        process.kill(server.pid, 'SIGCONT');
      }
      await delay(2500); // every probe of the stall has come back or timed out by now
      const after = await Promise.all(watched.map((i) => i.stats()));
      expect({
        readyDuringStall: readiness.every(Boolean),
        outages: after.map((s, i) => s.stats!.outages - before[i].stats!.outages),
      }).toEqual({ readyDuringStall: true, outages: watched.map(() => 0) });
    });
  });

  it('a frozen server (SIGSTOP): the probe notices, and the transport recovers after SIGCONT', async () => {
    await whileAllAlive(late ? [...instances, late] : instances, async () => {
      await waitForReadiness([A, B], true, 10_000, 'both ready');
      process.kill(server.pid, 'SIGSTOP');
      try {
        // No socket error: only the probe (every 500 ms, 2 s to answer) can tell.
        await waitFor(async () => !(await isReady(A)), 6000, 'A to notice the frozen server');
        expect(await A.broadcast(undefined, 'while frozen')).toBe(2);
        await waitFor(() => a1.seen.includes('while frozen'), 3000, 'local delivery');
      } finally {
        process.kill(server.pid, 'SIGCONT');
      }
      await waitForReadiness([A, B], true, 15_000, 'both ready again');
      await deliveryResumes(A, b1, 10_000, probe());
      await expectEveryoneGets(B, [a1, a2, b1, b2]);
    });
  });
});
