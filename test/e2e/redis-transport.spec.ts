import 'reflect-metadata';
import { Module, type Type } from '@nestjs/common';
import { Redis } from 'ioredis';
import { createClient } from 'redis';
import {
  BroadcastService,
  ConnectedSocket,
  OnOpen,
  WsConnection,
  WsRoute,
  WsRoutesModule,
  encodePacket,
} from '../../lib/index.js';
import { ChannelNames, RedisBroadcastTransport } from '../../lib/redis/index.js';
import { CapturingLogger, startApp, type TestApp } from '../utils/app.js';
import { describeRedis, startRedis, type RedisServer } from '../utils/redis-server.js';
import { delay, eventually, TestClient } from '../utils/ws-client.js';

/*
 * The Redis transport seen from inside one test process: two applications on one real
 * redis-server, for what needs the transport object itself (readiness, stats, events, the
 * borrowed client, a frame of another release). The three-process matrix is in
 * redis-scale-out.spec.ts.
 */
@WsRoute('/feed', { rateLimit: false })
class FeedRoute {
  @OnOpen() open(@ConnectedSocket() conn: WsConnection) {
    const room = conn.query.room;
    if (typeof room === 'string') conn.join(room);
  }
}

function instance(transport: RedisBroadcastTransport): Type {
  @Module({
    imports: [WsRoutesModule.forRoot({ broadcastTransport: transport })],
    providers: [FeedRoute],
  })
  class InstanceModule {}
  return InstanceModule;
}

describeRedis('RedisBroadcastTransport in one process', () => {
  let redis: RedisServer;
  const apps: TestApp[] = [];
  const clients: TestClient[] = [];

  beforeAll(async () => {
    redis = await startRedis();
  });
  afterEach(async () => {
    for (const client of clients.splice(0)) client.socket.terminate();
    for (const app of apps.splice(0)) await app.app.close();
  });
  afterAll(async () => {
    await redis?.stop();
  });

  async function boot(
    prefix: string,
    options: Partial<ConstructorParameters<typeof RedisBroadcastTransport>[0]> = {},
  ): Promise<{ app: TestApp; transport: RedisBroadcastTransport; logger: CapturingLogger }> {
    const logger = new CapturingLogger();
    // A borrowed client (node-redis or ioredis) replaces the url: one way of connecting only.
    const borrowed = 'client' in options || 'ioredis' in options;
    const transport = new RedisBroadcastTransport({
      ...(borrowed ? {} : { url: redis.url }),
      keyPrefix: prefix,
      linger: 50,
      logger,
      ...options,
    } as ConstructorParameters<typeof RedisBroadcastTransport>[0]);
    const app = await startApp(instance(transport));
    apps.push(app);
    await eventually(() => transport.isReady(), 5_000);
    return { app, transport, logger };
  }

  async function client(app: TestApp, path: string): Promise<TestClient> {
    const c = await TestClient.open(app.url(path));
    clients.push(c);
    return c;
  }

  it('carries a room broadcast to the other instance, once, and not to non-members', async () => {
    const a = await boot('t1');
    const b = await boot('t1');
    const onA = await client(a.app, '/feed?room=x');
    const onB = await client(b.app, '/feed?room=x');
    const outsider = await client(b.app, '/feed?room=y');
    await eventually(() => b.transport.stats.subscriptions >= 5, 3_000);
    a.app.app.get(BroadcastService).to('x').send({ n: 1 });
    expect(await onA.nextJson()).toEqual({ n: 1 });
    expect(await onB.nextJson()).toEqual({ n: 1 });
    expect(await outsider.silentFor(200)).toBe(true);
    expect(await onB.silentFor(100)).toBe(true);
  });

  it('uses a client the application already has, and leaves it open at shutdown', async () => {
    const own = createClient({ url: redis.url });
    own.on('error', () => undefined);
    await own.connect();
    try {
      const a = await boot('t3', { client: own } as never);
      const b = await boot('t3');
      const onA = await client(a.app, '/feed?room=z');
      await eventually(() => a.transport.stats.subscriptions >= 5, 3_000);
      b.app.app.get(BroadcastService).to('z').send('through the borrowed client');
      expect(await onA.next()).toBe('through the borrowed client');
      onA.socket.terminate();
      await a.app.app.close();
      apps.splice(apps.indexOf(a.app), 1);
      expect(own.isReady).toBe(true);
      expect(await own.ping()).toBe('PONG');
    } finally {
      own.destroy();
    }
  });

  it('works with sharded pub/sub on one Redis, and from forRootAsync', async () => {
    const transport = new RedisBroadcastTransport({
      url: redis.url,
      keyPrefix: 't4',
      sharded: true,
      linger: 0,
    });
    @Module({
      imports: [
        WsRoutesModule.forRootAsync({
          useFactory: async () => ({ broadcastTransport: transport }),
        }),
      ],
      providers: [FeedRoute],
    })
    class AsyncModule {}
    const a = await startApp(AsyncModule);
    apps.push(a);
    const b = await boot('t4', { sharded: true, linger: 0 });
    await eventually(() => transport.isReady(), 5_000);
    const onA = await client(a, '/feed?room=s');
    await eventually(() => transport.stats.subscriptions >= 5, 3_000);
    b.app.app.get(BroadcastService).to('s').send({ sharded: true });
    expect(await onA.nextJson()).toEqual({ sharded: true });
    const names = new ChannelNames('t4');
    const shardNumsub = async () =>
      (await redis.cli('PUBSUB', 'SHARDNUMSUB', names.member('room', 's'))).split('\n')[1];
    expect(await shardNumsub()).toBe('1');
    onA.socket.terminate();
    await eventually(() => transport.stats.subscriptions === 3, 3_000);
    for (let i = 0; i < 100 && (await shardNumsub()) !== '0'; i++) await delay(20);
    expect(await shardNumsub()).toBe('0');
  });

  it('works over an ioredis client too: both ways, through a Redis restart, and leaves it open', async () => {
    const io = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
    io.on('error', () => undefined);
    try {
      const a = await boot('t5', { ioredis: io, probeInterval: 300, probeTimeout: 300 });
      const b = await boot('t5', { probeInterval: 300, probeTimeout: 300 });
      const onA = await client(a.app, '/feed?room=io');
      const left = await client(a.app, '/feed?room=gone');
      const onB = await client(b.app, '/feed?room=io');
      await eventually(() => a.transport.stats.subscriptions >= 6, 3_000);
      const [sendA, sendB] = [a, b].map((x) => x.app.app.get(BroadcastService));
      sendB.to('io').send('b→a');
      sendA.to('io').send('a→b');
      // Each instance's own clients first (delivered at once), the other's through Redis.
      expect([await onA.next(), await onA.next()]).toEqual(['a→b', 'b→a']);
      expect([await onB.next(), await onB.next()]).toEqual(['b→a', 'a→b']);

      await redis.kill('SIGKILL');
      await eventually(() => !a.transport.isReady() && !b.transport.isReady(), 5_000);
      left.socket.terminate(); // the last member of 'gone' leaves while Redis is down
      await delay(200);
      await redis.restart();
      await eventually(() => a.transport.isReady() && b.transport.isReady(), 10_000);
      sendB.to('io').send('after the restart');
      expect(await onA.next()).toBe('after the restart');
      expect(await onB.next()).toBe('after the restart');
      sendA.to('io').send('from the ioredis side');
      expect(await onB.next()).toBe('from the ioredis side');
      const names = new ChannelNames('t5');
      const numsub = await redis.cli('PUBSUB', 'NUMSUB', names.member('room', 'gone'));
      expect(numsub.split('\n')[1]).toBe('0');

      onA.socket.terminate();
      await a.app.app.close();
      apps.splice(apps.indexOf(a.app), 1);
      expect(io.status).toBe('ready');
      expect(await io.ping()).toBe('PONG');
    } finally {
      io.disconnect();
    }
  });

  it('refuses publishes beyond maxPublishBacklog instead of holding them, and counts them', async () => {
    const a = await boot('t6', { maxPublishBacklog: 256 * 1024 });
    const b = await boot('t6');
    const onB = await client(b.app, '/feed?room=big');
    await eventually(
      () => a.transport.stats.instances === 1 && b.transport.stats.subscriptions >= 5,
      3_000,
    );
    const broadcast = a.app.app.get(BroadcastService);
    const pad = 'x'.repeat(16 * 1024);
    for (let n = 1; n <= 100; n++) broadcast.to('big').send(`${n} ${pad}`);
    // About 256 KiB of 16 KiB frames fit; the rest were refused in the same turn.
    const refused = a.transport.stats.publishFailures;
    expect(refused).toBeGreaterThan(80);
    expect(broadcast.publishFailures).toBe(refused);
    const got: number[] = [];
    for (let i = 0; i < 100 - refused; i++) got.push(parseInt(String(await onB.next()), 10));
    expect(got).toEqual(Array.from({ length: 100 - refused }, (_, i) => i + 1));
    expect(await onB.silentFor(200)).toBe(true);
    // The backlog drained: publishes are accepted again.
    broadcast.to('big').send('later');
    expect(await onB.next()).toBe('later');
  });

  it('checks its options at construction, naming the option', () => {
    expect(() => new RedisBroadcastTransport({ url: redis.url, keyPrefix: 'a{b}' })).toThrow(
      /keyPrefix/,
    );
    expect(() => new RedisBroadcastTransport({ url: redis.url, linger: -1 })).toThrow(/linger/);
    expect(() => new RedisBroadcastTransport({} as never)).toThrow(/exactly one of url/);
    expect(() => new RedisBroadcastTransport({ url: redis.url, ioredis: {} } as never)).toThrow(
      /got url, ioredis/,
    );
  });

  it('refuses, counts and logs a frame of another wire format version, and keeps serving', async () => {
    const a = await boot('t2');
    const onA = await client(a.app, '/feed');
    const names = new ChannelNames('t2');
    const raw = createClient({ url: redis.url });
    await raw.connect();
    try {
      const future = encodePacket({ origin: 'other', payload: 'x', binary: false });
      future[2] = 99;
      await raw.publish(names.everyone, future);
      await raw.publish(names.everyone, Buffer.from('not ours'));
      await eventually(() => a.transport.stats.incompatible === 2, 3_000);
      expect(a.logger.lines.some((l) => /version 99/.test(l.text))).toBe(true);
      expect(await onA.silentFor(100)).toBe(true);
      const ok = encodePacket({ origin: 'other', serial: 1, payload: 'fine', binary: false });
      await raw.publish(names.everyone, ok);
      expect(await onA.next()).toBe('fine');
    } finally {
      raw.destroy();
    }
  });
});
