import {
  deliveryCheck,
  deliveryResumes,
  expectedBy,
  isReady,
  memberChannel,
  numbered,
  numbersOf,
  numsub,
  receivedAll,
  receivedBy,
  sendNumbered,
  sendSeries,
  sentTo,
  startInstance,
  stopInstances,
  waitFor,
  waitForInstanceCount,
  waitForReadiness,
  waitForSubscribers,
  whileAllAlive,
  within,
  type Instance,
  type Peer,
  type RedisDriver,
  type RedisTopology,
} from '../utils/redis-instances.js';
import { describeRedis, startRedis, type RedisServer } from '../utils/redis-server.js';
import type { WireTarget } from '../fixtures/redis-instance.js';
import { delay } from '../utils/ws-client.js';

/*
 * Issue 10, the Redis transport over an application's ioredis client
 * (`new RedisBroadcastTransport({ ioredis: new Redis(url, { lazyConnect: true }) })`), tested
 * like node-redis: three instances in their own processes on one real redis-server, all on
 * ioredis, then two on ioredis and one on node-redis (the same wire format both ways). Each
 * runs a compact scale-out matrix (every kind of target, once each and in order; remote
 * join/leave/disconnect; count()), then the faults: redis-server SIGKILLed mid-stream, a room
 * left while Redis is down, an instance booted while Redis is down.
 */
const TOPOLOGIES: { name: string; drivers: [RedisDriver, RedisDriver, RedisDriver] }[] = [
  { name: 'three instances on ioredis', drivers: ['ioredis', 'ioredis', 'ioredis'] },
  {
    name: 'two instances on ioredis, one on node-redis',
    drivers: ['ioredis', 'ioredis', 'node-redis'],
  },
];

describe.each(TOPOLOGIES)('Redis over ioredis: $name', ({ drivers }) => {
  describeRedis('one redis-server', () => {
    const tuning = { linger: 50, heartbeatInterval: 500, probeInterval: 500 };
    let server: RedisServer;
    let redis: RedisTopology;
    let instances: Instance[] = [];
    let late: Instance | undefined;
    let A: Instance;
    let B: Instance;
    let C: Instance;
    /** The clients of the matrix, by name. */
    const peers: Record<string, Peer> = {};
    let sequence = 0;
    /** Whether A runs its broadcast loop (stopped after a test that failed midway). */
    let looping = false;

    beforeAll(async () => {
      server = await startRedis();
      redis = { server };
      instances = await Promise.all(
        drivers.map((driver) => startInstance({ redis, driver, ...tuning })),
      );
      [A, B, C] = instances;
      // Three clients per instance. alice has tabs on A and B, bob on A and C; b3 is in green
      // (its route) and blue (joined by a message): two rooms at once.
      const plan: [Instance, string, string, string?][] = [
        [A, 'a1', '/live', 'alice'],
        [A, 'a2', '/rooms/red', 'bob'],
        [A, 'a3', '/rooms/blue'],
        [B, 'b1', '/live', 'alice'],
        [B, 'b2', '/rooms/red'],
        [B, 'b3', '/rooms/green'],
        [C, 'c1', '/live'],
        [C, 'c2', '/rooms/blue', 'bob'],
        [C, 'c3', '/other', 'dave'],
      ];
      await Promise.all(
        plan.map(async ([instance, name, path, user]) => {
          peers[name] = await instance.connect(path, name, user);
        }),
      );
      peers.b3.client.emit('join', 'blue');
      await waitFor(
        () => peers.b3.seen.includes('{"event":"joined","data":"blue"}'),
        3000,
        'b3 joined',
      );
      await waitForSubscribers(redis, {
        [memberChannel('route', '/live')]: 3,
        [memberChannel('route', '/rooms/:room')]: 3,
        [memberChannel('route', '/other')]: 1,
        [memberChannel('room', 'red')]: 2,
        [memberChannel('room', 'blue')]: 3,
        [memberChannel('room', 'green')]: 1,
        [memberChannel('user', 'alice')]: 2,
        [memberChannel('user', 'bob')]: 2,
        [memberChannel('user', 'dave')]: 1,
      });
      await waitForInstanceCount(instances, 3, 300);
    }, 30_000);

    afterEach(async () => {
      if (looping && A.app.alive()) await A.stopLoop();
      looping = false;
    });

    afterAll(async () => {
      await stopInstances([...instances, late]);
      await server?.stop();
    });

    const expectDelivery = deliveryCheck(() => instances, peers, { prefix: 'm' });

    it('each instance runs on the client it was given', async () => {
      const stats = await Promise.all(instances.map((instance) => instance.stats()));
      expect(stats.map((s) => s.driver)).toEqual(drivers);
      expect(stats.map((s) => s.ioredisStatus)).toEqual(
        drivers.map((d) => (d === 'ioredis' ? 'ready' : undefined)),
      );
      expect(stats.map((s) => s.ready)).toEqual([true, true, true]);
    });

    it('everyone: the nine clients on the three instances', async () => {
      await expectDelivery(A, undefined, Object.keys(peers));
      await expectDelivery(C, undefined, Object.keys(peers));
    });

    it('a route, by its class and by its pattern', async () => {
      await expectDelivery(B, { route: 'LiveRoute' }, ['a1', 'b1', 'c1']);
      await expectDelivery(C, { route: '/rooms/:room' }, ['a2', 'a3', 'b2', 'b3', 'c2']);
    });

    it('rooms: one sent from an instance without members; two at once, a member of both gets each message once', async () => {
      await expectDelivery(C, { rooms: ['red'] }, ['a2', 'b2']);
      await expectDelivery(A, { rooms: ['blue', 'green'] }, ['a3', 'b3', 'c2']);
    });

    it('except connections of two other instances', async () => {
      const except = [peers.a1.id, peers.b2.id];
      const receivers = Object.keys(peers).filter((name) => name !== 'a1' && name !== 'b2');
      await expectDelivery(C, { except }, receivers);
    });

    it('connections by id, on other instances', async () => {
      await expectDelivery(A, { connections: [peers.c3.id, peers.b1.id] }, ['b1', 'c3']);
    });

    it('a user with tabs on two instances, sent from the third', async () => {
      await expectDelivery(C, { users: ['alice'] }, ['a1', 'b1']);
    });

    it('20 numbered messages to different targets keep their order for a client in all of them', async () => {
      // a2 (on A) is in red, is bob, is on /rooms/:room and has an id; sent from C.
      const targets: WireTarget[] = [
        { rooms: ['red'] },
        { users: ['bob'] },
        { route: '/rooms/:room' },
        { connections: [peers.a2.id] },
      ];
      const prefix = `series${++sequence}:`;
      await whileAllAlive(instances, () =>
        sendSeries(C, targets, { peer: peers.a2, prefix, count: 20 }),
      );
      const to = (...kinds: number[]) => sentTo(20, 4, ...kinds);
      expect(receivedBy(peers, prefix)).toEqual({
        ...expectedBy(peers, []),
        a2: to(0, 1, 2, 3),
        b2: to(0, 2), // red, route
        a3: to(2),
        b3: to(2),
        c2: to(1, 2), // bob, route
      });
    });

    it('remote join, leave and disconnect act on connections of other instances', async () => {
      await whileAllAlive(instances, async () => {
        // dave (c3, on C) joins purple from A; a3 (on A) joins it by id from C.
        expect(await A.join({ users: ['dave'] }, 'purple')).toBe(0);
        expect(await C.join({ connections: [peers.a3.id] }, 'purple')).toBe(0);
        const purple = memberChannel('room', 'purple');
        await waitForSubscribers(redis, { [purple]: 2 });
        await expectDelivery(B, { rooms: ['purple'] }, ['a3', 'c3']);
        // Everyone in purple leaves it, asked from B (which has no member).
        expect(await B.leave({ rooms: ['purple'] }, 'purple')).toBe(0);
        await waitForSubscribers(redis, { [purple]: 0 });
        const rooms = async (instance: Instance, name: string) =>
          (await instance.ids()).find((conn) => conn.name === name)?.rooms;
        expect(await rooms(A, 'a3')).toEqual(['blue']);
        expect(await rooms(C, 'c3')).toEqual([]);
        await expectDelivery(B, { rooms: ['purple'] }, []);

        // eve has a tab on each instance; logged out from B.
        const tabs = await Promise.all(
          instances.map((instance, n) => instance.connect('/live', `eve${n}`, 'eve')),
        );
        await waitForSubscribers(redis, { [memberChannel('user', 'eve')]: 3 });
        expect(await B.disconnect({ users: ['eve'] }, 4001, 'Logged out')).toBe(1);
        const closes = await Promise.all(
          tabs.map((tab) => within(tab.closed, 3000, `${tab.name} to be closed`)),
        );
        expect(closes).toEqual(tabs.map(() => ({ code: 4001, reason: 'Logged out' })));
        await waitForSubscribers(redis, { [memberChannel('user', 'eve')]: 0 });
      });
    });

    it('count() adds up every instance', async () => {
      await whileAllAlive(instances, async () => {
        const all = { instances: 3, missing: [] };
        expect(await A.count(undefined)).toEqual({ count: 9, ...all });
        expect(await B.count({ rooms: ['blue'] })).toEqual({ count: 3, ...all });
        expect(await C.count({ users: ['alice'] })).toEqual({ count: 2, ...all });
        expect(await A.count({ route: 'LiveRoute', except: [peers.b1.id] })).toEqual({
          count: 2,
          ...all,
        });
        expect(await B.count({ rooms: ['nowhere'] })).toEqual({ count: 0, ...all });
      });
    });

    it('redis-server SIGKILLed mid-stream: local delivery goes on, the others resume within 10 s of the restart, nothing twice', async () => {
      const local = [peers.a1, peers.a2, peers.a3];
      const remote = [peers.b1, peers.b2, peers.b3, peers.c1, peers.c2, peers.c3];
      const prefix = 'f:';
      await whileAllAlive(instances, async () => {
        await A.startLoop(undefined, 20, prefix);
        looping = true;
        await waitFor(
          () => remote.every((peer) => numbersOf(peer.seen, prefix).length >= 10),
          3000,
          'B and C to get 10 each',
        );

        await server.kill('SIGKILL');
        const killedAt = numbersOf(peers.a1.seen, prefix).length;
        await waitForReadiness(instances, false, 3000, 'all three down');
        await delay(1000);
        // A's own clients kept getting every message while Redis was gone.
        expect(numbersOf(peers.a1.seen, prefix).length).toBeGreaterThan(killedAt + 20);
        const down = await A.stats();
        expect(down.stats!.publishFailures).toBeGreaterThan(0);
        expect(down.ioredisStatus).not.toBe('ready');

        await server.restart();
        const restartedAt = Date.now();
        const before = remote.map((peer) => numbersOf(peer.seen, prefix).length);
        await waitFor(
          () => remote.every((peer, i) => numbersOf(peer.seen, prefix).length >= before[i] + 5),
          10_000,
          'B and C to get messages again after the restart',
        );
        const resumedIn = Date.now() - restartedAt;
        await waitForReadiness(instances, true, 10_000, 'all three ready');
        looping = false;
        const sent = await A.stopLoop();
        await waitFor(
          () =>
            remote.every((peer) => numbersOf(peer.seen, prefix).at(-1) === sent) &&
            numbersOf(peers.a1.seen, prefix).length === sent,
          5000,
          `the last message (${sent}) everywhere`,
        );
        await delay(150);

        const all = numbered(sent).map(Number);
        expect(local.map((peer) => [peer.name, numbersOf(peer.seen, prefix)])).toEqual(
          local.map((peer) => [peer.name, all]),
        );
        // The others: some missed, none twice, in order, the last one there.
        const shape = (got: number[]) => ({
          increasing: got.every((n, i) => i === 0 || n > got[i - 1]),
          missedSome: got.length < sent,
          last: got.at(-1),
        });
        expect(remote.map((peer) => [peer.name, shape(numbersOf(peer.seen, prefix))])).toEqual(
          remote.map((peer) => [peer.name, { increasing: true, missedSome: true, last: sent }]),
        );
        expect(resumedIn).toBeLessThan(10_000);
      });
      const after = await Promise.all(instances.map((instance) => instance.stats()));
      expect(after.map((s) => s.stats!.outages >= 1)).toEqual([true, true, true]);
      expect(after.map((s) => s.ioredisStatus)).toEqual(
        drivers.map((d) => (d === 'ioredis' ? 'ready' : undefined)),
      );
      // The app's 'error' listener heard the outage (and so nothing was unhandled).
      expect(after[0].ioredisErrors).toBeGreaterThan(0);
      // Steady again, both ways.
      await expectDelivery(A, undefined, Object.keys(peers));
      await expectDelivery(C, undefined, Object.keys(peers));
    });

    it('a room left while Redis is down is unsubscribed after the reconnect; one joined meanwhile is subscribed', async () => {
      const green = memberChannel('room', 'green');
      const newRoom = memberChannel('room', 'new');
      await whileAllAlive(instances, async () => {
        await waitForSubscribers(redis, { [green]: 1 }); // b3 on B, nobody else
        await server.kill('SIGKILL');
        await waitFor(async () => !(await isReady(B)), 3000, 'B down');
        // B loses its only member of green (b3 stays in blue), and gets one of a new room.
        peers.b3.client.emit('leave', 'green');
        await waitFor(
          () => peers.b3.seen.includes('{"event":"left","data":"green"}'),
          3000,
          'b3 to leave green',
        );
        const b4 = await B.connect('/rooms/new', 'b4');
        await delay(200); // past the linger (50 ms)
        await server.restart();
        await waitForReadiness(instances, true, 10_000, 'all three ready');

        await waitForSubscribers(redis, { [newRoom]: 1 });
        const before = await B.stats();
        const prefix = `member${++sequence}:`;
        await A.broadcastMany({ rooms: ['new'] }, 20, `${prefix}new:`);
        await A.broadcastMany({ rooms: ['green'] }, 20, `${prefix}green:`);
        await receivedAll([b4], `${prefix}new:`);
        expect(numbersOf(b4.seen, `${prefix}new:`)).toEqual(numbered(20).map(Number));
        expect(numbersOf(peers.b3.seen, `${prefix}green:`)).toEqual([]);
        const after = await B.stats();
        // Nobody is in green any more: Redis must count no subscriber of it, and B must get
        // none of its packets (20 for the new room only).
        expect({
          subscribersOfGreen: (await numsub(redis, [green]))[green],
          receivedByB: after.stats!.received - before.stats!.received,
        }).toEqual({ subscribersOfGreen: 0, receivedByB: 20 });
        await b4.client.close();
        await waitForSubscribers(redis, { [newRoom]: 0 });
      });
    });

    it('an instance started on ioredis while Redis is down boots, serves its own clients, and joins once Redis is back', async () => {
      await server.kill('SIGKILL');
      await whileAllAlive(instances, async () => {
        await waitForReadiness(instances, false, 3000, 'all three down');
        late = await startInstance({ redis, driver: 'ioredis', ...tuning });
        const D = late;
        await whileAllAlive([D], async () => {
          const d1 = await D.connect('/live', 'd1');
          const d2 = await D.connect('/rooms/red', 'd2');
          expect(await D.broadcast(undefined, 'local only')).toBe(2);
          await waitFor(() => d1.seen.includes('local only'), 3000, 'd1 to get it');
          expect(d2.seen).toEqual(['local only']);
          const stats = await D.stats();
          expect(stats).toMatchObject({ driver: 'ioredis', ready: false, publishFailures: 1 });
          expect(stats.ioredisStatus).not.toBe('ready');

          await server.restart();
          await waitFor(() => isReady(D), 10_000, 'the late instance to be ready');
          await waitForReadiness(instances, true, 10_000, 'A, B and C ready');
          await deliveryResumes(A, d1, 10_000, `probe${++sequence}:`);
          await deliveryResumes(D, peers.b1, 10_000, `probe${++sequence}:`);
          await deliveryResumes(D, peers.c1, 10_000, `probe${++sequence}:`);
          // Each learns of the others from their next hello (every 500 ms) after it is ready.
          await waitForInstanceCount([...instances, D], 4, 300);
          const prefix = `late${++sequence}:`;
          const everyone = { ...peers, d1, d2 };
          const sent = await sendNumbered(D, undefined, {
            peers: everyone,
            receivers: Object.keys(everyone),
            prefix,
          });
          expect(sent).toEqual({ local: 40, got: expectedBy(everyone, Object.keys(everyone)) });
          expect(await B.count({ rooms: ['red'] })).toEqual({
            count: 3,
            instances: 4,
            missing: [],
          });
        });
      });
    });
  });
});
