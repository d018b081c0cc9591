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
import { WebSocket } from 'ws';
import {
  ConnectedSocket,
  HandshakeResponse,
  isWsHandshake,
  OnOpen,
  ORIGIN_REFUSED_MESSAGE,
  WsConnection,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesModule,
  type HandshakeRequest,
} from '../../lib/index.js';
import { CapturingLogger, startApp, type TestApp } from '../utils/app.js';
import { delay, eventually, refusedUpgrade, TestClient } from '../utils/ws-client.js';

const opened: string[] = [];

/** Token in the query or, for browsers that cannot set headers, in Sec-WebSocket-Protocol. */
@Injectable()
class TokenGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const request = context.switchToHttp().getRequest<HandshakeRequest>();
    const response = context.switchToHttp().getResponse<HandshakeResponse>();
    if (!isWsHandshake(context) || context.getType() !== 'ws') return false;
    const protocolToken = request.headers['sec-websocket-protocol']
      ?.split(',')
      .map((p) => p.trim())
      .find((p) => p.startsWith('token.'))
      ?.slice('token.'.length);
    const token = (request.query.token as string | undefined) ?? protocolToken;
    switch (token) {
      case 'alice':
        request.user = { name: 'alice', room: request.params.room, cookie: request.cookies.sid };
        response.setHeader('Set-Cookie', 'seen=1; HttpOnly');
        return true;
      case undefined:
        response.setHeader('WWW-Authenticate', 'Bearer realm="ws"');
        throw new UnauthorizedException('Token required');
      case 'slow':
        return delay(1000).then(() => true) as unknown as boolean;
      case 'busy':
        response.setHeader('Retry-After', '30');
        throw new HttpException('Slow down', 429);
      case 'boom':
        throw new Error('guard exploded at /secret/path.ts:12');
      default:
        return false;
    }
  }
}

@WsRoute('/private/:room', { subprotocols: ['chat.v1'] })
@UseGuards(TokenGuard)
class PrivateRoute {
  @OnOpen()
  open(@ConnectedSocket() conn: WsConnection) {
    opened.push(conn.id);
    return { user: conn.user, data: conn.data };
  }
}

@WsRoute('/open')
class OpenRoute {
  @OnOpen() open() {
    return 'welcome';
  }
}

@WsRoute('/anyone', { origins: '*' })
class AnyoneRoute {
  @OnOpen() open() {
    return 'anyone';
  }
}

@WsRoute('/versioned', { subprotocols: ['v2', 'v1'], requireProtocol: true })
class VersionedRoute {
  @OnOpen() open(@ConnectedSocket() conn: WsConnection) {
    return conn.protocol;
  }
}

@Injectable()
class Flag {
  allowed = true;
}
@Injectable()
class FlagGuard implements CanActivate {
  constructor(private readonly flag: Flag) {}
  canActivate(): boolean {
    return this.flag.allowed;
  }
}

@WsRoute('/flagged', { guards: [FlagGuard] })
class FlaggedRoute {
  @OnOpen() open() {
    return 'flag up';
  }
}

const logger = new CapturingLogger();

@Module({
  imports: [WsRoutesModule.forRoot({ handshakeTimeout: 300 })],
  providers: [Flag, TokenGuard, PrivateRoute, OpenRoute, AnyoneRoute, VersionedRoute, FlaggedRoute],
})
class AppModule {}

describe('handshake', () => {
  let t: TestApp;
  let registry: WsConnectionRegistry;
  beforeAll(async () => {
    t = await startApp(AppModule, { logger });
    registry = t.app.get(WsConnectionRegistry);
  });
  afterAll(() => t.app.close());

  describe('origin', () => {
    it('allows the same origin and clients that send none', async () => {
      const same = await TestClient.open(t.url('/open'), undefined, {
        origin: `http://127.0.0.1:${t.port}`,
      });
      expect(await same.next()).toBe('welcome');
      const none = await TestClient.open(t.url('/open'));
      expect(await none.next()).toBe('welcome');
      await Promise.all([same.close(), none.close()]);
    });

    it('refuses another origin with 403 before the 101, and logs it', async () => {
      for (const origin of ['http://evil.example', `http://127.0.0.1:${t.port + 1}`, 'null']) {
        const refused = await refusedUpgrade(t.url('/open'), { origin });
        expect(refused.status).toBe(403);
        expect(JSON.parse(refused.body)).toMatchObject({
          statusCode: 403,
          message: ORIGIN_REFUSED_MESSAGE,
        });
      }
      expect(logger.text('warn')).toContain('Refused upgrade of /open from 127.0.0.1: 403');
      expect(registry.size).toBe(0);
    });

    it("lets a route open up with origins: '*'", async () => {
      const client = await TestClient.open(t.url('/anyone'), undefined, {
        origin: 'http://evil.example',
      });
      expect(await client.next()).toBe('anyone');
      await client.close();
    });

    it('takes exact origins, RegExps and functions at module level, and route settings win', async () => {
      @Module({
        imports: [
          WsRoutesModule.forRoot({
            origins: ['https://app.example.com', /^https:\/\/[a-z0-9]+\.preview\.example\.com$/],
          }),
        ],
        providers: [OpenRoute, AnyoneRoute],
      })
      class ListModule {}
      @Module({
        imports: [
          WsRoutesModule.forRoot({ origins: async (origin) => origin.endsWith('.trusted.test') }),
        ],
        providers: [OpenRoute],
      })
      class FunctionModule {}
      const list = await startApp(ListModule, { logger });
      const fn = await startApp(FunctionModule, { logger });
      try {
        const ok = [
          await TestClient.open(list.url('/open'), undefined, {
            origin: 'https://app.example.com',
          }),
          await TestClient.open(list.url('/open'), undefined, {
            origin: 'https://pr42.preview.example.com',
          }),
          await TestClient.open(list.url('/anyone'), undefined, {
            origin: 'https://elsewhere.test',
          }),
          await TestClient.open(fn.url('/open'), undefined, { origin: 'https://a.trusted.test' }),
        ];
        expect(
          (await refusedUpgrade(list.url('/open'), { origin: 'https://app.example.com.evil.test' }))
            .status,
        ).toBe(403);
        expect(
          (await refusedUpgrade(list.url('/open'), { origin: 'http://app.example.com' })).status,
        ).toBe(403);
        expect(
          (await refusedUpgrade(fn.url('/open'), { origin: 'https://trusted.test.evil' })).status,
        ).toBe(403);
        await Promise.all(ok.map((client) => client.close()));
      } finally {
        await Promise.all([list.app.close(), fn.app.close()]);
      }
    });
  });

  describe('guards', () => {
    it('runs @UseGuards at the upgrade; the user, params and cookies reach the connection', async () => {
      const client = await TestClient.open(t.url('/private/lobby?token=alice'), undefined, {
        headers: { cookie: 'sid=abc' },
      });
      expect(await client.nextJson()).toEqual({
        user: { name: 'alice', room: 'lobby', cookie: 'abc' },
        data: { user: { name: 'alice', room: 'lobby', cookie: 'abc' } },
      });
      await client.close();
    });

    it('sends headers a guard set with the 101', async () => {
      const socket = new WebSocket(t.url('/private/x?token=alice'));
      const headers = await new Promise<Record<string, unknown>>((resolve) =>
        socket.once('upgrade', (response) => resolve(response.headers)),
      );
      expect(headers['set-cookie']).toEqual(['seen=1; HttpOnly']);
      socket.close();
    });

    it('accepts a token offered as a subprotocol, as browsers must send it', async () => {
      const client = await TestClient.open(t.url('/private/x'), ['chat.v1', 'token.alice']);
      expect(client.socket.protocol).toBe('chat.v1');
      expect((await client.nextJson()).user.name).toBe('alice');
      await client.close();
    });

    it('answers false with 403, HttpExceptions with their status, body and headers, and anything else with 500', async () => {
      const before = opened.length;
      const forbidden = await refusedUpgrade(t.url('/private/x?token=mallory'));
      expect(forbidden.status).toBe(403);
      expect(JSON.parse(forbidden.body)).toEqual({
        statusCode: 403,
        message: 'Forbidden resource',
        error: 'Forbidden',
      });

      const unauthorized = await refusedUpgrade(t.url('/private/x'));
      expect(unauthorized.status).toBe(401);
      expect(unauthorized.headers['www-authenticate']).toBe('Bearer realm="ws"');
      expect(JSON.parse(unauthorized.body)).toEqual({
        statusCode: 401,
        message: 'Token required',
        error: 'Unauthorized',
      });

      const busy = await refusedUpgrade(t.url('/private/x?token=busy'));
      expect(busy.status).toBe(429);
      expect(busy.headers['retry-after']).toBe('30');
      expect(JSON.parse(busy.body)).toEqual({ statusCode: 429, message: 'Slow down' });

      const boom = await refusedUpgrade(t.url('/private/x?token=boom'));
      expect(boom.status).toBe(500);
      expect(JSON.parse(boom.body)).toEqual({ statusCode: 500, message: 'Internal server error' });
      expect(boom.body).not.toContain('secret');
      expect(logger.text('error')).toContain('guard exploded');

      expect(opened.length).toBe(before);
      expect(registry.size).toBe(0);
    });

    it('answers a guard slower than handshakeTimeout with 503', async () => {
      const slow = await refusedUpgrade(t.url('/private/x?token=slow'));
      expect(slow.status).toBe(503);
      expect(JSON.parse(slow.body).message).toBe('Handshake timed out');
      await delay(800); // the guard finishes later; nothing may be registered then
      expect(registry.size).toBe(0);
    });

    it('keeps guarding when the same module is started again in this process', async () => {
      const second = await startApp(AppModule, { logger });
      try {
        expect((await refusedUpgrade(second.url('/private/x'))).status).toBe(401);
        const client = await TestClient.open(second.url('/private/x?token=alice'));
        expect((await client.nextJson()).user.name).toBe('alice');
        await client.close();
      } finally {
        await second.app.close();
      }
      expect((await refusedUpgrade(t.url('/private/x'))).status).toBe(401);
    });

    it('resolves guard classes of the route options with injection', async () => {
      const client = await TestClient.open(t.url('/flagged'));
      expect(await client.next()).toBe('flag up');
      t.app.get(Flag).allowed = false;
      expect((await refusedUpgrade(t.url('/flagged'))).status).toBe(403);
      t.app.get(Flag).allowed = true;
      await client.close();
    });
  });

  describe('subprotocols', () => {
    it('refuses with 400 when requireProtocol is set and nothing acceptable was offered', async () => {
      expect((await refusedUpgrade(t.url('/versioned'))).status).toBe(400);
      expect((await refusedUpgrade(t.url('/versioned'), { protocols: ['v3'] })).status).toBe(400);
      const client = await TestClient.open(t.url('/versioned'), ['v1', 'v2']);
      expect(await client.next()).toBe('v2');
      await client.close();
    });
  });
});

describe('connection limits', () => {
  @Module({
    imports: [WsRoutesModule.forRoot({ maxConnections: 4, maxConnectionsPerIp: 2, trustProxy: 1 })],
    providers: [OpenRoute],
  })
  class LimitedModule {}

  it('refuses over the per-IP limit with 429 and over the process limit with 503, and frees slots on close', async () => {
    const t = await startApp(LimitedModule, { logger });
    const from = (ip: string) => ({ headers: { 'x-forwarded-for': ip } });
    try {
      const a = [
        await TestClient.open(t.url('/open'), undefined, from('10.0.0.1')),
        await TestClient.open(t.url('/open'), undefined, from('10.0.0.1')),
      ];
      const refused = await refusedUpgrade(t.url('/open'), from('10.0.0.1'));
      expect(refused.status).toBe(429);
      expect(refused.headers['retry-after']).toBe('1');
      const b = [
        await TestClient.open(t.url('/open'), undefined, from('10.0.0.2')),
        await TestClient.open(t.url('/open'), undefined, from('10.0.0.3')),
      ];
      expect(a[0].socket.readyState).toBe(WebSocket.OPEN);
      const full = await refusedUpgrade(t.url('/open'), from('10.0.0.4'));
      expect(full.status).toBe(503);
      const conn = [...t.app.get(WsConnectionRegistry)].find((c) => c.remoteAddress === '10.0.0.2');
      expect(conn).toBeDefined();
      await a[0].close();
      await eventually(() => t.app.get(WsConnectionRegistry).size === 3);
      const again = await TestClient.open(t.url('/open'), undefined, from('10.0.0.1'));
      await Promise.all([a[1], ...b, again].map((client) => client.close()));
    } finally {
      await t.app.close();
    }
  });
});
