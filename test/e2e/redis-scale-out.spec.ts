import {
  channels,
  deliveryCheck,
  memberChannel,
  numbersOf,
  sendSeries,
  sentTo,
  startInstance,
  startInstances,
  stopInstances,
  waitFor,
  waitForInstanceCount,
  waitForSubscribers,
  whileAllAlive,
  within,
  type Instance,
  type Peer,
  type RedisTopology,
} from '../utils/redis-instances.js';
import { describeRedis, startRedis, type RedisServer } from '../utils/redis-server.js';
import type { WireTarget } from '../fixtures/redis-instance.js';
import { delay } from '../utils/ws-client.js';

/*
 * Issue 10, scale-out: three app instances in their own processes, one real redis-server.
 * Every kind of target reaches exactly the clients it names, on every instance, once each and
 * in the order sent; remote join/leave/disconnect act on other instances' connections; count()
 * adds up every instance and names the one that died; an instance only gets the packets of
 * rooms it has members of, and gives the channels back once its members are gone.
 */
describeRedis('Redis scale-out: three instances on one redis-server', () => {
  const LINGER = 50;
  let server: RedisServer;
  let redis: RedisTopology;
  let instances: Instance[] = [];
  let extra: Instance | undefined;
  let A: Instance;
  let B: Instance;
  let C: Instance;
  /** Every client of the matrix, by name. */
  const peers: Record<string, Peer> = {};
  let sequence = 0;

  beforeAll(async () => {
    server = await startRedis();
    redis = { server };
    instances = await startInstances(3, { redis, linger: LINGER, heartbeatInterval: 1000 });
    [A, B, C] = instances;
    // Four clients on each instance, over the three routes, four rooms and four users:
    //   alice has a tab on A and one on B; bob on A and C.
    //   b3 is in green (its route) and blue (joined by a message): two rooms at once.
    const plan: [Instance, string, string, string?][] = [
      [A, 'a1', '/live', 'alice'],
      [A, 'a2', '/rooms/red', 'bob'],
      [A, 'a3', '/rooms/blue'],
      [A, 'a4', '/other', 'carol'],
      [B, 'b1', '/live', 'alice'],
      [B, 'b2', '/rooms/red'],
      [B, 'b3', '/rooms/green'],
      [B, 'b4', '/other'],
      [C, 'c1', '/live'],
      [C, 'c2', '/rooms/blue', 'bob'],
      [C, 'c3', '/rooms/green'],
      [C, 'c4', '/other', 'dave'],
    ];
    for (const [instance, name, path, user] of plan)
      peers[name] = await instance.connect(path, name, user);
    peers.b3.client.emit('join', 'blue');
    await waitFor(
      () => peers.b3.seen.includes('{"event":"joined","data":"blue"}'),
      3000,
      'b3 joined',
    );
    // Ready when every instance subscribed what its members need, and knows the other two.
    const member = (kind: 'room' | 'user' | 'route', name: string) => memberChannel(kind, name);
    await waitForSubscribers(redis, {
      [member('route', '/live')]: 3,
      [member('route', '/rooms/:room')]: 3,
      [member('route', '/other')]: 3,
      [member('room', 'red')]: 2,
      [member('room', 'blue')]: 3,
      [member('room', 'green')]: 2,
      [member('user', 'alice')]: 2,
      [member('user', 'bob')]: 2,
      [member('user', 'carol')]: 1,
      [member('user', 'dave')]: 1,
    });
    await waitForInstanceCount(instances, 3);
  }, 30_000);

  afterAll(async () => {
    await stopInstances([...instances, extra]);
    await server?.stop();
  });

  const expectDelivery = deliveryCheck(() => instances, peers, { prefix: 'm' });

  it('everyone: all twelve clients on the three instances', async () => {
    await expectDelivery(A, undefined, Object.keys(peers));
  });

  it('a route by its class', async () => {
    await expectDelivery(B, { route: 'LiveRoute' }, ['a1', 'b1', 'c1']);
  });

  it('a route by its pattern', async () => {
    await expectDelivery(C, { route: '/rooms/:room' }, ['a2', 'a3', 'b2', 'b3', 'c2', 'c3']);
  });

  it('a room, sent from an instance without members of it', async () => {
    await expectDelivery(C, { rooms: ['red'] }, ['a2', 'b2']);
  });

  it('several rooms at once: a client in two of them gets each message once', async () => {
    await expectDelivery(A, { rooms: ['blue', 'green'] }, ['a3', 'b3', 'c2', 'c3']);
  });

  it('a room and a user that share members: once each', async () => {
    // c2 is bob and in blue: C gets each packet on two channels, and so does A (a2 is bob,
    // a3 in blue). The second copy is dropped.
    const before = await Promise.all(instances.map((i) => i.stats()));
    await expectDelivery(B, { rooms: ['blue'], users: ['bob'] }, ['a2', 'a3', 'b3', 'c2']);
    const after = await Promise.all(instances.map((i) => i.stats()));
    const deduplicated = after.map((s, i) => s.stats!.deduplicated - before[i].stats!.deduplicated);
    expect(deduplicated).toEqual([20, 0, 20]);
  });

  it('everyone except connections of two other instances', async () => {
    const except = [peers.a1.id, peers.b2.id];
    const receivers = Object.keys(peers).filter((name) => name !== 'a1' && name !== 'b2');
    await expectDelivery(C, { except }, receivers);
  });

  it('a route except one of its connections elsewhere', async () => {
    await expectDelivery(A, { route: '/other', except: [peers.c4.id] }, ['a4', 'b4']);
  });

  it('connections by id, on other instances', async () => {
    await expectDelivery(A, { connections: [peers.c4.id, peers.b1.id] }, ['b1', 'c4']);
  });

  it('a user with tabs on two instances, sent from the third', async () => {
    await expectDelivery(C, { users: ['alice'] }, ['a1', 'b1']);
  });

  it('several users and a route together', async () => {
    await expectDelivery(B, { users: ['carol', 'dave'], route: 'LiveRoute' }, [
      'a1',
      'a4',
      'b1',
      'c1',
      'c4',
    ]);
  });

  it('more target channels than maxChannelsPerPacket (40 rooms): still only the members', async () => {
    const rooms = ['red', 'blue', ...Array.from({ length: 38 }, (_, i) => `empty-${i}`)];
    await expectDelivery(A, { rooms }, ['a2', 'a3', 'b2', 'b3', 'c2']);
  });

  it('broadcasts to different targets keep their order for a client in all of them', async () => {
    // a2 (on A) is in red, is bob, is on /rooms/:room and has an id; sent from C.
    const targets: WireTarget[] = [
      { rooms: ['red'] },
      { users: ['bob'] },
      { route: '/rooms/:room' },
      { connections: [peers.a2.id] },
    ];
    const prefix = `series${++sequence}:`;
    await whileAllAlive(instances, () =>
      sendSeries(C, targets, { peer: peers.a2, prefix, count: 40 }),
    );
    const to = (...kinds: number[]) => sentTo(40, 4, ...kinds);
    expect(numbersOf(peers.a2.seen, prefix)).toEqual(to(0, 1, 2, 3));
    expect(numbersOf(peers.b2.seen, prefix)).toEqual(to(0, 2)); // red, route
    expect(numbersOf(peers.c2.seen, prefix)).toEqual(to(1, 2)); // bob, route
    expect(numbersOf(peers.b1.seen, prefix)).toEqual([]);
  });

  it('a binary message stays binary on the other instances', async () => {
    const bytes = Buffer.from([0, 255, 1, 2, 0x7b]);
    await whileAllAlive(instances, async () => {
      expect(await C.broadcastBinary({ users: ['alice'] }, bytes)).toBe(0);
      const expected = `bin:${bytes.toString('hex')}`;
      await waitFor(
        () => peers.a1.seen.includes(expected) && peers.b1.seen.includes(expected),
        3000,
        'a1 and b1 to get the bytes',
      );
    });
  });

  it('count() adds up every instance', async () => {
    await whileAllAlive(instances, async () => {
      expect(await A.count(undefined)).toEqual({ count: 12, instances: 3, missing: [] });
      expect(await B.count({ rooms: ['blue'] })).toEqual({ count: 3, instances: 3, missing: [] });
      expect(await C.count({ users: ['alice'] })).toEqual({ count: 2, instances: 3, missing: [] });
      expect(await A.count({ route: 'OtherRoute', except: [peers.b4.id] })).toEqual({
        count: 2,
        instances: 3,
        missing: [],
      });
      expect(await B.count({ rooms: ['nowhere'] })).toEqual({
        count: 0,
        instances: 3,
        missing: [],
      });
    });
  });

  it('an instance without members of a room gets none of its packets', async () => {
    await whileAllAlive(instances, async () => {
      const before = await Promise.all(instances.map((i) => i.stats()));
      const prefix = `quiet${++sequence}:`;
      // red: a2 on A, b2 on B; nobody on C.
      expect(await A.broadcastMany({ rooms: ['red'] }, 50, prefix)).toBe(50);
      await waitFor(() => numbersOf(peers.b2.seen, prefix).length === 50, 5000, 'b2 to get 50');
      await delay(100);
      const after = await Promise.all(instances.map((i) => i.stats()));
      const received = after.map((s, i) => s.stats!.received - before[i].stats!.received);
      // `received` counts broadcast frames only (presence and probes are control frames):
      // A gets its own 50 echoes, B the 50 packets, C nothing at all.
      expect(received).toEqual([50, 50, 0]);
      expect(numbersOf(peers.c1.seen, prefix)).toEqual([]);
    });
  });

  it('remote join and leave: connections on other instances, by user and by id', async () => {
    await whileAllAlive(instances, async () => {
      // dave (c4, on C) joins purple from A; a4 (on A) joins it by id from C.
      expect(await A.join({ users: ['dave'] }, 'purple')).toBe(0);
      expect(await C.join({ connections: [peers.a4.id] }, 'purple')).toBe(0);
      const purple = memberChannel('room', 'purple');
      await waitForSubscribers(redis, { [purple]: 2 });
      const roomsOf = async (instance: Instance, name: string) =>
        (await instance.ids()).find((conn) => conn.name === name)?.rooms;
      expect(await roomsOf(C, 'c4')).toEqual(['purple']);
      expect(await roomsOf(A, 'a4')).toEqual(['purple']);
      await expectDelivery(B, { rooms: ['purple'] }, ['a4', 'c4']);

      // Everyone in purple leaves it, asked from B (which has no member).
      expect(await B.leave({ rooms: ['purple'] }, 'purple')).toBe(0);
      await waitFor(async () => (await roomsOf(C, 'c4'))?.length === 0, 3000, 'c4 to leave');
      await waitFor(async () => (await roomsOf(A, 'a4'))?.length === 0, 3000, 'a4 to leave');
      await waitForSubscribers(redis, { [purple]: 0 });
      await expectDelivery(B, { rooms: ['purple'] }, []);
    });
  });

  it('remote disconnect: a user logged out of tabs on every instance', async () => {
    const tabs = await Promise.all(instances.map((i, n) => i.connect('/live', `eve${n}`, 'eve')));
    await waitForSubscribers(redis, { [memberChannel('user', 'eve')]: 3 });
    await whileAllAlive(instances, async () => {
      expect(await B.disconnect({ users: ['eve'] }, 4001, 'Logged out')).toBe(1);
      const closes = await Promise.all(
        tabs.map((tab) => within(tab.closed, 3000, `${tab.name} to be closed`)),
      );
      expect(closes).toEqual(tabs.map(() => ({ code: 4001, reason: 'Logged out' })));
      await waitForSubscribers(redis, { [memberChannel('user', 'eve')]: 0 });
      expect(await A.count({ users: ['eve'] })).toEqual({ count: 0, instances: 3, missing: [] });
    });
    // Nobody else was touched.
    expect(await A.count(undefined)).toEqual({ count: 12, instances: 3, missing: [] });
  });

  it('room churn: 30 rooms joined, left and abandoned; every room channel is given back', async () => {
    const rooms = Array.from({ length: 30 }, (_, i) => `churn-${i}`);
    const names = rooms.map((room) => memberChannel('room', room));
    await whileAllAlive(instances, async () => {
      // Two clients per instance: one joins rooms by message (the even ones on A, ...), one
      // opens a room route per room; then half are left by message and the rest closed.
      const joiners = await Promise.all(instances.map((i, n) => i.connect('/live', `joiner${n}`)));
      for (const [n, joiner] of joiners.entries())
        for (const room of rooms.filter((_, r) => r % 3 === n)) joiner.client.emit('join', room);
      const routed: Peer[] = [];
      for (const [r, room] of rooms.entries())
        if (r % 2 === 0)
          routed.push(await instances[r % 3].connect(`/rooms/${room}`, `routed${r}`));
      await waitFor(
        () => joiners.every((j, n) => j.seen.length === rooms.filter((_, r) => r % 3 === n).length),
        5000,
        'every join answered',
      );
      // Each room: a joiner on instance r % 3, and, for even rooms, a route on the same.
      await waitForSubscribers(redis, Object.fromEntries(names.map((name) => [name, 1])));
      for (const [n, joiner] of joiners.entries())
        for (const room of rooms.filter((_, r) => r % 3 === n && r < 15))
          joiner.client.emit('leave', room);
      await Promise.all(routed.map((peer) => peer.client.close()));
      await Promise.all(joiners.map((joiner) => joiner.client.close()));
      await waitForSubscribers(
        redis,
        Object.fromEntries(names.map((name) => [name, 0])),
        LINGER + 5000,
      );
    });
    // The standing subscriptions are untouched.
    const base = channels();
    await waitForSubscribers(redis, {
      [base.everyone]: 3,
      [memberChannel('room', 'blue')]: 3,
      [memberChannel('user', 'alice')]: 2,
    });
  });

  it('count() after an instance was killed: it is missing, and its connections are not counted', async () => {
    extra = await startInstance({ redis, linger: LINGER, heartbeatInterval: 1000 });
    const dying = extra;
    await dying.connect('/live', 'd1', 'alice');
    await dying.connect('/rooms/blue', 'd2');
    await waitFor(
      async () => (await A.count(undefined, 500)).instances === 4,
      5000,
      'A to know the fourth instance',
    );
    expect(await A.count(undefined)).toEqual({ count: 14, instances: 4, missing: [] });
    expect(await B.count({ users: ['alice'] })).toEqual({ count: 3, instances: 4, missing: [] });

    process.kill(dying.app.pid, 'SIGKILL');
    expect(await dying.app.exited).toEqual({ code: null, signal: 'SIGKILL' });
    // Killed without a goodbye: the others still think it is up, and it does not answer.
    await whileAllAlive(instances, async () => {
      const counted = await A.count(undefined, 300);
      expect(counted).toEqual({ count: 12, instances: 3, missing: [dying.instanceId] });
      const users = await C.count({ users: ['alice'] }, 300);
      expect(users).toEqual({ count: 2, instances: 3, missing: [dying.instanceId] });
      // Three heartbeats without a hello: forgotten, no longer missing.
      await waitFor(
        async () => (await A.count(undefined, 300)).missing.length === 0,
        5000,
        'A to forget the dead instance',
      );
      expect(await A.count(undefined)).toEqual({ count: 12, instances: 3, missing: [] });
    });
  });
});
