import 'reflect-metadata';
import {
  ForbiddenException,
  HttpException,
  Injectable,
  Module,
  UseGuards,
  type CanActivate,
  type ExecutionContext,
  type Type,
} from '@nestjs/common';
import { WebSocket } from 'ws';
import {
  ConnectedSocket,
  isWsHandshake,
  MessageBody,
  OnMessage,
  OnOpen,
  WsConnection,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesModule,
  type HandshakeRequest,
  type HandshakeResponse,
} from '../../lib/index.js';
import { CapturingLogger, startApp, type TestApp } from '../utils/app.js';
import { parseHttpResponse, RawSocket, upgradeRequest } from '../utils/raw-socket.js';
import { delay, eventually, refusedUpgrade, TestClient } from '../utils/ws-client.js';

/**
 * The handshake findings of issue 9 (security, defaults, user callbacks), each over a real
 * socket. Crashes that need a child process (resets during async guards) are in crash.spec.ts
 * and chaos.spec.ts.
 */

const SECRET = 'hunter2-secret';

/** Sends one upgrade request over raw TCP and returns the server's answer head and body. */
async function rawUpgrade(
  port: number,
  path: string,
  headers?: Record<string, string | undefined>,
): Promise<{ head: string; status: number; raw: RawSocket }> {
  const raw = await RawSocket.connect(port);
  raw.write(upgradeRequest(path, { headers }));
  await raw.waitFor((data) => data.includes('\r\n\r\n'), 3000, 'an answer to the upgrade');
  const response = parseHttpResponse(raw.received)!;
  return { head: response.head, status: response.status, raw };
}

/** A refusal, or a rejection after `ms` (an upgrade nobody answers hangs forever otherwise). */
function refusedWithin(
  url: string,
  options?: Parameters<typeof refusedUpgrade>[1],
  ms = 3000,
): ReturnType<typeof refusedUpgrade> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer to ${url} within ${ms} ms`)), ms);
  });
  return Promise.race([refusedUpgrade(url, options), expired]).finally(() => clearTimeout(timer));
}

function guard(check: (request: HandshakeRequest, response: HandshakeResponse) => unknown): Type {
  @Injectable()
  class HandshakeOnlyGuard implements CanActivate {
    async canActivate(context: ExecutionContext): Promise<boolean> {
      if (!isWsHandshake(context)) return true;
      const http = context.switchToHttp();
      return Boolean(
        await check(http.getRequest<HandshakeRequest>(), http.getResponse<HandshakeResponse>()),
      );
    }
  }
  return HandshakeOnlyGuard;
}

const InjectingGuard = guard((_request, response) => {
  response.setHeader('X-Note', 'a\r\nSet-Cookie: injected=1');
  return true;
});
const InjectingNameGuard = guard((_request, response) => {
  response.setHeader('X-Note\r\nSet-Cookie: injected=1\r\nX-More', 'a');
  return true;
});
/** Goes around setHeader() and writes into the headers object itself. */
const DirectHeadersGuard = guard((_request, response) => {
  response.headers['X-Good'] = 'yes';
  response.headers['X-Bad'] = 'a\r\nSet-Cookie: injected=1';
  return true;
});
const SlowGuard = guard(() => delay(300).then(() => true));
const RefusingGuard = guard((request, response) => {
  switch (request.query.mode) {
    case 'throw':
      throw new Error('guard exploded');
    case '503':
      throw new HttpException('Backend down', 503);
    case '200':
      throw new HttpException('Not an error status', 200);
    case 'inject':
      response.headers['WWW-Authenticate'] = 'Bearer realm="ws"';
      response.headers['X-Bad'] = 'a\r\nSet-Cookie: injected=1';
      throw new HttpException('Token required', 401);
    default:
      throw new ForbiddenException('No entry');
  }
});

@WsRoute('/inject')
@UseGuards(InjectingGuard)
class InjectRoute {}

@WsRoute('/inject-name')
@UseGuards(InjectingNameGuard)
class InjectNameRoute {}

@WsRoute('/inject-direct')
@UseGuards(DirectHeadersGuard)
class InjectDirectRoute {
  @OnOpen() open() {
    return 'opened';
  }
}

@WsRoute('/slow')
@UseGuards(SlowGuard)
class SlowRoute {
  @OnOpen() open() {
    return 'slow but open';
  }
}

@WsRoute('/refuse')
@UseGuards(RefusingGuard)
class RefuseRoute {}

@WsRoute('/demand')
class DemandRoute {
  @OnOpen() open() {
    return 'demand';
  }
}

@WsRoute('/rooms/:room')
class RoomRoute {
  @OnOpen() open(@ConnectedSocket() conn: WsConnection) {
    return `room ${conn.params.room}`;
  }
}

@WsRoute('/proto-throws', {
  selectProtocol: () => {
    throw new Error('selectProtocol exploded');
  },
})
class ProtoThrowsRoute {}

@WsRoute('/proto-offlist', { selectProtocol: () => 'never-offered' })
class ProtoOffListRoute {}

@WsRoute('/echo')
class EchoRoute {
  @OnMessage() echo(@MessageBody() body: string) {
    return body;
  }
}

const logger = new CapturingLogger();

@Module({
  imports: [WsRoutesModule.forRoot({ handshakeTimeout: 0 })],
  providers: [
    InjectingGuard,
    InjectingNameGuard,
    DirectHeadersGuard,
    SlowGuard,
    RefusingGuard,
    InjectRoute,
    InjectNameRoute,
    InjectDirectRoute,
    SlowRoute,
    RefuseRoute,
    DemandRoute,
    RoomRoute,
    ProtoThrowsRoute,
    ProtoOffListRoute,
    EchoRoute,
  ],
})
class HardeningModule {}

describe('handshake hardening', () => {
  let t: TestApp;
  let registry: WsConnectionRegistry;
  beforeAll(async () => {
    t = await startApp(HardeningModule, { logger });
    registry = t.app.get(WsConnectionRegistry);
  });
  afterAll(() => t.app.close());

  /** A normal client still gets its echo. */
  async function expectServing(): Promise<void> {
    const client = await TestClient.open(t.url('/echo'));
    client.send('still here');
    expect(await client.next()).toBe('still here');
    await client.close();
  }

  describe('response headers a guard sets', () => {
    it('a "\\r\\n" in a value set with setHeader() gets a logged 500 and no injected header', async () => {
      const from = logger.lines.length;
      const { head, status, raw } = await rawUpgrade(t.port, '/inject');
      expect(status).toBe(500);
      expect(head).not.toMatch(/injected/i);
      expect(head).not.toMatch(/x-note/i);
      expect(head.split('\r\n').every((line) => !/^set-cookie/i.test(line))).toBe(true);
      await raw.waitClosed();
      const logged = logger.lines.slice(from).map((line) => line.text);
      expect(logged.some((text) => text.includes('A handshake guard of /inject threw'))).toBe(true);
      await expectServing();
    });

    it('a "\\r\\n" in a header name gets a logged 500 and no injected header', async () => {
      const { head, status } = await rawUpgrade(t.port, '/inject-name');
      expect(status).toBe(500);
      expect(head).not.toMatch(/injected/i);
    });

    it('an invalid header written into response.headers directly is dropped from the 101 and logged', async () => {
      const from = logger.lines.length;
      const { head, status, raw } = await rawUpgrade(t.port, '/inject-direct');
      expect(status).toBe(101);
      expect(head).toContain('\r\nX-Good: yes');
      expect(head).not.toMatch(/injected|x-bad/i);
      raw.destroy();
      const logged = logger.lines.slice(from).map((line) => line.text);
      expect(
        logged.some((text) =>
          text.includes('Dropped response header X-Bad of the upgrade of /inject-direct'),
        ),
      ).toBe(true);
      expect(logged.join('\n')).not.toContain('injected=1');
    });

    it('an invalid header written into response.headers directly is dropped from a refusal and logged', async () => {
      const from = logger.lines.length;
      const { head, status, raw } = await rawUpgrade(t.port, '/refuse?mode=inject');
      expect(status).toBe(401);
      expect(head).toContain('\r\nWWW-Authenticate: Bearer realm="ws"');
      expect(head).not.toMatch(/injected|x-bad/i);
      await raw.waitClosed();
      const logged = logger.lines.slice(from).map((line) => line.text);
      expect(
        logged.some((text) =>
          text.includes('Dropped response header X-Bad of the refusal of /refuse'),
        ),
      ).toBe(true);
    });
  });

  describe('log lines', () => {
    it('name the path of a refused upgrade, never its query string', async () => {
      const from = logger.lines.length;
      const query = `?token=${SECRET}`;
      expect((await refusedWithin(t.url(`/refuse${query}`))).status).toBe(403);
      expect((await refusedWithin(t.url(`/refuse${query}&mode=throw`))).status).toBe(500);
      expect((await refusedWithin(t.url(`/refuse${query}&mode=503`))).status).toBe(503);
      expect(
        (await refusedWithin(t.url(`/demand${query}`), { origin: 'https://elsewhere.example' }))
          .status,
      ).toBe(403);
      expect((await refusedWithin(t.url(`/rooms/%E0%A4%A${query}`))).status).toBe(400);
      const { status } = await rawUpgrade(t.port, `/demand${query}`, {
        'Sec-WebSocket-Version': '12',
      });
      expect(status).toBe(426);

      const logged = logger.lines.slice(from).map((line) => line.text);
      expect(
        logged.filter((text) => text.startsWith('Refused upgrade of /refuse from')),
      ).toHaveLength(3);
      expect(logged.some((text) => text.startsWith('Refused upgrade of /demand from'))).toBe(true);
      expect(logged.some((text) => text.includes('/rooms/%E0%A4%A from'))).toBe(true);
      expect(logged.length).toBeGreaterThanOrEqual(7);
      for (const text of logged) {
        expect(text).not.toContain(SECRET);
        expect(text).not.toContain('token=');
      }
    });
  });

  describe('every step ends in an HTTP answer', () => {
    it('an HttpException with a non-error status is a logged 500, not a 200 or a 101', async () => {
      const refused = await refusedWithin(t.url('/refuse?mode=200'));
      expect(refused.status).toBe(500);
      expect(JSON.parse(refused.body)).toEqual({
        statusCode: 500,
        message: 'Internal server error',
      });
    });

    it('a request target that is not a URL gets 400', async () => {
      const { status, raw } = await rawUpgrade(t.port, '/demand', { Host: '[::1' });
      expect(status).toBe(400);
      await raw.waitClosed();
      await expectServing();
    });
  });

  describe('handshakeTimeout: 0', () => {
    it('never cuts off a 300 ms async guard', async () => {
      const started = Date.now();
      const client = await TestClient.open(t.url('/slow'));
      expect(Date.now() - started).toBeGreaterThanOrEqual(280);
      expect(await client.next()).toBe('slow but open');
      await client.close();
    });
  });

  describe('route matching', () => {
    it('is case-sensitive for static routes, trailing slash tolerated', async () => {
      expect((await refusedWithin(t.url('/DEMAND'))).status).toBe(404);
      expect((await refusedWithin(t.url('/Demand/'))).status).toBe(404);
      for (const path of ['/demand', '/demand/']) {
        const client = await TestClient.open(t.url(path));
        expect(await client.next()).toBe('demand');
        await client.close();
      }
    });

    it('is case-sensitive for parameterised routes; parameters keep their case', async () => {
      expect((await refusedWithin(t.url('/ROOMS/lobby'))).status).toBe(404);
      expect((await refusedWithin(t.url('/Rooms/lobby'))).status).toBe(404);
      const client = await TestClient.open(t.url('/rooms/Lobby'));
      expect(await client.next()).toBe('room Lobby');
      await client.close();
    });
  });

  describe('connection limits by default', () => {
    it('accepts 300 connections from one IP (no per-IP limit unless configured)', async () => {
      const clients: TestClient[] = [];
      try {
        for (let batch = 0; batch < 6; batch++) {
          clients.push(
            ...(await Promise.all(
              Array.from({ length: 50 }, () => TestClient.open(t.url('/echo'))),
            )),
          );
        }
        expect(registry.size).toBe(300);
        const last = clients[clients.length - 1];
        last.send('number 300');
        expect(await last.next()).toBe('number 300');
      } finally {
        await Promise.all(clients.map((client) => client.close()));
      }
      await eventually(() => registry.size === 0, 5000);
    });
  });

  describe('selectProtocol', () => {
    it('that throws gives a logged 500 and the server keeps serving', async () => {
      const from = logger.lines.length;
      const refused = await refusedWithin(t.url('/proto-throws'), { protocols: ['chat.v1'] });
      expect(refused.status).toBe(500);
      expect(refused.body).not.toContain('exploded');
      const logged = logger.lines.slice(from).map((line) => line.text);
      expect(logged.some((text) => text.includes('selectProtocol exploded'))).toBe(true);
      await expectServing();
      // Without an offer there is nothing to choose, and the connection opens.
      const client = await TestClient.open(t.url('/proto-throws'));
      expect(client.socket.readyState).toBe(WebSocket.OPEN);
      await client.close();
    });

    it('that picks a protocol the client did not offer gives a logged 500', async () => {
      const refused = await refusedWithin(t.url('/proto-offlist'), { protocols: ['chat.v1'] });
      expect(refused.status).toBe(500);
      expect(logger.text('error')).toContain('"never-offered", which the client did not offer');
      await expectServing();
    });
  });
});

describe('handshake timeout log line', () => {
  @WsRoute('/slow')
  @UseGuards(SlowGuard)
  class SlowTimedRoute {}

  @Module({
    imports: [WsRoutesModule.forRoot({ handshakeTimeout: 100 })],
    providers: [SlowGuard, SlowTimedRoute],
  })
  class TimedModule {}

  it('names the path only', async () => {
    const timedLogger = new CapturingLogger();
    const timed = await startApp(TimedModule, { logger: timedLogger });
    try {
      expect((await refusedWithin(timed.url(`/slow?token=${SECRET}`))).status).toBe(503);
      expect(timedLogger.text()).toContain('Refused upgrade of /slow from 127.0.0.1: 503');
      expect(timedLogger.text()).not.toContain(SECRET);
    } finally {
      await timed.app.close();
    }
  });
});

describe('heartbeat { interval: 300, timeout: 300 }', () => {
  @WsRoute('/beat', { heartbeat: { interval: 300, timeout: 300 } })
  class BeatRoute {
    @OnMessage() echo(@MessageBody() body: string) {
      return body;
    }
  }

  @Module({ imports: [WsRoutesModule.forRoot()], providers: [BeatRoute] })
  class BeatModule {}

  it('boots, pings, and keeps a peer that answers', async () => {
    const beat = await startApp(BeatModule);
    try {
      const client = await TestClient.open(beat.url('/beat'));
      let pings = 0;
      client.socket.on('ping', () => pings++);
      await delay(1000);
      expect(pings).toBeGreaterThanOrEqual(2);
      expect(client.socket.readyState).toBe(WebSocket.OPEN);
      client.send('alive');
      expect(await client.next()).toBe('alive');
      await client.close();
    } finally {
      await beat.app.close();
    }
  });
});

describe('route configuration errors', () => {
  it.each([
    [{ heartbeat: { interval: 300, timeout: 301 } }, 'heartbeat'],
    [{ maxBufferedAmount: 1024, lowWatermark: 1024 }, 'lowWatermark'],
    [{ maxPayload: 0 }, 'maxPayload'],
    [{ maxQueuedBytes: 0 }, 'maxQueuedBytes'],
  ])('%j fails the start with an Error naming the route and %s', async (options, option) => {
    @WsRoute('/misconfigured/:id', options)
    class MisconfiguredRoute {}

    @Module({ imports: [WsRoutesModule.forRoot()], providers: [MisconfiguredRoute] })
    class MisconfiguredModule {}

    let failure: unknown;
    try {
      const started = await startApp(MisconfiguredModule);
      await started.app.close();
    } catch (error) {
      failure = error;
    }
    expect(failure).toBeInstanceOf(Error);
    expect((failure as Error).message).toMatch(
      new RegExp(`^@WsRoute\\('/misconfigured/:id'\\): option ${option} `),
    );
  });
});
