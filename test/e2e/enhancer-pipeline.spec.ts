import 'reflect-metadata';
import {
  CallHandler,
  createParamDecorator,
  ExecutionContext,
  Injectable,
  Module,
  NestInterceptor,
  UseGuards,
  UseInterceptors,
  UsePipes,
  ValidationPipe,
  type ArgumentMetadata,
  type CanActivate,
  type PipeTransform,
} from '@nestjs/common';
import { IsInt, IsString, Min } from 'class-validator';
import { Type } from 'class-transformer';
import { interval, map, of, take, type Observable } from 'rxjs';
import {
  MessageBody,
  OnMessage,
  WsConnection,
  WsQuery,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import { startApp, type TestApp } from '../utils/app.js';
import { TestClient } from '../utils/ws-client.js';

/**
 * The guard → pipe → interceptor chain that runs per message, with the forms Nest allows:
 * booleans, Promises and Observables from guards, async pipes and interceptors, interceptors
 * that never call the handler, streams, and custom parameter decorators.
 */
const calls: string[] = [];

@Injectable()
class AsyncGuard implements CanActivate {
  async canActivate(context: ExecutionContext): Promise<boolean> {
    calls.push('async-guard');
    await new Promise((resolve) => setTimeout(resolve, 5));
    return context.switchToWs().getClient<WsConnection>().query.pass === 'yes';
  }
}

@Injectable()
class ObservableGuard implements CanActivate {
  canActivate(context: ExecutionContext): Observable<boolean> {
    calls.push('observable-guard');
    return of(context.switchToWs().getData<{ ok?: boolean }>()?.ok === true);
  }
}

@Injectable()
class NeverReachedGuard implements CanActivate {
  canActivate(): boolean {
    calls.push('second-guard');
    return true;
  }
}

@Injectable()
class CacheInterceptor implements NestInterceptor {
  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    if (context.switchToWs().getData() === 'cached') return of('from cache');
    return next.handle();
  }
}

@Injectable()
class AsyncTagInterceptor implements NestInterceptor {
  async intercept(_context: ExecutionContext, next: CallHandler): Promise<Observable<unknown>> {
    await new Promise((resolve) => setTimeout(resolve, 5));
    return next.handle().pipe(map((value) => `tagged:${String(value)}`));
  }
}

@Injectable()
class RecordTypePipe implements PipeTransform {
  transform(value: unknown, metadata: ArgumentMetadata): unknown {
    calls.push(`pipe:${metadata.type}:${metadata.data ?? ''}`);
    return value;
  }
}

@Injectable()
class SlowUpperPipe implements PipeTransform {
  async transform(value: unknown): Promise<unknown> {
    await new Promise((resolve) => setTimeout(resolve, 5));
    return typeof value === 'string' ? value.toUpperCase() : value;
  }
}

/** A custom parameter decorator whose factory is asynchronous. */
const LaterName = createParamDecorator(async (_data: unknown, context: ExecutionContext) => {
  await new Promise((resolve) => setTimeout(resolve, 2));
  return `name:${context.switchToWs().getClient<WsConnection>().query.name ?? 'anon'}`;
});

class PageQuery {
  @Type(() => Number) @IsInt() @Min(1) page!: number;
  @IsString() sort!: string;
}

@WsRoute('/pipeline')
class PipelineRoute {
  @UseGuards(AsyncGuard)
  @OnMessage('async-guard')
  asyncGuarded() {
    return 'passed';
  }

  @UseGuards(ObservableGuard, NeverReachedGuard)
  @OnMessage('observable-guard')
  observableGuarded() {
    return 'passed';
  }

  @UseInterceptors(CacheInterceptor)
  @OnMessage('cache')
  cache(@MessageBody() body: string) {
    calls.push(`handler:${body}`);
    return `computed ${body}`;
  }

  @UseInterceptors(AsyncTagInterceptor)
  @OnMessage('stream')
  stream(): Observable<number> {
    return interval(5).pipe(take(3));
  }

  @UsePipes(RecordTypePipe)
  @OnMessage('types')
  types(@MessageBody() body: unknown, @WsQuery('name') name: string) {
    return { body, name };
  }

  @OnMessage('slow-pipe')
  slowPipe(@MessageBody(SlowUpperPipe) body: string, @LaterName() name: string) {
    return `${body} ${name}`;
  }

  @OnMessage('query-dto')
  queryDto(@WsQuery(new ValidationPipe({ transform: true })) query: PageQuery) {
    return { page: query.page, isNumber: typeof query.page === 'number' };
  }
}

@Module({ imports: [WsRoutesModule.forRoot()], providers: [PipelineRoute] })
class AppModule {}

describe('the per-message enhancer pipeline', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp(AppModule);
  });
  afterAll(() => t.app.close());
  beforeEach(() => (calls.length = 0));

  it('waits for a guard that answers with a Promise, and refuses on false', async () => {
    const allowed = await TestClient.open(t.url('/pipeline?pass=yes'));
    const refused = await TestClient.open(t.url('/pipeline?pass=no'));
    allowed.emit('async-guard');
    refused.emit('async-guard');
    expect(await allowed.next()).toBe('passed');
    expect(await refused.nextJson()).toMatchObject({
      event: 'exception',
      data: { status: 'error', message: 'Forbidden resource' },
    });
    await Promise.all([allowed.close(), refused.close()]);
  });

  it('takes an Observable guard answer and stops at the first guard that refuses', async () => {
    const client = await TestClient.open(t.url('/pipeline'));
    client.emit('observable-guard', { ok: false });
    expect((await client.nextJson()).data.message).toBe('Forbidden resource');
    expect(calls).toEqual(['observable-guard']);
    client.emit('observable-guard', { ok: true });
    expect(await client.next()).toBe('passed');
    expect(calls).toEqual(['observable-guard', 'observable-guard', 'second-guard']);
    await client.close();
  });

  it('lets an interceptor answer without calling the handler', async () => {
    const client = await TestClient.open(t.url('/pipeline'));
    client.emit('cache', 'cached');
    client.emit('cache', 'fresh');
    expect(await client.next()).toBe('from cache');
    expect(await client.next()).toBe('computed fresh');
    expect(calls).toEqual(['handler:fresh']);
    await client.close();
  });

  it('runs an async interceptor around a stream, every value in order', async () => {
    const client = await TestClient.open(t.url('/pipeline'));
    client.emit('stream');
    expect([await client.next(), await client.next(), await client.next()]).toEqual([
      'tagged:0',
      'tagged:1',
      'tagged:2',
    ]);
    expect(await client.silentFor(60)).toBe(true);
    await client.close();
  });

  it('tells pipes what each parameter is: body, query, param or custom', async () => {
    const client = await TestClient.open(t.url('/pipeline?name=ada'));
    client.emit('types', { a: 1 });
    expect(await client.nextJson()).toEqual({ body: { a: 1 }, name: 'ada' });
    expect(calls.sort()).toEqual(['pipe:body:', 'pipe:query:name']);
    await client.close();
  });

  it('awaits async pipes and async custom decorators, keeping replies in order', async () => {
    const client = await TestClient.open(t.url('/pipeline?name=lin'));
    client.emit('slow-pipe', 'first');
    client.emit('cache', 'second');
    client.emit('slow-pipe', 'third');
    expect(await client.next()).toBe('FIRST name:lin');
    expect(await client.next()).toBe('computed second');
    expect(await client.next()).toBe('THIRD name:lin');
    await client.close();
  });

  it('validates and transforms the query string with ValidationPipe', async () => {
    const good = await TestClient.open(t.url('/pipeline?page=3&sort=asc'));
    good.emit('query-dto');
    expect(await good.nextJson()).toEqual({ page: 3, isNumber: true });
    const bad = await TestClient.open(t.url('/pipeline?page=0'));
    bad.emit('query-dto');
    const answer = await bad.nextJson();
    expect(answer.data.statusCode).toBe(400);
    expect(answer.data.message).toEqual(
      expect.arrayContaining(['page must not be less than 1', 'sort must be a string']),
    );
    await Promise.all([good.close(), bad.close()]);
  });
});
