import 'reflect-metadata';
import {
  ArgumentsHost,
  CallHandler,
  Catch,
  ExceptionFilter,
  ExecutionContext,
  Injectable,
  Module,
  NestInterceptor,
  ParseIntPipe,
  UseFilters,
  UseGuards,
  UseInterceptors,
  UsePipes,
  ValidationPipe,
  type CanActivate,
} from '@nestjs/common';
import { APP_INTERCEPTOR } from '@nestjs/core';
import { IsInt, IsString, Min } from 'class-validator';
import { map, type Observable } from 'rxjs';
import {
  ConnectedSocket,
  MessageBody,
  OnMessage,
  OnOpen,
  WsConnection,
  WsException,
  WsParam,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import { startApp, type TestApp } from '../utils/app.js';
import { TestClient } from '../utils/ws-client.js';

/** Records what every guard and interceptor saw of the execution context. */
const seen: string[] = [];

@Injectable()
class RoleGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const client = context.switchToWs().getClient<WsConnection>();
    seen.push(
      `guard:${context.getType()}:${client instanceof WsConnection}:${context.getHandler().name}`,
    );
    return client.query.role === 'admin';
  }
}

@Injectable()
class WrapInterceptor implements NestInterceptor {
  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    seen.push(`interceptor:${context.getType()}:${context.switchToWs().getPattern()}`);
    return next.handle().pipe(map((value) => (typeof value === 'string' ? `[${value}]` : value)));
  }
}

@Injectable()
class GlobalTagInterceptor implements NestInterceptor {
  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    seen.push(`global:${context.getClass().name}`);
    return next.handle();
  }
}

class TeapotError extends Error {}

@Catch(TeapotError)
class TeapotFilter implements ExceptionFilter {
  catch(exception: TeapotError, host: ArgumentsHost): void {
    host.switchToWs().getClient<WsConnection>().send({ event: 'teapot', data: exception.message });
  }
}

class CreateItemDto {
  @IsString() name!: string;
  @IsInt() @Min(1) quantity!: number;
}

@WsRoute('/secure/:n')
@UseInterceptors(WrapInterceptor)
@UseFilters(TeapotFilter)
class SecureRoute {
  @OnOpen()
  open(@WsParam('n', ParseIntPipe) n: number) {
    return typeof n === 'number' ? `n is a number: ${n}` : 'n is not a number';
  }

  @OnMessage('public')
  publicEvent() {
    return 'public';
  }

  @UseGuards(RoleGuard)
  @OnMessage('admin')
  adminEvent() {
    return 'admin';
  }

  @OnMessage('double')
  double(@MessageBody(ParseIntPipe) value: number) {
    return String(value * 2);
  }

  @UsePipes(new ValidationPipe({ whitelist: true, transform: true }))
  @OnMessage('create')
  create(@MessageBody() dto: CreateItemDto, @ConnectedSocket() conn: WsConnection) {
    return { created: dto, byDto: dto instanceof CreateItemDto, conn: conn.route };
  }

  @OnMessage('teapot')
  teapot() {
    throw new TeapotError('short and stout');
  }

  @OnMessage('denied')
  denied() {
    throw new WsException({ code: 'DENIED', reason: 'no' });
  }
}

@Module({
  imports: [WsRoutesModule.forRoot()],
  providers: [SecureRoute, { provide: APP_INTERCEPTOR, useClass: GlobalTagInterceptor }],
})
class AppModule {}

describe('Nest enhancers around handlers', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp(AppModule);
  });
  afterAll(() => t.app.close());
  beforeEach(() => (seen.length = 0));

  it('applies pipes to @WsParam and interceptors to @OnOpen', async () => {
    const client = await TestClient.open(t.url('/secure/7'));
    expect(await client.next()).toBe('[n is a number: 7]');
    await client.close();
  });

  it('runs guards with a ws execution context; a denial is an exception message', async () => {
    const user = await TestClient.open(t.url('/secure/1?role=user'));
    await user.next();
    user.emit('admin');
    expect(await user.nextJson()).toEqual({
      event: 'exception',
      data: {
        status: 'error',
        message: 'Forbidden resource',
        cause: { pattern: 'admin' },
      },
    });
    user.emit('public');
    expect(await user.next()).toBe('[public]');

    const admin = await TestClient.open(t.url('/secure/1?role=admin'));
    await admin.next();
    admin.emit('admin');
    expect(await admin.next()).toBe('[admin]');
    expect(seen).toContain('guard:ws:true:adminEvent');
    expect(seen).toContain('interceptor:ws:admin');
    expect(seen).toContain('global:SecureRoute');
    await Promise.all([user.close(), admin.close()]);
  });

  it('runs parameter pipes and ValidationPipe with DTOs', async () => {
    const client = await TestClient.open(t.url('/secure/1'));
    await client.next();
    client.emit('double', '21');
    expect(await client.next()).toBe('[42]');
    client.emit('double', 'abc');
    const parseError = await client.nextJson();
    expect(parseError.data.statusCode).toBe(400);
    expect(parseError.data.message).toMatch(/numeric string is expected/);

    client.emit('create', { name: 'apple', quantity: 3, extra: 'dropped' });
    expect(await client.nextJson()).toEqual({
      created: { name: 'apple', quantity: 3 },
      byDto: true,
      conn: '/secure/:n',
    });
    client.emit('create', { name: 5, quantity: 0 });
    const invalid = await client.nextJson();
    expect(invalid.event).toBe('exception');
    expect(invalid.data.statusCode).toBe(400);
    expect(invalid.data.message).toEqual(
      expect.arrayContaining(['name must be a string', 'quantity must not be less than 1']),
    );
    await client.close();
  });

  it('lets @UseFilters answer instead of the default, exactly once', async () => {
    const client = await TestClient.open(t.url('/secure/1'));
    await client.next();
    client.emit('teapot');
    expect(await client.nextJson()).toEqual({ event: 'teapot', data: 'short and stout' });
    expect(await client.silentFor(100)).toBe(true);
    client.emit('denied');
    expect(await client.nextJson()).toEqual({
      event: 'exception',
      data: { code: 'DENIED', reason: 'no' },
    });
    await client.close();
  });
});
