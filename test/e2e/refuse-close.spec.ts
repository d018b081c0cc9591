import 'reflect-metadata';
import {
  HttpException,
  Injectable,
  Module,
  UnauthorizedException,
  UseGuards,
  type CanActivate,
  type ExecutionContext,
} from '@nestjs/common';
import type { Server } from 'node:http';
import {
  CloseCode,
  HandshakeResponse,
  OnClose,
  OnOpen,
  ORIGIN_REFUSED_MESSAGE,
  SHUTDOWN_CLOSE_REASON,
  WS_ROUTES_DEFAULTS,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesModule,
  type HandshakeRequest,
} from '../../lib/index.js';
import { CapturingLogger, startApp, type TestApp } from '../utils/app.js';
import {
  acceptKey,
  Opcode,
  parseHttpResponse,
  RawSocket,
  upgradeRequest,
  WS_KEY,
} from '../utils/raw-socket.js';
import {
  delay,
  eventually,
  refusedUpgrade,
  refusedWithClose,
  TestClient,
} from '../utils/ws-client.js';

/**
 * `refuse: 'close'`: a refused upgrade is a 101 closed at once with 4000 + status and the
 * reason, which a browser page can read; nothing is registered, no @OnOpen, no @OnClose.
 * Requests that cannot get a 101 keep their HTTP status; a flood of close-refusals that never
 * answer is bounded in count and in time.
 */

const events: string[] = [];

@Injectable()
class TokenGuard implements CanActivate {
  async canActivate(context: ExecutionContext): Promise<boolean> {
    const request = context.switchToHttp().getRequest<HandshakeRequest>();
    const token = request.query.token as string | undefined;
    switch (token) {
      case 'alice':
        return true;
      case undefined:
        context
          .switchToHttp()
          .getResponse<HandshakeResponse>()
          .setHeader('WWW-Authenticate', 'Bearer realm="ws"');
        throw new UnauthorizedException('Log in again');
      case 'busy':
        throw new HttpException('Slow down', 429);
      case 'slow':
        await delay(800);
        return true;
      case 'long':
        // 60 three-byte characters: 180 bytes, over the 123 a close reason may hold.
        throw new HttpException('€'.repeat(60), 409);
      case 'list':
        throw new HttpException({ message: ['name is missing', 'room is too long'] }, 400);
      case 'boom':
        throw new Error('guard exploded at /secret/path.ts:12');
      default:
        if (token.startsWith('echo-'))
          throw new UnauthorizedException(`Token ${token} has expired`);
        return false;
    }
  }
}

@WsRoute('/closing/:room', { refuse: 'close', subprotocols: ['chat.v1'], maxConnections: 2 })
@UseGuards(TokenGuard)
class ClosingRoute {
  @OnOpen() open() {
    events.push('open /closing');
    return 'welcome';
  }
  @OnClose() close() {
    events.push('close /closing');
  }
}

@WsRoute('/strict', { refuse: 'close', subprotocols: ['chat.v1'], requireProtocol: true })
class StrictRoute {
  @OnOpen() open() {
    events.push('open /strict');
  }
}

@WsRoute('/http')
@UseGuards(TokenGuard)
class HttpRoute {
  @OnOpen() open() {
    events.push('open /http');
  }
}

const logger = new CapturingLogger();

@Module({
  imports: [WsRoutesModule.forRoot({ handshakeTimeout: 400, shutdownTimeout: 3000 })],
  providers: [TokenGuard, ClosingRoute, StrictRoute, HttpRoute],
})
class AppModule {}

describe("refuse: 'close'", () => {
  let t: TestApp;
  let registry: WsConnectionRegistry;
  beforeAll(async () => {
    t = await startApp(AppModule, { logger });
    registry = t.app.get(WsConnectionRegistry);
  });
  afterAll(() => t.app.close());
  beforeEach(() => (events.length = 0));

  it("closes a guard's 401 with 4401 and its message; nothing opens, nothing closes", async () => {
    const refused = await refusedWithClose(t.url('/closing/lobby'), { protocols: ['chat.v1'] });
    expect(refused).toMatchObject({
      status: 101,
      opened: true,
      protocol: 'chat.v1',
      code: CloseCode.Unauthorized,
      reason: 'Log in again',
      clean: true,
    });
    expect(refused.code).toBe(4401);
    // The guard's header goes out with the 101, as it would with the 401.
    expect(refused.headers['www-authenticate']).toBe('Bearer realm="ws"');
    await delay(50);
    expect(events).toEqual([]);
    expect(registry.size).toBe(0);
    expect(logger.text('warn')).toContain(
      'Refused upgrade of /closing/lobby from 127.0.0.1: 401 Log in again (close 4401)',
    );

    // The same route still opens for a good token, and only then do the handlers run.
    const client = await TestClient.open(t.url('/closing/lobby?token=alice'), ['chat.v1']);
    expect(await client.next()).toBe('welcome');
    await client.close();
    await eventually(() => events.length === 2);
    expect(events).toEqual(['open /closing', 'close /closing']);
  });

  it('maps each refusal to 4000 + status: 4403, 4429, 4409, 4400, 4500', async () => {
    const url = (token: string) => t.url(`/closing/lobby?token=${token}`);
    expect(await refusedWithClose(url('nobody'))).toMatchObject({
      code: CloseCode.Forbidden,
      reason: 'Forbidden resource',
    });
    expect(await refusedWithClose(url('busy'))).toMatchObject({
      code: CloseCode.TooManyRequests,
      reason: 'Slow down',
    });
    expect(await refusedWithClose(url('list'))).toMatchObject({
      code: 4400,
      reason: 'name is missing; room is too long',
    });
    // A guard that throws something else: 4500 with the generic message, never its text.
    const boom = await refusedWithClose(url('boom'));
    expect(boom).toMatchObject({ code: 4500, reason: 'Internal server error' });
    // The origin check is a guard too.
    expect(await refusedWithClose(url('alice'), { origin: 'http://evil.example' })).toMatchObject({
      code: CloseCode.Forbidden,
      reason: ORIGIN_REFUSED_MESSAGE,
    });
    expect(events).toEqual([]);
    expect(registry.size).toBe(0);
  });

  it('cuts a long reason to 123 bytes at a character boundary', async () => {
    const refused = await refusedWithClose(t.url('/closing/lobby?token=long'));
    expect(refused.code).toBe(4409);
    expect(refused.reason).toBe('€'.repeat(41));
    expect(Buffer.byteLength(refused.reason)).toBe(123);
  });

  it('never puts a token from the query string in the reason or the log', async () => {
    const secret = 'echo-s3cr3t-t0k3n-value';
    const refused = await refusedWithClose(
      t.url(`/closing/lobby?room=x&token=${encodeURIComponent(secret)}`),
    );
    expect(refused).toMatchObject({ code: 4401, reason: 'Unauthorized' });
    expect(logger.text()).not.toContain('s3cr3t');
    expect(logger.text('warn')).toContain('/closing/lobby from 127.0.0.1: 401 Unauthorized');
  });

  it('satisfies the subprotocol check of the client: the route choice, else its first offer', async () => {
    // /strict requires chat.v1; a client offering only x.v1 is refused (4400), and the 101 of
    // the refusal names x.v1, which the client offered, so the client reads the close.
    const refused = await refusedWithClose(t.url('/strict'), { protocols: ['x.v1', 'y.v1'] });
    expect(refused).toMatchObject({
      status: 101,
      protocol: 'x.v1',
      code: 4400,
      reason: 'No acceptable subprotocol',
    });
    // A client that offered none gets a 101 without a protocol.
    const none = await refusedWithClose(t.url('/strict'));
    expect(none).toMatchObject({ protocol: '', code: 4400 });
    // A malformed offer cannot be answered with a 101 at all: HTTP 400, as with 'http'.
    const malformed = await refusedUpgrade(t.url('/strict'), {
      headers: { 'Sec-WebSocket-Protocol': 'a, a' },
    });
    expect(malformed.status).toBe(400);
    expect(events).toEqual([]);
  });

  it('keeps HTTP for requests no 101 can answer: malformed, wrong version, unknown path', async () => {
    const answers: number[] = [];
    for (const request of [
      upgradeRequest('/closing/lobby', { headers: { 'Sec-WebSocket-Key': 'short' } }),
      upgradeRequest('/closing/lobby', { headers: { 'Sec-WebSocket-Version': '12' } }),
      upgradeRequest('/closing/lobby', { method: 'POST' }),
      upgradeRequest('/closing/%E0%A4%A'),
      upgradeRequest('/nowhere'),
    ]) {
      const raw = await RawSocket.connect(t.port);
      raw.write(request);
      await raw.waitFor((data) => parseHttpResponse(data) !== undefined);
      answers.push(parseHttpResponse(raw.received)!.status);
      raw.destroy();
    }
    expect(answers).toEqual([400, 426, 405, 400, 404]);
  });

  it("is off by default: the same guard's 401 is an HTTP status on a route without it", async () => {
    const refused = await refusedUpgrade(t.url('/http'));
    expect(refused.status).toBe(401);
    expect(JSON.parse(refused.body)).toMatchObject({ statusCode: 401, message: 'Log in again' });
    expect(events).toEqual([]);
  });

  it('closes a route over its maxConnections with 4503', async () => {
    const open = [
      await TestClient.open(t.url('/closing/a?token=alice')),
      await TestClient.open(t.url('/closing/b?token=alice')),
    ];
    const refused = await refusedWithClose(t.url('/closing/c?token=alice'));
    expect(refused).toMatchObject({
      code: CloseCode.ServiceUnavailable,
      reason: 'Too many connections',
    });
    expect(registry.size).toBe(2);
    await Promise.all(open.map((client) => client.close()));
    await eventually(() => registry.size === 0);
  });

  it('closes a handshake whose guards are too slow with 4503, and ignores their late yes', async () => {
    const refused = await refusedWithClose(t.url('/closing/lobby?token=slow'));
    expect(refused).toMatchObject({ code: 4503, reason: 'Handshake timed out' });
    await delay(700); // the guard says yes now: nothing may open
    expect(events).toEqual([]);
    expect(registry.size).toBe(0);
    expect(logger.text('error')).not.toMatch(/handleUpgrade|failed/);
  });

  it('destroys a refusal whose client never answers the close, within refusalCloseTimeout', async () => {
    const raw = await RawSocket.connect(t.port);
    raw.write(upgradeRequest('/closing/lobby'));
    await raw.waitFor((data) => parseHttpResponse(data) !== undefined);
    const response = parseHttpResponse(raw.received)!;
    expect(response.status).toBe(101);
    expect(response.headers['sec-websocket-accept']).toBe(acceptKey(WS_KEY));
    raw.frameStart = response.headLength;
    await raw.waitFor(() => raw.frames().length > 0);
    const [close] = raw.frames();
    expect(close.opcode).toBe(Opcode.Close);
    expect(close).toMatchObject({ code: 4401, reason: 'Log in again' });
    const sentAt = Date.now();
    // The client never answers; the server gives up on it after refusalCloseTimeout.
    await raw.waitClosed(WS_ROUTES_DEFAULTS.refusalCloseTimeout + 3000);
    expect(raw.closedAt! - sentAt).toBeGreaterThanOrEqual(
      WS_ROUTES_DEFAULTS.refusalCloseTimeout - 100,
    );
    expect(events).toEqual([]);
  });

  it('holds at most maxClosingRefusals sockets under a flood that never reads, then none', async () => {
    const server = t.app.getHttpServer() as Server;
    const connections = () =>
      new Promise<number>((resolve, reject) =>
        server.getConnections((error, count) => (error ? reject(error) : resolve(count))),
      );
    const baseline = await connections();
    const flood = WS_ROUTES_DEFAULTS.maxClosingRefusals + 64;
    // Every TCP connection first, then every request in one loop: they all arrive within the
    // close timeout of the first, so the cap is what answers the last 64.
    const sockets = await Promise.all(
      Array.from({ length: flood }, () => RawSocket.connect(t.port)),
    );
    // /strict has no connection limit of its own: every one is refused for its subprotocol.
    for (const raw of sockets) raw.write(upgradeRequest('/strict'));
    await Promise.all(
      sockets.map((raw) => raw.waitFor((data) => parseHttpResponse(data) !== undefined, 5000)),
    );
    const statuses = sockets.map((raw) => parseHttpResponse(raw.received)!.status);
    const upgraded = statuses.filter((status) => status === 101).length;
    const refused = statuses.filter((status) => status === 400).length;
    expect(upgraded + refused).toBe(flood);
    expect(upgraded).toBeLessThanOrEqual(WS_ROUTES_DEFAULTS.maxClosingRefusals);
    expect(refused).toBeGreaterThanOrEqual(64);
    // The clients stop reading altogether; the server still lets go of every one.
    for (const raw of sockets) raw.socket.pause();
    const deadline = Date.now() + WS_ROUTES_DEFAULTS.refusalCloseTimeout + 5000;
    while ((await connections()) > baseline && Date.now() < deadline) await delay(50);
    expect(await connections()).toBe(baseline);
    for (const raw of sockets) raw.destroy();

    // And the route serves as before.
    const client = await TestClient.open(t.url('/closing/lobby?token=alice'));
    expect(await client.next()).toBe('welcome');
    await client.close();
    expect(registry.size).toBe(0);
  });
});

describe("refuse: 'close' at shutdown", () => {
  it('closes new upgrades with 4503 while app.close() waits for its connections', async () => {
    const t = await startApp(AppModule, { logger: false });
    const stuck = await TestClient.open(t.url('/closing/lobby?token=alice'));
    expect(await stuck.next()).toBe('welcome');
    stuck.socket.pause(); // it never reads the 1001, so app.close() waits for shutdownTimeout
    const closing = t.app.close();
    await delay(100);
    const refused = await refusedWithClose(t.url('/closing/lobby?token=alice'));
    expect(refused).toMatchObject({
      code: CloseCode.ServiceUnavailable,
      reason: SHUTDOWN_CLOSE_REASON,
    });
    stuck.socket.resume();
    await closing;
    expect((await stuck.closed).code).toBe(CloseCode.GoingAway);
  });
});
