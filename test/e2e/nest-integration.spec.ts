import 'reflect-metadata';
import {
  Inject,
  Injectable,
  Module,
  UseGuards,
  type CanActivate,
  type ExecutionContext,
  type CallHandler,
  type NestInterceptor,
  type OnModuleInit,
  Scope,
  UseInterceptors,
} from '@nestjs/common';
import { GUARDS_METADATA } from '@nestjs/common/constants.js';
import { APP_GUARD, NestFactory } from '@nestjs/core';
import {
  MessageBody,
  OnMessage,
  OnOpen,
  WsConnection,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import { Subject, map, type Observable } from 'rxjs';
import { CapturingLogger, startApp, type TestApp } from '../utils/app.js';
import { refusedUpgrade, TestClient } from '../utils/ws-client.js';

/**
 * How routes sit in a Nest application: class guards (own and inherited) authenticate the
 * upgrade and never run per message, without touching the user's metadata; passport-style
 * guards may assign `user`; a denied message is answered like a gateway's; enhancers resolve
 * in the module that provides the route; a guard that cannot be resolved stops the start.
 */
const calls: string[] = [];

/** A class guard written for the upgrade: refuses `?deny=1`, counts its calls. */
@Injectable()
class UpgradeGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const client = context.switchToWs().getClient<{ query: Record<string, string> }>();
    calls.push(`upgrade:${context.getClass().name}:${client instanceof WsConnection}`);
    return client.query.deny !== '1';
  }
}

@UseGuards(UpgradeGuard)
abstract class AuthenticatedRoute {}

@WsRoute('/inherited')
class InheritedGuardRoute extends AuthenticatedRoute {
  @OnMessage('ping')
  ping() {
    return 'pong';
  }
}

@WsRoute('/own')
@UseGuards(UpgradeGuard)
class OwnGuardRoute {
  @OnMessage('ping')
  ping() {
    return 'pong';
  }
}

/** What `@nestjs/passport`'s `AuthGuard` does: `request.user = user` on the HTTP request. */
@Injectable()
class PassportStyleGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const request = context.switchToHttp().getRequest<{ user?: unknown }>();
    request.user = { name: 'ada', via: 'passport' };
    return true;
  }
}

/** What the usual JWT guard for gateways does: `client.user = payload`. */
@Injectable()
class JwtStyleGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const client = context.switchToWs().getClient<{ user?: unknown; query: object }>();
    client.user = { name: 'lin', via: 'jwt', query: client.query };
    return true;
  }
}

@Injectable()
class DenyGuard implements CanActivate {
  canActivate(): boolean {
    return false;
  }
}

@WsRoute('/users')
class UserRoute {
  @UseGuards(PassportStyleGuard)
  @OnMessage('passport')
  passport(conn: WsConnection) {
    return { user: conn.user, data: conn.data.user };
  }

  @UseGuards(JwtStyleGuard)
  @OnMessage('jwt')
  jwt(conn: WsConnection) {
    return { user: conn.user };
  }

  @UseGuards(DenyGuard)
  @OnMessage('secret')
  secret() {
    return 'leaked';
  }
}

@Injectable()
class TagInterceptor implements NestInterceptor {
  intercept(_context: ExecutionContext, next: CallHandler): Observable<unknown> {
    return next.handle().pipe(map((value) => `tagged:${String(value)}`));
  }
}

/** Handlers behind a guard and an interceptor, for the connection's order of replies. */
@WsRoute('/streams')
@UseInterceptors(TagInterceptor)
class StreamRoute {
  readonly updates = new Subject<string>();

  @UseGuards(PassportStyleGuard)
  @OnMessage('subscribe')
  subscribe() {
    return this.updates;
  }

  @OnMessage('ping')
  ping() {
    return 'pong';
  }
}

/** The upgrade authenticates with a passport-style class guard: `conn.user` is its user. */
@WsRoute('/login')
@UseGuards(PassportStyleGuard)
class LoginRoute {
  @OnOpen()
  open(conn: WsConnection) {
    return { user: conn.user };
  }
}

@Module({
  imports: [WsRoutesModule.forRoot()],
  providers: [InheritedGuardRoute, OwnGuardRoute, UserRoute, LoginRoute, StreamRoute],
})
class AppModule {}

/** A service of a feature module, injected into that module's guards. */
@Injectable()
class TokenService {
  readonly accepted = 'open-sesame';
}

@Injectable()
class TokenGuard implements CanActivate {
  constructor(@Inject(TokenService) private readonly tokens: TokenService) {}
  canActivate(context: ExecutionContext): boolean {
    calls.push('token-guard');
    return context.switchToWs().getData<{ token?: string }>()?.token === this.tokens.accepted;
  }
}

/** Provided under a token: only the host module (not a lookup by class) knows where it lives. */
@WsRoute('/feature')
class FeatureRoute {
  @UseGuards(TokenGuard)
  @OnMessage('vault')
  vault(@MessageBody('token') token: string) {
    return `opened with ${token}`;
  }
}

@Module({ providers: [TokenService, { provide: 'FEATURE_ROUTE', useClass: FeatureRoute }] })
class FeatureModule {}

@Module({ imports: [WsRoutesModule.forRoot(), FeatureModule] })
class FeatureAppModule {}

/** A guard Nest never registered: it is put in the metadata after the application was scanned. */
class LateGuard implements CanActivate {
  canActivate(): boolean {
    return false;
  }
}

@WsRoute('/late')
class LateRoute {
  @OnMessage('guarded')
  guarded() {
    return 'ran without its guard';
  }
}

@Module({ imports: [WsRoutesModule.forRoot()], providers: [LateRoute] })
class LateModule implements OnModuleInit {
  onModuleInit(): void {
    Reflect.defineMetadata(GUARDS_METADATA, [LateGuard], LateRoute.prototype.guarded);
  }
}

/** A request-scoped global guard: no instance exists outside an HTTP request. */
@Injectable({ scope: Scope.REQUEST })
class RequestScopedGuard implements CanActivate {
  canActivate(): boolean {
    return false;
  }
}

@WsRoute('/scoped')
class ScopedGlobalRoute {
  @OnMessage('guarded')
  guarded() {
    return 'ran without the global guard';
  }
}

@Module({
  imports: [WsRoutesModule.forRoot()],
  providers: [ScopedGlobalRoute, { provide: APP_GUARD, useClass: RequestScopedGuard }],
})
class ScopedGlobalModule {}

async function pingTimes(client: TestClient, times: number): Promise<string[]> {
  const replies: string[] = [];
  for (let i = 0; i < times; i++) {
    client.emit('ping');
    replies.push(String(await client.next()));
  }
  return replies;
}

describe('Nest integration', () => {
  beforeEach(() => (calls.length = 0));

  describe('class guards', () => {
    const before = {
      inheritedOwn: Reflect.getOwnMetadata(GUARDS_METADATA, InheritedGuardRoute) as unknown,
      inherited: Reflect.getMetadata(GUARDS_METADATA, InheritedGuardRoute) as unknown,
      base: Reflect.getOwnMetadata(GUARDS_METADATA, AuthenticatedRoute) as unknown,
      own: Reflect.getOwnMetadata(GUARDS_METADATA, OwnGuardRoute) as unknown,
    };
    let t: TestApp;
    beforeAll(async () => {
      t = await startApp(AppModule);
    });
    afterAll(() => t.app.close());

    it('runs a base class @UseGuards() once, at the upgrade, and never per message', async () => {
      const client = await TestClient.open(t.url('/inherited'));
      expect(await pingTimes(client, 3)).toEqual(['pong', 'pong', 'pong']);
      expect(calls).toEqual(['upgrade:InheritedGuardRoute:false']);
      expect((await refusedUpgrade(t.url('/inherited?deny=1'))).status).toBe(403);
      await client.close();
    });

    it("runs the class's own @UseGuards() once, at the upgrade", async () => {
      const client = await TestClient.open(t.url('/own'));
      expect(await pingTimes(client, 3)).toEqual(['pong', 'pong', 'pong']);
      expect(calls).toEqual(['upgrade:OwnGuardRoute:false']);
      expect((await refusedUpgrade(t.url('/own?deny=1'))).status).toBe(403);
      await client.close();
    });

    it("leaves the user's guard metadata as it was", () => {
      expect(before.inheritedOwn).toBeUndefined();
      expect(before.inherited).toEqual([UpgradeGuard]);
      expect(Reflect.getOwnMetadata(GUARDS_METADATA, InheritedGuardRoute)).toBe(
        before.inheritedOwn,
      );
      expect(Reflect.getMetadata(GUARDS_METADATA, InheritedGuardRoute)).toBe(before.inherited);
      expect(Reflect.getOwnMetadata(GUARDS_METADATA, AuthenticatedRoute)).toBe(before.base);
      expect(Reflect.getOwnMetadata(GUARDS_METADATA, OwnGuardRoute)).toBe(before.own);
      expect(before.own).toEqual([UpgradeGuard]);
    });

    it('applies the class guards in a second application built from the same module', async () => {
      const second = await startApp(AppModule);
      try {
        expect((await refusedUpgrade(second.url('/own?deny=1'))).status).toBe(403);
        expect((await refusedUpgrade(second.url('/inherited?deny=1'))).status).toBe(403);
        const client = await TestClient.open(second.url('/inherited'));
        expect(await pingTimes(client, 2)).toEqual(['pong', 'pong']);
        expect(calls.filter((call) => call.startsWith('upgrade:InheritedGuardRoute'))).toEqual([
          'upgrade:InheritedGuardRoute:false',
          'upgrade:InheritedGuardRoute:false',
        ]);
        await client.close();
      } finally {
        await second.app.close();
      }
    });
  });

  describe('guards that assign user', () => {
    let t: TestApp;
    let logger: CapturingLogger;
    beforeAll(async () => {
      logger = new CapturingLogger();
      t = await startApp(AppModule, { logger });
    });
    afterAll(() => t.app.close());

    it('takes request.user from a passport-style guard per message: conn.user is that user', async () => {
      const client = await TestClient.open(t.url('/users'));
      client.emit('passport');
      const user = { name: 'ada', via: 'passport' };
      expect(await client.nextJson()).toEqual({ user, data: user });
      await client.close();
      expect(logger.text('error')).not.toMatch(/TypeError/);
    });

    it('takes client.user from a JWT-style guard per message', async () => {
      const client = await TestClient.open(t.url('/users?team=blue'));
      client.emit('jwt');
      expect(await client.nextJson()).toEqual({
        user: { name: 'lin', via: 'jwt', query: { team: 'blue' } },
      });
      await client.close();
      expect(logger.text('error')).not.toMatch(/TypeError/);
    });

    it('takes request.user from a passport-style class guard at the upgrade', async () => {
      const client = await TestClient.open(t.url('/login'));
      expect(await client.nextJson()).toEqual({ user: { name: 'ada', via: 'passport' } });
      await client.close();
    });

    it("answers a message a guard denied as Nest's gateways do", async () => {
      const client = await TestClient.open(t.url('/users'));
      client.emit('secret', { x: 1 });
      expect(await client.nextJson()).toEqual({
        event: 'exception',
        data: {
          status: 'error',
          message: 'Forbidden resource',
          cause: { pattern: 'secret', data: { x: 1 } },
        },
      });
      expect(await client.silentFor(50)).toBe(true);
      await client.close();
    });
  });

  describe('the pipeline and the connection', () => {
    let t: TestApp;
    beforeAll(async () => {
      t = await startApp(AppModule);
    });
    afterAll(() => t.app.close());

    it('moves on once a handler behind a guard and an interceptor returned a quiet Observable', async () => {
      const client = await TestClient.open(t.url('/streams'));
      client.emit('subscribe');
      client.emit('ping');
      expect(await client.next()).toBe('tagged:pong');
      t.app.get(StreamRoute).updates.next('first');
      expect(await client.next()).toBe('tagged:first');
      await client.close();
    });
  });

  describe('enhancer resolution', () => {
    it("resolves a route's guards in the module that provides it, with its injections", async () => {
      const t = await startApp(FeatureAppModule);
      try {
        const client = await TestClient.open(t.url('/feature'));
        client.emit('vault', { token: 'open-sesame' });
        expect(await client.next()).toBe('opened with open-sesame');
        client.emit('vault', { token: 'guess' });
        expect(await client.nextJson()).toMatchObject({
          event: 'exception',
          data: { message: 'Forbidden resource' },
        });
        expect(calls).toEqual(['token-guard', 'token-guard']);
        await client.close();
      } finally {
        await t.app.close();
      }
    });

    it('does not start a route whose guard cannot be resolved, naming class, method and guard', async () => {
      const logger = new CapturingLogger();
      const app = await NestFactory.create(LateModule, { logger, abortOnError: false });
      try {
        await expect(app.listen(0, '127.0.0.1')).rejects.toThrow(
          /LateRoute, guarded\(\): LateGuard \(the method's @UseGuards\(\)\) cannot be resolved/,
        );
        expect(logger.text('warn')).toMatch(/LateRoute, guarded\(\): LateGuard .*did not resolve/);
      } finally {
        await app.close();
      }
    });

    it('does not start with a global guard it has no instance of (a request-scoped one)', async () => {
      const app = await NestFactory.create(ScopedGlobalModule, {
        logger: false,
        abortOnError: false,
      });
      try {
        await expect(app.listen(0, '127.0.0.1')).rejects.toThrow(
          /ScopedGlobalRoute, the upgrade: RequestScopedGuard \(a request-scoped or transient global guard\) cannot be resolved/,
        );
      } finally {
        await app.close();
      }
    });
  });
});
