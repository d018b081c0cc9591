import 'reflect-metadata';
import {
  Controller,
  ForbiddenException,
  Get,
  Inject,
  Module,
  Res,
  type CanActivate,
  type INestApplication,
  type Type,
} from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import {
  Registry,
  register as defaultRegister,
  type OpenMetricsContentType,
  type RegistryContentType,
} from 'prom-client';
import {
  BroadcastService,
  ConnectedSocket,
  MessageBody,
  OnMessage,
  OnOpen,
  WsConnection,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesMetrics,
  WsRoutesModule,
  type WsRoutesModuleOptions,
} from '../../lib/index.js';
import { RedisBroadcastTransport } from '../../lib/redis/index.js';
import { CapturingLogger, startApp, type TestApp } from '../utils/app.js';
import { describeRedis, startRedis, type RedisServer } from '../utils/redis-server.js';
import { parseExposition, scrape, type Scrape } from '../utils/metrics-scrape.js';
import { delay, eventually, refusedUpgrade, TestClient } from '../utils/ws-client.js';

const KiB = 1024;
const CHUNK = Buffer.alloc(64 * KiB, 0x61);

class DenyGuard implements CanActivate {
  canActivate(): boolean {
    throw new ForbiddenException('members only');
  }
}

@WsRoute('/rooms/:id', { rateLimit: { messages: 3, per: 60_000, action: 'drop' } })
class RoomRoute {
  @OnOpen() open(@ConnectedSocket() conn: WsConnection) {
    conn.join(conn.params.id);
  }
  @OnMessage('echo') echo(@MessageBody() data: string) {
    return { event: 'echo', data };
  }
  @OnMessage('fail') fail(): never {
    throw new Error('handler failed on purpose');
  }
  @OnMessage('slow') async slow(@MessageBody() ms: number) {
    await delay(ms);
    return { event: 'slow', data: ms };
  }
}

@WsRoute('/limited', { rateLimit: { messages: 2, per: 60_000 } })
class LimitedRoute {
  @OnMessage('echo') echo(@MessageBody() data: string) {
    return { event: 'echo', data };
  }
}

/** 256 KiB may wait per connection: four 64 KiB messages of one turn fill it. */
const OUTBOUND = { maxBufferedAmount: 256 * KiB, lowWatermark: 64 * KiB } as const;

@WsRoute('/feed', { ...OUTBOUND, slowConsumer: 'close' })
class FeedRoute {}

@WsRoute('/ticker', { ...OUTBOUND, slowConsumer: 'drop' })
class TickerRoute {}

@WsRoute('/private', { guards: [new DenyGuard()] })
class PrivateRoute {}

/** Refusals a page can read: a 101 closed at once with 4000 + status. */
@WsRoute('/members', { guards: [new DenyGuard()], refuse: 'close' })
class MembersRoute {}

const REGISTRY = Symbol('registry');

/** `/metrics` as an application serves it to Prometheus. */
@Controller()
class MetricsController {
  constructor(@Inject(REGISTRY) private readonly registry: Registry<RegistryContentType>) {}

  @Get('metrics')
  async metrics(
    @Res() response: { setHeader(name: string, value: string): void; end(body: string): void },
  ) {
    response.setHeader('Content-Type', this.registry.contentType);
    response.end(await this.registry.metrics());
  }
}

const ROUTES = [RoomRoute, LimitedRoute, FeedRoute, TickerRoute, PrivateRoute];

function appModule(
  metrics: WsRoutesModuleOptions['metrics'],
  registry?: Registry<RegistryContentType>,
): Type {
  @Module({
    imports: [WsRoutesModule.forRoot({ metrics })],
    controllers: registry ? [MetricsController] : [],
    providers: [...ROUTES, { provide: REGISTRY, useValue: registry ?? null }],
  })
  class MetricsAppModule {}
  return MetricsAppModule;
}

/** What a client sent and received, in messages and payload bytes, seen on the wire. */
function traffic(client: TestClient) {
  const seen = { messagesIn: 0, bytesIn: 0, messagesOut: 0, bytesOut: 0 };
  client.socket.on('message', (data: Buffer) => {
    seen.messagesIn++;
    seen.bytesIn += data.length;
  });
  const send = client.send.bind(client);
  client.send = (data) => {
    const bytes = typeof data === 'string' || Buffer.isBuffer(data) ? data : JSON.stringify(data);
    seen.messagesOut++;
    seen.bytesOut += Buffer.byteLength(bytes);
    send(bytes);
  };
  return seen;
}

const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);

/** Starts an application that must not start; resolves with the error it failed with. */
async function startFailure(module: Type): Promise<Error> {
  let app: INestApplication | undefined;
  try {
    app = await NestFactory.create(module, { logger: false, abortOnError: false });
    await app.listen(0, '127.0.0.1');
  } catch (error) {
    return error as Error;
  } finally {
    await app?.close();
  }
  throw new Error('the application started');
}

describe('metrics', () => {
  const clients: TestClient[] = [];
  let t: TestApp | undefined;

  afterEach(async () => {
    for (const client of clients.splice(0)) client.socket.terminate();
    await t?.app.close();
    t = undefined;
  });

  async function open(path: string): Promise<TestClient> {
    const client = await TestClient.open(t!.url(path));
    clients.push(client);
    return client;
  }

  it('a real /metrics endpoint reports every count exactly, labelled by route pattern', async () => {
    const registry = new Registry();
    t = await startApp(appModule({ registry }, registry));
    const metricsUrl = t.http('/metrics');

    // Before any traffic every route's series are there, at zero.
    const empty = await scrape(metricsUrl);
    expect(empty.status).toBe(200);
    expect(empty.contentType).toContain('text/plain; version=0.0.4');
    expect(Object.fromEntries(empty.types)).toEqual({
      ws_connections_open: 'gauge',
      ws_handshakes_total: 'counter',
      ws_messages_received_total: 'counter',
      ws_bytes_received_total: 'counter',
      ws_messages_sent_total: 'counter',
      ws_bytes_sent_total: 'counter',
      ws_messages_dropped_total: 'counter',
      ws_slow_consumer_closes_total: 'counter',
      ws_rate_limit_closes_total: 'counter',
      ws_handler_errors_total: 'counter',
      ws_handler_duration_seconds: 'histogram',
      ws_broadcast_recipients: 'histogram',
    });
    for (const route of ['/rooms/:id', '/limited', '/feed', '/ticker', '/private']) {
      expect(empty.value('ws_connections_open', { route })).toBe(0);
      expect(empty.value('ws_handshakes_total', { route, status: '101' })).toBe(0);
      for (const reason of ['rate_limit', 'slow_consumer', 'volatile'])
        expect(empty.value('ws_messages_dropped_total', { route, reason })).toBe(0);
      expect(empty.value('ws_handler_duration_seconds_count', { route })).toBe(0);
    }
    expect(empty.value('ws_broadcast_recipients_count')).toBe(0);

    // Three connections on one pattern, two concrete paths.
    const a1 = await open('/rooms/42');
    const a2 = await open('/rooms/42');
    const b = await open('/rooms/7');
    const rooms = [a1, a2, b].map(traffic);
    const registryOfConns = t.app.get(WsConnectionRegistry);
    await eventually(() => registryOfConns.size === 3);
    const open3 = await scrape(metricsUrl);
    expect(open3.value('ws_connections_open', { route: '/rooms/:id' })).toBe(3);
    expect(open3.value('ws_handshakes_total', { route: '/rooms/:id', status: '101' })).toBe(3);

    a1.send({ event: 'echo', data: 'hi' });
    expect(await a1.nextJson()).toEqual({ event: 'echo', data: 'hi' });
    a1.send({ event: 'fail' });
    await a1.next(); // the error frame
    a2.send({ event: 'slow', data: 50 });
    expect(await a2.nextJson()).toEqual({ event: 'slow', data: 50 });
    // Over the limit of 3 per minute, with action 'drop': two of five are dropped.
    for (let i = 0; i < 5; i++) b.send({ event: 'echo', data: `n${i}` });
    for (let i = 0; i < 3; i++)
      expect(await b.nextJson()).toEqual({ event: 'echo', data: `n${i}` });
    const metrics = t.app.get(WsRoutesMetrics);
    await eventually(() => metrics.snapshot().routes['/rooms/:id'].messagesReceived === 8);
    expect(await b.silentFor(100)).toBe(true);

    // Broadcasts: to room 42 (two connections), then to everyone (three).
    const broadcast = t.app.get(BroadcastService);
    expect(broadcast.to('42').send({ event: 'room', data: 1 })).toBe(2);
    expect(broadcast.send({ event: 'all', data: 2 })).toBe(3);
    for (const client of [a1, a2]) expect((await client.nextJson()).event).toBe('room');
    for (const client of [a1, a2, b]) expect((await client.nextJson()).event).toBe('all');

    // Refused upgrades: a path no route matches, a guard's 403, a path that cannot be decoded.
    expect((await refusedUpgrade(t.url('/nope'))).status).toBe(404);
    expect((await refusedUpgrade(t.url('/private'))).status).toBe(403);
    expect((await refusedUpgrade(t.url('/rooms/%E0%A4%A'))).status).toBe(400);

    // Rate limit with action 'close': the third message closes the connection with 1008.
    const limited = await open('/limited');
    const limitedSeen = traffic(limited);
    for (let i = 0; i < 3; i++) limited.send({ event: 'echo', data: `l${i}` });
    expect((await limited.closed).code).toBe(1008);

    // Slow consumers: 64 KiB messages in one turn pass a 256 KiB cap after the fourth.
    const feed = await open('/feed');
    const ticker = await open('/ticker');
    const feedSeen = traffic(feed);
    const tickerSeen = traffic(ticker);
    await eventually(() => registryOfConns.byRoute('/ticker').size === 1);
    const [feedConn] = registryOfConns.byRoute('/feed');
    const [tickerConn] = registryOfConns.byRoute('/ticker');
    const feedResults = Array.from({ length: 8 }, () => feedConn.send(CHUNK));
    const tickerResults = Array.from({ length: 8 }, () => tickerConn.send(CHUNK));
    const volatileResults = Array.from({ length: 5 }, () =>
      tickerConn.send(CHUNK, { volatile: true }),
    );
    // Four frames (payload and header) are just over the cap: the fifth does not go.
    expect(feedResults).toEqual([true, true, true, true, false, false, false, false]);
    expect(tickerResults).toEqual([true, true, true, true, false, false, false, false]);
    expect(volatileResults).toEqual([false, false, false, false, false]);
    expect((await feed.closed).code).toBe(1013);
    await eventually(() => tickerSeen.messagesIn === 4, 5000);

    for (const client of clients) client.socket.close();
    await eventually(() => registryOfConns.size === 0, 5000);

    const s = await scrape(metricsUrl);
    const room = { route: '/rooms/:id' };
    expect(s.value('ws_connections_open', room)).toBe(0);
    expect(s.samples('ws_handshakes_total')).toEqual(
      expect.arrayContaining([
        { labels: { route: '/rooms/:id', status: '101' }, value: 3 },
        { labels: { route: '/private', status: '101' }, value: 0 },
        { labels: { route: '/private', status: '403' }, value: 1 },
        { labels: { route: '/limited', status: '101' }, value: 1 },
        { labels: { route: '/feed', status: '101' }, value: 1 },
        { labels: { route: '/ticker', status: '101' }, value: 1 },
        { labels: { route: '(unmatched)', status: '404' }, value: 1 },
        { labels: { route: '(unmatched)', status: '400' }, value: 1 },
      ]),
    );
    expect(s.samples('ws_handshakes_total')).toHaveLength(8);

    // Received: what the clients wrote; sent: what they read, both in messages and bytes.
    expect(s.value('ws_messages_received_total', room)).toBe(sum(rooms.map((r) => r.messagesOut)));
    expect(s.value('ws_messages_received_total', room)).toBe(8);
    expect(s.value('ws_bytes_received_total', room)).toBe(sum(rooms.map((r) => r.bytesOut)));
    // 1 echo + 1 error + 1 slow + 3 echoes + 2 room + 3 everyone
    expect(s.value('ws_messages_sent_total', room)).toBe(11);
    expect(sum(rooms.map((r) => r.messagesIn))).toBe(11);
    expect(s.value('ws_bytes_sent_total', room)).toBe(sum(rooms.map((r) => r.bytesIn)));
    expect(s.value('ws_messages_dropped_total', { ...room, reason: 'rate_limit' })).toBe(2);
    expect(s.value('ws_handler_errors_total', room)).toBe(1);
    expect(s.value('ws_rate_limit_closes_total', room)).toBe(0);

    // Handler time: six handled messages, one of them 50 ms long.
    expect(s.value('ws_handler_duration_seconds_count', room)).toBe(6);
    expect(s.value('ws_handler_duration_seconds_bucket', { ...room, le: '+Inf' })).toBe(6);
    expect(s.value('ws_handler_duration_seconds_bucket', { ...room, le: '10' })).toBe(6);
    expect(s.value('ws_handler_duration_seconds_bucket', { ...room, le: '0.025' })).toBeLessThan(6);
    expect(s.value('ws_handler_duration_seconds_sum', room)).toBeGreaterThanOrEqual(0.045);
    const buckets = s
      .samples('ws_handler_duration_seconds_bucket')
      .filter((sample) => sample.labels.route === '/rooms/:id');
    expect(buckets).toHaveLength(17);
    for (let i = 1; i < buckets.length; i++)
      expect(buckets[i].value).toBeGreaterThanOrEqual(buckets[i - 1].value);

    expect(s.value('ws_messages_received_total', { route: '/limited' })).toBe(3);
    expect(s.value('ws_messages_sent_total', { route: '/limited' })).toBe(limitedSeen.messagesIn);
    expect(limitedSeen.messagesIn).toBe(2);
    expect(s.value('ws_rate_limit_closes_total', { route: '/limited' })).toBe(1);
    expect(s.value('ws_messages_dropped_total', { route: '/limited', reason: 'rate_limit' })).toBe(
      0,
    );

    expect(s.value('ws_slow_consumer_closes_total', { route: '/feed' })).toBe(1);
    expect(s.value('ws_messages_sent_total', { route: '/feed' })).toBe(4);
    expect(feedSeen.messagesIn).toBe(4);
    expect(s.value('ws_bytes_sent_total', { route: '/feed' })).toBe(4 * CHUNK.length);
    expect(s.value('ws_messages_dropped_total', { route: '/feed', reason: 'slow_consumer' })).toBe(
      0,
    );
    expect(s.value('ws_slow_consumer_closes_total', { route: '/ticker' })).toBe(0);
    expect(s.value('ws_messages_sent_total', { route: '/ticker' })).toBe(4);
    expect(s.value('ws_bytes_sent_total', { route: '/ticker' })).toBe(tickerSeen.bytesIn);
    expect(
      s.value('ws_messages_dropped_total', { route: '/ticker', reason: 'slow_consumer' }),
    ).toBe(4);
    expect(s.value('ws_messages_dropped_total', { route: '/ticker', reason: 'volatile' })).toBe(5);

    // Two broadcasts: 2 and 3 recipients.
    expect(s.value('ws_broadcast_recipients_count')).toBe(2);
    expect(s.value('ws_broadcast_recipients_sum')).toBe(5);
    expect(s.value('ws_broadcast_recipients_bucket', { le: '1' })).toBe(0);
    expect(s.value('ws_broadcast_recipients_bucket', { le: '5' })).toBe(2);

    // Low cardinality: patterns only, never a concrete path, and no transport without one.
    expect(s.text).not.toMatch(/\/rooms\/(42|7)|\/nope|%E0/);
    expect(s.types.has('ws_transport_up')).toBe(false);

    // The snapshot and the scrape read the same counts.
    const snapshot = metrics.snapshot();
    expect(snapshot.routes['/rooms/:id'].messagesSent).toBe(11);
    expect(snapshot.routes['/ticker'].messagesDropped).toEqual({
      rateLimit: 0,
      slowConsumer: 4,
      volatile: 5,
    });
    expect(snapshot.unmatchedHandshakes).toEqual({ 400: 1, 404: 1 });
  });

  it('without prom-client: WsRoutesMetrics.snapshot() gives the same counts as plain data', async () => {
    t = await startApp(appModule(true));
    const metrics = t.app.get(WsRoutesMetrics);
    expect(metrics.enabled).toBe(true);
    const client = await open('/rooms/lobby');
    const seen = traffic(client);
    client.send({ event: 'echo', data: 'é' });
    await client.nextJson();
    expect((await refusedUpgrade(t.url('/private'))).status).toBe(403);
    client.socket.close();
    await eventually(() => t!.app.get(WsConnectionRegistry).size === 0);

    const snapshot = metrics.snapshot();
    expect(JSON.parse(JSON.stringify(snapshot))).toEqual(snapshot); // plain data
    expect(snapshot.enabled).toBe(true);
    expect(snapshot.transport).toBeUndefined();
    expect(Object.keys(snapshot.routes).sort()).toEqual(
      ['/feed', '/limited', '/private', '/rooms/:id', '/ticker'].sort(),
    );
    const room = snapshot.routes['/rooms/:id'];
    expect(room).toMatchObject({
      connectionsOpen: 0,
      handshakes: { 101: 1 },
      messagesReceived: 1,
      bytesReceived: seen.bytesOut,
      messagesSent: 1,
      bytesSent: seen.bytesIn,
      messagesDropped: { rateLimit: 0, slowConsumer: 0, volatile: 0 },
      slowConsumerCloses: 0,
      rateLimitCloses: 0,
      handlerErrors: 0,
    });
    expect(room.handlerDuration.count).toBe(1);
    expect(room.handlerDuration.buckets).toHaveLength(16);
    expect(room.handlerDuration.buckets.at(-1)).toEqual({ le: 10, count: 1 });
    expect(snapshot.routes['/private'].handshakes).toEqual({ 101: 0, 403: 1 });
  });

  it('is off by default: nothing is counted, and the snapshot says so', async () => {
    t = await startApp(appModule(undefined));
    const metrics = t.app.get(WsRoutesMetrics);
    const client = await open('/rooms/lobby');
    client.send({ event: 'echo', data: 'x' });
    await client.nextJson();
    expect(t.app.get(BroadcastService).send('all')).toBe(1);
    await client.next();
    expect(metrics.enabled).toBe(false);
    expect(metrics.snapshot()).toEqual({
      enabled: false,
      routes: {},
      unmatchedHandshakes: {},
      broadcastRecipients: { buckets: [], sum: 0, count: 0 },
      transport: undefined,
    });
  });

  it("prom-client's default registry (the one @willsoto/nestjs-prometheus serves), OpenMetrics, JSON", async () => {
    t = await startApp(appModule({ registry: defaultRegister, prefix: 'chat_' }, defaultRegister));
    try {
      const client = await open('/rooms/1');
      client.send({ event: 'echo', data: 'x' });
      await client.nextJson();
      const s = await scrape(t.http('/metrics'));
      expect(s.value('chat_messages_received_total', { route: '/rooms/:id' })).toBe(1);
      expect(s.types.has('ws_messages_received_total')).toBe(false);

      // The registry's own formats work on our metrics as on its own.
      const json = await defaultRegister.getMetricsAsJSON();
      const received = json.find((m) => m.name === 'chat_messages_received_total');
      expect(received?.type).toBe('counter');
      expect(received?.values).toContainEqual({ value: 1, labels: { route: '/rooms/:id' } });
      defaultRegister.setDefaultLabels({ instance: 'a' });
      try {
        const withDefaults = parseExposition(await defaultRegister.metrics());
        expect(
          withDefaults.value('chat_messages_received_total', {
            route: '/rooms/:id',
            instance: 'a',
          }),
        ).toBe(1);
      } finally {
        defaultRegister.setDefaultLabels({});
      }
    } finally {
      await t.app.close();
      t = undefined;
    }
    // Closed: its metrics left the registry, so the next application can register them again.
    expect(defaultRegister.getSingleMetric('chat_messages_received_total')).toBeUndefined();

    const openMetrics = new Registry<OpenMetricsContentType>();
    openMetrics.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    t = await startApp(appModule({ registry: openMetrics }, openMetrics));
    const client = await open('/rooms/1');
    client.send({ event: 'echo', data: 'x' });
    await client.nextJson();
    const s = await scrape(t.http('/metrics'));
    expect(s.contentType).toContain('application/openmetrics-text');
    expect(s.text.endsWith('# EOF\n')).toBe(true);
    expect(s.types.get('ws_messages_received')).toBe('counter');
    expect(s.value('ws_messages_received_total', { route: '/rooms/:id' })).toBe(1);
    expect(s.value('ws_handler_duration_seconds_count', { route: '/rooms/:id' })).toBe(1);
  });

  it("refuse: 'close' counts the refusal's status, not the 101 that carries it", async () => {
    const registry = new Registry();
    @Module({
      imports: [WsRoutesModule.forRoot({ metrics: { registry } })],
      controllers: [MetricsController],
      providers: [MembersRoute, { provide: REGISTRY, useValue: registry }],
    })
    class RefuseCloseModule {}
    t = await startApp(RefuseCloseModule);
    for (let i = 0; i < 2; i++) {
      const refused = await open('/members');
      expect((await refused.closed).code).toBe(4403);
    }
    const s = await scrape(t.http('/metrics'));
    expect(s.samples('ws_handshakes_total')).toEqual([
      { labels: { route: '/members', status: '101' }, value: 0 },
      { labels: { route: '/members', status: '403' }, value: 2 },
    ]);
    expect(s.value('ws_connections_open', { route: '/members' })).toBe(0);
  });

  it('forRootAsync: the registry comes from a provider of another module', async () => {
    const registry = new Registry();
    @Module({ providers: [{ provide: REGISTRY, useValue: registry }], exports: [REGISTRY] })
    class RegistryModule {}
    @Module({
      imports: [
        RegistryModule,
        WsRoutesModule.forRootAsync({
          imports: [RegistryModule],
          inject: [REGISTRY],
          useFactory: (injected: Registry) => ({ metrics: { registry: injected } }),
        }),
      ],
      controllers: [MetricsController],
      providers: [RoomRoute],
    })
    class AsyncModule {}
    t = await startApp(AsyncModule);
    const client = await open('/rooms/5');
    client.send({ event: 'echo', data: 'x' });
    await client.nextJson();
    const s = await scrape(t.http('/metrics'));
    expect(s.value('ws_messages_received_total', { route: '/rooms/:id' })).toBe(1);
    expect(s.value('ws_messages_sent_total', { route: '/rooms/:id' })).toBe(1);
  });

  it('a registry that already has one of the names stops the start with an error naming it', async () => {
    const registry = new Registry();
    const first = await startApp(appModule({ registry }, registry));
    try {
      expect((await startFailure(appModule({ registry }, registry))).message).toMatch(
        /metrics\.registry already has a metric named ws_connections_open/,
      );
      // The first application's metrics are untouched.
      expect((await scrape(first.http('/metrics'))).types.get('ws_connections_open')).toBe('gauge');
    } finally {
      await first.app.close();
    }
    // Both gone: a third application registers them.
    t = await startApp(appModule({ registry }, registry));
    expect(
      (await scrape(t.http('/metrics'))).value('ws_connections_open', { route: '/feed' }),
    ).toBe(0);
  });

  it.each([
    [{ prefix: '1ws_' }, /option metrics\.prefix must start a Prometheus metric name/],
    [{ prefix: 'ws-' }, /option metrics\.prefix/],
    [{ handlerDurationBuckets: [0.1, 0.01] }, /option metrics\.handlerDurationBuckets/],
    [{ broadcastRecipientsBuckets: [] }, /option metrics\.broadcastRecipientsBuckets/],
    [{ registry: {} }, /option metrics\.registry must be a prom-client Registry/],
    ['yes', /option metrics must be true, false or/],
  ])('refuses metrics %j at start-up', async (metrics, message) => {
    const error = await startFailure(appModule(metrics as WsRoutesModuleOptions['metrics']));
    expect(error.message).toMatch(message);
  });
});

/** Scrapes `url` until `check` holds (every 100 ms, at most `timeout`). */
async function scrapeUntil(
  url: string,
  check: (s: Scrape) => boolean,
  timeout = 15_000,
): Promise<Scrape> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const s = await scrape(url);
    if (check(s)) return s;
    if (Date.now() > deadline) throw new Error(`scrape condition not met in ${timeout} ms`);
    await delay(100);
  }
}

describeRedis('metrics of the Redis transport', () => {
  let redis: RedisServer;
  const apps: TestApp[] = [];
  const clients: TestClient[] = [];

  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    for (const client of clients.splice(0)) client.socket.terminate();
    for (const app of apps.splice(0)) await app.app.close();
    await redis?.stop();
  });

  async function instance(): Promise<{ t: TestApp; url: string }> {
    const registry = new Registry();
    const transport = new RedisBroadcastTransport({
      url: redis.url,
      keyPrefix: 'metrics-e2e',
      linger: 50,
      logger: new CapturingLogger(),
    });
    @Module({
      imports: [WsRoutesModule.forRoot({ broadcastTransport: transport, metrics: { registry } })],
      controllers: [MetricsController],
      providers: [RoomRoute, { provide: REGISTRY, useValue: registry }],
    })
    class RedisMetricsModule {}
    const t = await startApp(RedisMetricsModule);
    apps.push(t);
    return { t, url: t.http('/metrics') };
  }

  it('ws_transport_up is 1 while Redis is reached and 0 once redis-server is killed; publishes, failures and received frames are counted', async () => {
    const a = await instance();
    const b = await instance();
    const up = (s: Scrape) => s.value('ws_transport_up');
    const aReady = await scrapeUntil(
      a.url,
      (s) => up(s) === 1 && s.value('ws_transport_instances') === 1,
    );
    const bReady = await scrapeUntil(
      b.url,
      (s) => up(s) === 1 && s.value('ws_transport_instances') === 1,
    );
    for (const s of [aReady, bReady]) {
      expect(s.types.get('ws_transport_up')).toBe('gauge');
      expect(s.value('ws_transport_publish_failures_total')).toBe(0);
      expect(s.value('ws_transport_outages_total')).toBe(0);
    }

    const onB = await TestClient.open(b.t.url('/rooms/9'));
    clients.push(onB);
    const receivedBefore = bReady.value('ws_transport_received_total')!;
    const publishedBefore = aReady.value('ws_transport_published_total')!;
    expect(a.t.app.get(BroadcastService).send('across')).toBe(0);
    expect(await onB.next()).toBe('across');
    const aAfter = await scrape(a.url);
    const bAfter = await scrape(b.url);
    // One broadcast to everyone is one frame on the everyone channel.
    expect(aAfter.value('ws_transport_published_total')).toBe(publishedBefore + 1);
    expect(bAfter.value('ws_transport_received_total')).toBe(receivedBefore + 1);
    // B wrote it to its one connection; A had none.
    expect(bAfter.value('ws_broadcast_recipients_bucket', { le: '1' })).toBe(1);
    expect(aAfter.value('ws_broadcast_recipients_bucket', { le: '0' })).toBe(1);
    expect(bAfter.value('ws_messages_sent_total', { route: '/rooms/:id' })).toBe(1);

    await redis.kill();
    const down = await scrapeUntil(a.url, (s) => up(s) === 0);
    expect(down.value('ws_transport_outages_total')).toBe(1);
    expect(a.t.app.get(BroadcastService).send('lost')).toBe(0);
    const failed = await scrapeUntil(
      a.url,
      (s) => s.value('ws_transport_publish_failures_total') === 1,
    );
    expect(up(failed)).toBe(0);
    expect(a.t.app.get(WsRoutesMetrics).snapshot().transport).toEqual({
      up: false,
      publishFailures: 1,
      published: failed.value('ws_transport_published_total'),
      received: failed.value('ws_transport_received_total'),
      outages: 1,
      instances: failed.value('ws_transport_instances'),
    });

    await redis.restart();
    await scrapeUntil(a.url, (s) => up(s) === 1, 30_000);
    await scrapeUntil(b.url, (s) => up(s) === 1, 30_000);
  }, 90_000);
});
