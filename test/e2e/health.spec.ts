import 'reflect-metadata';
import { get } from 'node:http';
import { Controller, Get, Module, Query } from '@nestjs/common';
import { HealthCheck, HealthCheckService, TerminusModule } from '@nestjs/terminus';
import {
  CloseCode,
  OnOpen,
  SHUTDOWN_CLOSE_REASON,
  WsRoute,
  WsRoutesGateway,
  WsRoutesModule,
} from '../../lib/index.js';
import { WsRoutesHealthIndicator } from '../../lib/terminus/index.js';
import { startApp, type TestApp } from '../utils/app.js';
import { startChildApp, type ChildApp } from '../utils/child-app.js';
import { describeRedis, startRedis, type RedisServer } from '../utils/redis-server.js';
import { delay, eventually, refusedUpgrade, TestClient } from '../utils/ws-client.js';

/**
 * Health and rolling deploys: `WsRoutesHealthIndicator` (nestjs-ws-routes/terminus) reports
 * connections against their limits, the broadcast transport and the shutdown; on SIGTERM the
 * indicator turns down first, the app serves on for `drainDelay`, then refuses upgrades with
 * 503 and closes connections with 1001 within `shutdownTimeout`.
 */

interface Health {
  status: number;
  body: {
    status: string;
    details: Record<string, Record<string, unknown>>;
    error?: Record<string, Record<string, unknown>>;
  };
}

/**
 * One GET on a connection of its own (`agent: false`): fetch's pool would reuse a keep-alive
 * socket that the shutting-down server has just closed as idle, and read ECONNRESET.
 */
function health(url: string): Promise<Health> {
  return new Promise((resolve, reject) => {
    const request = get(url, { agent: false, timeout: 3000 }, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (text += chunk));
      response.on('end', () => {
        try {
          resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) as Health['body'] });
        } catch (error) {
          reject(error instanceof Error ? error : new Error(String(error)));
        }
      });
    });
    request.on('timeout', () => request.destroy(new Error(`GET ${url}: no answer in 3 s`)));
    request.on('error', reject);
  });
}

/** Polls `url` until `done(health)` holds; fails after `timeout` ms with the last answer. */
async function healthUntil(
  url: string,
  done: (health: Health) => boolean,
  timeout: number,
): Promise<Health> {
  const deadline = Date.now() + timeout;
  let last: Health | undefined;
  for (;;) {
    last = await health(url);
    if (done(last)) return last;
    if (Date.now() > deadline)
      throw new Error(`health never matched within ${timeout} ms: ${JSON.stringify(last)}`);
    await delay(20);
  }
}

@WsRoute('/room', { maxConnections: 5 })
class RoomRoute {
  @OnOpen() open() {
    return 'welcome';
  }
}

@Controller()
class ThresholdHealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly ws: WsRoutesHealthIndicator,
  ) {}

  @Get('health')
  @HealthCheck()
  check(@Query('threshold') threshold?: string) {
    return this.health.check([
      () =>
        this.ws.isHealthy('ws', {
          connectionsThreshold: threshold ? Number(threshold) : undefined,
        }),
    ]);
  }
}

@Module({
  imports: [
    WsRoutesModule.forRoot({ maxConnections: 4, heartbeat: false }),
    TerminusModule.forRoot({ logger: false }),
  ],
  controllers: [ThresholdHealthController],
  providers: [RoomRoute, WsRoutesHealthIndicator],
})
class LimitsModule {}

describe('WsRoutesHealthIndicator: connections against their limits', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp(LimitsModule);
  });
  afterAll(() => t.app.close());

  it('is up with the counts, and down once maxConnections (or the threshold) is taken', async () => {
    const up = await health(t.http('/health'));
    expect(up.status).toBe(200);
    expect(up.body.details.ws).toEqual({
      status: 'up',
      connections: 0,
      handshakes: 0,
      maxConnections: 4,
      routes: { '/room': { connections: 0, maxConnections: 5 } },
      transportReady: true,
      shuttingDown: false,
    });

    const clients: TestClient[] = [];
    for (let i = 0; i < 2; i++) {
      clients.push(await TestClient.open(t.url('/room')));
      expect(await clients[i].next()).toBe('welcome');
    }
    expect((await health(t.http('/health'))).status).toBe(200);
    const half = await health(t.http('/health?threshold=0.5'));
    expect(half.status).toBe(503);
    expect(half.body.error?.ws).toMatchObject({
      status: 'down',
      connections: 2,
      message: '2 of 4 connections taken',
    });

    for (let i = 2; i < 4; i++) {
      clients.push(await TestClient.open(t.url('/room')));
      expect(await clients[i].next()).toBe('welcome');
    }
    const full = await health(t.http('/health'));
    expect(full.status).toBe(503);
    expect(full.body.error?.ws).toMatchObject({
      status: 'down',
      connections: 4,
      routes: { '/room': { connections: 4, maxConnections: 5 } },
      message: '4 of 4 connections taken',
    });
    // What the indicator said: the next upgrade is refused.
    expect((await refusedUpgrade(t.url('/room'))).status).toBe(503);

    await clients.pop()!.close();
    await eventually(() => t.app.get(WsRoutesGateway).status().connections === 3);
    expect((await health(t.http('/health'))).status).toBe(200);
    await Promise.all(clients.map((client) => client.close()));
  });

  it('refuses a threshold outside (0, 1] with a 500, not a silent up', async () => {
    const response = await fetch(t.http('/health?threshold=2'));
    expect(response.status).toBe(500);
  });
});

describe('rolling deploy: a real SIGTERM to the app (child process)', () => {
  const DRAIN_DELAY = 1500;
  const SHUTDOWN_TIMEOUT = 2000;
  let child: ChildApp | undefined;
  afterEach(async () => {
    await child?.stop(1000);
  });

  it('reports down first, serves through drainDelay, then 503 for upgrades, 1001 for connections, and exits', async () => {
    child = await startChildApp('test/fixtures/health-app.ts', {
      env: { DRAIN_DELAY: String(DRAIN_DELAY), SHUTDOWN_TIMEOUT: String(SHUTDOWN_TIMEOUT) },
    });
    const app = child;
    const healthUrl = `http://127.0.0.1:${app.port}/health`;
    const clients: TestClient[] = [];
    for (let i = 0; i < 3; i++) {
      clients.push(await TestClient.open(app.url('/live')));
      expect(await clients[i].next()).toBe('welcome');
    }
    // One client that stops reading: it never answers the 1001, so the closing phase lasts
    // until shutdownTimeout, when the server terminates it.
    const stuck = await TestClient.open(app.url('/live'));
    expect(await stuck.next()).toBe('welcome');
    const up = await health(healthUrl);
    expect(up.status).toBe(200);
    expect(up.body.details.websocket).toMatchObject({
      status: 'up',
      connections: 4,
      transportReady: true,
      shuttingDown: false,
    });
    stuck.socket.pause();

    const closedAt = clients.map((client) =>
      client.closed.then((close) => ({ ...close, at: Date.now() })),
    );
    const signalledAt = Date.now();
    process.kill(app.pid, 'SIGTERM');

    // 1. Down first, while connections are still served and upgrades still accepted.
    const draining = await healthUntil(healthUrl, (h) => h.status === 503, 2000);
    const downAt = Date.now();
    expect(draining.body.error?.websocket).toMatchObject({
      status: 'down',
      shuttingDown: true,
      connections: 4,
      message: 'shutting down (draining)',
    });
    clients[0].emit('ping');
    expect(await clients[0].next()).toBe('pong');
    const late = await TestClient.open(app.url('/live'));
    expect(await late.next()).toBe('welcome');
    const lateClosed = late.closed.then((close) => ({ ...close, at: Date.now() }));

    // 2. After drainDelay: new upgrades get 503.
    const closing = await healthUntil(
      healthUrl,
      (h) => h.body.error?.websocket?.message === 'shutting down (closing)',
      DRAIN_DELAY + 3000,
    );
    const closingAt = Date.now();
    expect(closing.status).toBe(503);
    expect(closingAt - signalledAt).toBeGreaterThanOrEqual(DRAIN_DELAY - 50);
    const refused = await refusedUpgrade(app.url('/live'));
    expect(refused.status).toBe(503);
    expect(refused.headers['retry-after']).toBe('5');
    expect(JSON.parse(refused.body)).toMatchObject({ message: SHUTDOWN_CLOSE_REASON });

    // 3. Every connection that answers gets 1001, after the indicator turned down.
    const closes = await Promise.all([...closedAt, lateClosed]);
    for (const close of closes) {
      expect(close).toMatchObject({ code: CloseCode.GoingAway, reason: SHUTDOWN_CLOSE_REASON });
      expect(close.at).toBeGreaterThanOrEqual(downAt);
      expect(close.at - signalledAt).toBeGreaterThanOrEqual(DRAIN_DELAY - 50);
    }

    // 4. The process exits within drainDelay + shutdownTimeout (+ a margin for a loaded box).
    const exit = await Promise.race([
      app.exited,
      delay(DRAIN_DELAY + SHUTDOWN_TIMEOUT + 5000).then(() => undefined),
    ]);
    const exitedIn = Date.now() - signalledAt;
    expect(exit).toBeDefined();
    // Nest re-raises the signal once the hooks are done: killed by SIGTERM, not a crash.
    expect(exit).toEqual({ code: null, signal: 'SIGTERM' });
    expect(exitedIn).toBeGreaterThanOrEqual(DRAIN_DELAY + SHUTDOWN_TIMEOUT - 100);
    expect(exitedIn).toBeLessThan(DRAIN_DELAY + SHUTDOWN_TIMEOUT + 5000);
    // The stuck client had the 1001 in its buffer all along; it just never answered it.
    stuck.socket.resume();
    expect((await stuck.closed).code).toBe(CloseCode.GoingAway);

    // 5. @OnClose ran for each: 1001 for the four that answered, 1006 for the stuck one.
    const closedLines = app.logs.filter((line) => / closed \d+ \d+$/.test(line));
    const codes = closedLines.map((line) => line.replace(/^.* closed (\d+) (\d+)$/, '$1:$2'));
    expect(codes.sort()).toEqual(['1:1001', '2:1001', '3:1001', '4:1006', '5:1001']);
    expect(app.logs.filter((line) => / opened \d+$/.test(line))).toHaveLength(5);
    expect(app.stderr).toEqual([]);
  }, 30_000);

  it('without drainDelay, SIGTERM reports down and refuses at once, as before', async () => {
    child = await startChildApp('test/fixtures/health-app.ts', {
      env: { SHUTDOWN_TIMEOUT: String(SHUTDOWN_TIMEOUT) },
    });
    const app = child;
    const healthUrl = `http://127.0.0.1:${app.port}/health`;
    const stuck = await TestClient.open(app.url('/live'));
    expect(await stuck.next()).toBe('welcome');
    stuck.socket.pause();
    const signalledAt = Date.now();
    process.kill(app.pid, 'SIGTERM');
    const down = await healthUntil(healthUrl, (h) => h.status === 503, 2000);
    expect(down.body.error?.websocket?.message).toBe('shutting down (closing)');
    expect((await refusedUpgrade(app.url('/live'))).status).toBe(503);
    expect(Date.now() - signalledAt).toBeLessThan(SHUTDOWN_TIMEOUT);
    const exit = await app.exited;
    expect(exit.signal).toBe('SIGTERM');
    stuck.socket.resume();
  }, 20_000);
});

describeRedis('WsRoutesHealthIndicator with the Redis transport', () => {
  let server: RedisServer;
  let child: ChildApp | undefined;
  beforeAll(async () => {
    server = await startRedis();
  });
  afterAll(async () => {
    await child?.stop(1000);
    await server?.stop();
  });

  it('is down while Redis is, and up again once the subscriptions are restored', async () => {
    child = await startChildApp('test/fixtures/health-app.ts', {
      env: {
        REDIS_URL: server.url,
        PROBE_INTERVAL: '200',
        HEARTBEAT_INTERVAL: '200',
        KEY_PREFIX: `health-${process.pid}`,
      },
    });
    const app = child;
    const healthUrl = `http://127.0.0.1:${app.port}/health`;
    const client = await TestClient.open(app.url('/live'));
    expect(await client.next()).toBe('welcome');
    const up = await healthUntil(healthUrl, (h) => h.status === 200, 5000);
    expect(up.body.details.websocket).toMatchObject({ transportReady: true, connections: 1 });

    await server.kill('SIGKILL');
    const down = await healthUntil(healthUrl, (h) => h.status === 503, 5000);
    expect(down.body.error?.websocket).toMatchObject({
      status: 'down',
      transportReady: false,
      shuttingDown: false,
      connections: 1,
      message: 'the broadcast transport does not reach the other instances',
    });
    // The connection itself is still served: only the other instances are out of reach.
    client.emit('ping');
    expect(await client.next()).toBe('pong');

    await server.restart();
    const again = await healthUntil(healthUrl, (h) => h.status === 200, 10_000);
    expect(again.body.details.websocket).toMatchObject({ status: 'up', transportReady: true });
    app.assertAlive();
    await client.close();
  }, 30_000);
});
