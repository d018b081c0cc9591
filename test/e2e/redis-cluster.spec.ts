import {
  channels,
  deliveryCheck,
  memberChannel,
  numbered,
  numbersOf,
  sendSeries,
  sentTo,
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
import { describeRedis, startRedisCluster, type RedisCluster } from '../utils/redis-server.js';
import type { WireTarget } from '../fixtures/redis-instance.js';
import { delay } from '../utils/ws-client.js';

/*
 * Issue 10 on a Redis Cluster (three masters, sharded pub/sub): three app instances, the
 * target matrix in short (everyone, a room, a user on two instances, connection ids, order),
 * count() across instances, and room churn that gives every shard channel back.
 */
describeRedis('Redis scale-out on a Redis Cluster: three instances, three shards', () => {
  const LINGER = 50;
  let cluster: RedisCluster;
  let redis: RedisTopology;
  let instances: Instance[] = [];
  let A: Instance;
  let B: Instance;
  let C: Instance;
  const peers: Record<string, Peer> = {};
  let sequence = 0;

  beforeAll(async () => {
    cluster = await startRedisCluster();
    redis = { cluster };
    instances = await startInstances(3, { redis, linger: LINGER, heartbeatInterval: 1000 });
    [A, B, C] = instances;
    const plan: [Instance, string, string, string?][] = [
      [A, 'a1', '/live', 'alice'],
      [A, 'a2', '/rooms/red'],
      [B, 'b1', '/live', 'alice'],
      [B, 'b2', '/rooms/red'],
      [B, 'b3', '/other'],
      [C, 'c1', '/rooms/blue'],
      [C, 'c2', '/other', 'bob'],
    ];
    for (const [instance, name, path, user] of plan)
      peers[name] = await instance.connect(path, name, user);
    await waitForSubscribers(redis, {
      [channels().everyone]: 3,
      [channels().control]: 3,
      [memberChannel('route', '/live')]: 2,
      [memberChannel('route', '/other')]: 2,
      [memberChannel('room', 'red')]: 2,
      [memberChannel('room', 'blue')]: 1,
      [memberChannel('user', 'alice')]: 2,
      [memberChannel('user', 'bob')]: 1,
    });
    await waitForInstanceCount(instances, 3);
  }, 45_000);

  afterAll(async () => {
    await stopInstances(instances);
    await cluster?.stop();
  });

  const expectDelivery = deliveryCheck(() => instances, peers, { prefix: 'k', local: false });

  it('everyone', async () => {
    await expectDelivery(A, undefined, Object.keys(peers));
  });

  it('a room, from an instance without members of it', async () => {
    await expectDelivery(C, { rooms: ['red'] }, ['a2', 'b2']);
  });

  it('a user with tabs on two instances', async () => {
    await expectDelivery(C, { users: ['alice'] }, ['a1', 'b1']);
  });

  it('connection ids on two other instances', async () => {
    await expectDelivery(A, { connections: [peers.b3.id, peers.c1.id] }, ['b3', 'c1']);
  });

  it('rooms, a user and a route together, except one connection', async () => {
    await expectDelivery(
      B,
      { rooms: ['blue'], users: ['bob'], route: 'LiveRoute', except: [peers.a1.id] },
      ['b1', 'c1', 'c2'],
    );
  });

  it('broadcasts to different targets: each target in order, all once (no order across shards)', async () => {
    // a2 (on A) is in red, on /rooms/:room, and has an id; sent from C. The three channels
    // live on different shards, read over different connections: messages of one target keep
    // their order, but those of different targets may interleave differently than sent (seen:
    // all of one shard's, then the next shard's). One Redis keeps the order across targets
    // (redis-scale-out.spec.ts).
    const targets: WireTarget[] = [
      { rooms: ['red'] },
      { route: '/rooms/:room' },
      { connections: [peers.a2.id] },
    ];
    const prefix = `series${++sequence}:`;
    await whileAllAlive(instances, () =>
      sendSeries(C, targets, { peer: peers.a2, prefix, count: 60 }),
    );
    const of = (seen: number[], kind: number) => seen.filter((n) => (n - 1) % 3 === kind);
    const a2 = numbersOf(peers.a2.seen, prefix);
    expect([...a2].sort((x, y) => x - y)).toEqual(sentTo(60, 3, 0, 1, 2));
    for (const kind of [0, 1, 2]) expect(of(a2, kind)).toEqual(sentTo(60, 3, kind));
    const b2 = numbersOf(peers.b2.seen, prefix);
    expect([...b2].sort((x, y) => x - y)).toEqual(sentTo(60, 3, 0, 1));
    for (const kind of [0, 1]) expect(of(b2, kind)).toEqual(sentTo(60, 3, kind));
  });

  it('count() across the instances', async () => {
    await whileAllAlive(instances, async () => {
      expect(await A.count(undefined)).toEqual({ count: 7, instances: 3, missing: [] });
      expect(await C.count({ users: ['alice'] })).toEqual({ count: 2, instances: 3, missing: [] });
      expect(await B.count({ rooms: ['red', 'blue'] })).toEqual({
        count: 3,
        instances: 3,
        missing: [],
      });
    });
  });

  it('the master of a room channel SIGKILLed and restarted: the room is served again', async () => {
    const red = memberChannel('room', 'red');
    const replies = await Promise.all(
      cluster.nodes.map((node) => node.command('PUBSUB', 'SHARDNUMSUB', red)),
    );
    const owner = cluster.nodes[replies.findIndex((reply) => (reply as unknown[])[1] === 2)];
    expect(owner).toBeDefined();
    await whileAllAlive(instances, async () => {
      await owner.kill('SIGKILL');
      await delay(300);
      // The other shards still carry the rest: a user whose channel lives elsewhere, perhaps;
      // local delivery always.
      expect(await A.broadcast({ rooms: ['red'] }, 'while its shard is down')).toBe(1);
      await owner.restart();
      const prefix = `back${++sequence}:`;
      let n = 0;
      await waitFor(
        async () => {
          await C.broadcast({ rooms: ['red'] }, `${prefix}${++n}`);
          await delay(100);
          return ['a2', 'b2'].every((name) => numbersOf(peers[name].seen, prefix).length > 0);
        },
        15_000,
        'room red to reach a2 and b2 again',
      );
      await waitForReadiness(instances, true, 10_000, 'ready again');
      await waitForSubscribers(redis, { [red]: 2, [channels().everyone]: 3 });
    });
    await expectDelivery(C, { rooms: ['red'] }, ['a2', 'b2']);
    await expectDelivery(B, undefined, Object.keys(peers));
  });

  it('room churn over the shards: every room channel is given back', async () => {
    const rooms = Array.from({ length: 30 }, (_, i) => `churn-${i}`);
    const names = rooms.map((room) => memberChannel('room', room));
    await whileAllAlive(instances, async () => {
      const joiners = await Promise.all(instances.map((i, n) => i.connect('/live', `joiner${n}`)));
      // Every room on two instances: joiner n joins the rooms r with r % 3 !== n.
      for (const [n, joiner] of joiners.entries())
        for (const room of rooms.filter((_, r) => r % 3 !== n)) joiner.client.emit('join', room);
      await waitForSubscribers(redis, Object.fromEntries(names.map((name) => [name, 2])));
      // The channels live on the shards of their names: more than one master holds some.
      const perNode = await Promise.all(
        cluster.nodes.map((node) => node.command('PUBSUB', 'SHARDNUMSUB', ...names)),
      );
      const holding = perNode.filter((reply) =>
        (reply as (string | number)[]).some((value, i) => i % 2 === 1 && Number(value) > 0),
      );
      expect(holding.length).toBeGreaterThan(1);
      // A room reaches its members through its shard.
      const prefix = `churn${++sequence}:`;
      await A.broadcastMany({ rooms: ['churn-0'] }, 20, prefix);
      await waitFor(
        () =>
          numbersOf(joiners[1].seen, prefix).length === 20 &&
          numbersOf(joiners[2].seen, prefix).length === 20,
        5000,
        'churn-0 members to get 20',
      );
      expect(numbersOf(joiners[0].seen, prefix)).toEqual([]);
      expect(numbersOf(joiners[1].seen, prefix)).toEqual(numbered(20).map(Number));
      // Half left by message, the rest abandoned by closing.
      for (const [n, joiner] of joiners.entries())
        for (const room of rooms.filter((_, r) => r % 3 !== n && r < 15))
          joiner.client.emit('leave', room);
      await delay(50);
      await Promise.all(joiners.map((joiner) => joiner.client.close()));
      await waitForSubscribers(
        redis,
        Object.fromEntries(names.map((name) => [name, 0])),
        LINGER + 5000,
      );
    });
    await waitForSubscribers(redis, {
      [channels().everyone]: 3,
      [memberChannel('room', 'red')]: 2,
      [memberChannel('user', 'alice')]: 2,
    });
  });
});
