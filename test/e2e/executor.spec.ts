import 'reflect-metadata';
import {
  Injectable,
  Module,
  type CallHandler,
  type ExecutionContext,
  type NestInterceptor,
  UseInterceptors,
} from '@nestjs/common';
import { map, Subject, type Observable } from 'rxjs';
import {
  ConnectedSocket,
  MessageBody,
  OnClose,
  OnMessage,
  OnOpen,
  WsConnection,
  WsConnectionRegistry,
  WsException,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import { CapturingLogger, startApp, type TestApp } from '../utils/app.js';
import { clientFrame, Opcode, openRawWebSocket } from '../utils/raw-socket.js';
import { delay, eventually, TestClient } from '../utils/ws-client.js';

/**
 * The per-connection executor (issue 9, finding 3 and the @OnClose guarantees): messages of a
 * connection run one at a time in order, through Promises and interceptors; an Observable reply
 * does not hold the queue; `@OnClose` runs exactly once, after the messages accepted before the
 * close, whatever the queue's state (even when a handler never settles); no unserializable
 * exception data crashes anything.
 */

/** What the routes saw, per connection (keyed by the `?key=` of the upgrade URL). */
@Injectable()
class Journal {
  readonly logs = new Map<string, string[]>();
  readonly subjects = new Map<string, Subject<unknown>>();
  readonly ids = new Map<string, string>();
  gate: Promise<void> | undefined;
  log(conn: WsConnection, entry: string): void {
    const key = String(conn.query.key);
    const log = this.logs.get(key) ?? [];
    log.push(entry);
    this.logs.set(key, log);
  }
  entries(key: string): string[] {
    return this.logs.get(key) ?? [];
  }
  closes(key: string): number {
    return this.entries(key).filter((entry) => entry === 'close').length;
  }
}

/** A handler returning a Subject that has not emitted: it must not hold later messages. */
@WsRoute('/quiet')
class QuietRoute {
  constructor(private readonly journal: Journal) {}
  @OnMessage('sub') sub(@ConnectedSocket() conn: WsConnection) {
    const subject = new Subject<unknown>();
    this.journal.subjects.set(String(conn.query.key), subject);
    return subject;
  }
  @OnMessage('ping') ping() {
    return 'pong';
  }
  @OnClose() closed(conn: WsConnection) {
    this.journal.log(conn, 'close');
  }
}

@Module({
  imports: [WsRoutesModule.forRoot({ rateLimit: false, heartbeat: false, shutdownTimeout: 5000 })],
  providers: [Journal, QuietRoute],
})
class QuietModule {}

describe('a quiet Observable', () => {
  let t: TestApp;
  let journal: Journal;
  beforeEach(async () => {
    t = await startApp(QuietModule);
    journal = t.app.get(Journal);
  });
  afterEach(() => t.app.close());

  it('does not hold later messages; its values arrive; torn down and @OnClose once on close', async () => {
    const client = await TestClient.open(t.url('/quiet?key=q1'));
    client.emit('sub');
    client.emit('ping');
    expect(await client.next(1000)).toBe('pong');
    const subject = journal.subjects.get('q1')!;
    expect(subject.observed).toBe(true);
    subject.next('v1');
    subject.next({ n: 2 });
    expect(await client.next(1000)).toBe('v1');
    expect(await client.nextJson(1000)).toEqual({ n: 2 });
    client.emit('ping');
    expect(await client.next(1000)).toBe('pong');

    await client.close();
    await eventually(() => journal.closes('q1') > 0, 2000);
    expect(subject.observed).toBe(false);
    expect(subject.observers).toHaveLength(0);
    await delay(200);
    expect(journal.entries('q1')).toEqual(['close']);
  });

  it('does not hold app.close() (well under shutdownTimeout)', async () => {
    const client = await TestClient.open(t.url('/quiet?key=q2'));
    client.emit('sub');
    await eventually(() => journal.subjects.has('q2'));
    const started = Date.now();
    await t.app.close();
    const elapsed = Date.now() - started;
    expect(elapsed).toBeLessThan(1500);
    expect(await client.closed).toEqual({ code: 1001, reason: 'Server shutting down' });
    expect(journal.entries('q2')).toEqual(['close']);
    expect(journal.subjects.get('q2')!.observed).toBe(false);
  });
});

/** Seeded delays (xorshift32), 0–20 ms, so a failure can be replayed. */
function delays(seed: number): () => number {
  let x = seed;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % 21;
  };
}

@Injectable()
class WrapInterceptor implements NestInterceptor {
  intercept(_context: ExecutionContext, next: CallHandler): Observable<unknown> {
    return next.handle().pipe(map((value) => ({ wrapped: value })));
  }
}

@WsRoute('/order')
class OrderRoute {
  private readonly nextDelay = delays(0x9e3779b9);
  @OnMessage('async') async async(@MessageBody() n: number) {
    await delay(this.nextDelay());
    return n;
  }
  @UseInterceptors(WrapInterceptor)
  @OnMessage('wrapped')
  async wrapped(@MessageBody() n: number) {
    await delay(this.nextDelay());
    return n;
  }
  @OnMessage('sync') sync(@MessageBody() n: number) {
    return n;
  }
}

/** Connection races: every step of a connection's life is logged by key. */
@WsRoute('/race')
class RaceRoute {
  constructor(private readonly journal: Journal) {}
  @OnOpen() async open(@ConnectedSocket() conn: WsConnection) {
    this.journal.ids.set(String(conn.query.key), conn.id);
    this.journal.log(conn, 'open');
    const ms = Number(conn.query.open ?? 0);
    if (ms) await delay(ms);
    this.journal.log(conn, 'opened');
  }
  @OnMessage('work') async work(
    @ConnectedSocket() conn: WsConnection,
    @MessageBody() { seq, ms }: { seq: number; ms: number },
  ) {
    this.journal.log(conn, `start:${seq}`);
    await delay(ms);
    this.journal.log(conn, `done:${seq}`);
    return `done:${seq}`;
  }
  @OnMessage('terminate') terminate(@ConnectedSocket() conn: WsConnection) {
    this.journal.log(conn, 'terminate');
    conn.terminate();
    return 'after terminate';
  }
  @OnClose() closed(conn: WsConnection) {
    this.journal.log(conn, 'close');
  }
}

/** Binary messages held behind a gate the test opens, the inbound queue at its byte cap. */
@WsRoute('/gated', { maxPayload: 1024 * 1024, maxQueuedBytes: 1024 * 1024 })
class GatedRoute {
  constructor(private readonly journal: Journal) {}
  @OnMessage() async message(@ConnectedSocket() conn: WsConnection, @MessageBody() body: Buffer) {
    const seq = body.readUInt32BE(0);
    this.journal.log(conn, `start:${seq}`);
    await this.journal.gate;
    this.journal.log(conn, `done:${seq}`);
  }
  @OnClose() closed(conn: WsConnection) {
    this.journal.log(conn, 'close');
  }
}

/** A handler whose Promise never settles. */
@WsRoute('/stuck')
class StuckRoute {
  constructor(private readonly journal: Journal) {}
  @OnOpen() open(@ConnectedSocket() conn: WsConnection) {
    this.journal.ids.set(String(conn.query.key), conn.id);
  }
  @OnMessage('hang') hang(@ConnectedSocket() conn: WsConnection) {
    this.journal.log(conn, 'hang');
    return new Promise(() => undefined);
  }
  @OnClose() closed(conn: WsConnection) {
    this.journal.log(conn, 'close');
  }
}

/** WsException data that JSON cannot serialize. */
@WsRoute('/unserializable')
class UnserializableRoute {
  @OnMessage('bigint') bigint() {
    throw new WsException({ status: 'error', message: 'big', n: 10n });
  }
  @OnMessage('cycle') cycle() {
    const data: Record<string, unknown> = { status: 'error', message: 'loop' };
    data.self = data;
    throw new WsException(data);
  }
  @OnMessage('reply-bigint') replyBigint() {
    return { n: 10n };
  }
  @OnMessage('ping') ping() {
    return 'pong';
  }
}

@Module({
  imports: [WsRoutesModule.forRoot({ rateLimit: false, heartbeat: false, shutdownTimeout: 500 })],
  providers: [Journal, OrderRoute, RaceRoute, GatedRoute, StuckRoute, UnserializableRoute],
})
class ExecutorModule {}

describe('executor', () => {
  let t: TestApp;
  let journal: Journal;
  const logger = new CapturingLogger();
  beforeAll(async () => {
    t = await startApp(ExecutorModule, { logger });
    journal = t.app.get(Journal);
  });
  afterAll(() => t.app.close());

  describe('order', () => {
    /** Sends `count` messages cycling through `kinds`; the replies must come in that order. */
    async function expectOrdered(kinds: string[], count: number): Promise<void> {
      const client = await TestClient.open(t.url('/order'));
      try {
        for (let i = 0; i < count; i++) client.emit(kinds[i % kinds.length], i);
        const replies = [];
        for (let i = 0; i < count; i++) replies.push(await client.nextJson());
        expect(replies).toEqual(
          Array.from({ length: count }, (_, i) =>
            kinds[i % kinds.length] === 'wrapped' ? { wrapped: i } : i,
          ),
        );
      } finally {
        await client.close();
      }
    }

    it('replies of a handler returning a Promise (0–20 ms) come in message order', () =>
      expectOrdered(['async'], 50));

    it('with an interceptor (pipe(map)) around an async handler, replies still come in order', () =>
      expectOrdered(['wrapped'], 50));

    it('an intercepted async handler followed by sync and async ones keeps message order', () =>
      expectOrdered(['sync', 'async', 'wrapped'], 60));
  });

  describe('@OnClose runs exactly once, after the messages accepted before the close', () => {
    /** Waits for the `close` entry, then a little longer, and returns the whole log. */
    async function settledLog(key: string): Promise<string[]> {
      await eventually(() => journal.closes(key) > 0, 3000).catch(() => {
        throw new Error(`@OnClose never ran for ${key}: ${JSON.stringify(journal.entries(key))}`);
      });
      await delay(150);
      return journal.entries(key);
    }
    const work = (seq: number, ms: number) => ({ seq, ms });

    it('close while @OnOpen is still awaiting (messages sent meanwhile are handled first)', async () => {
      const keys = ['open-1', 'open-2', 'open-3', 'open-4', 'open-5'];
      await Promise.all(
        keys.map(async (key) => {
          const client = await TestClient.open(t.url(`/race?key=${key}&open=100`));
          client.emit('work', work(0, 0));
          client.emit('work', work(1, 5));
          await client.close();
          expect(await settledLog(key)).toEqual([
            'open',
            'opened',
            'start:0',
            'done:0',
            'start:1',
            'done:1',
            'close',
          ]);
        }),
      );
    });

    it('close while a handler is busy: the queued messages run, then @OnClose', async () => {
      const keys = ['busy-1', 'busy-2', 'busy-3', 'busy-4', 'busy-5'];
      await Promise.all(
        keys.map(async (key, i) => {
          const client = await TestClient.open(t.url(`/race?key=${key}`));
          client.emit('work', work(0, 100));
          client.emit('work', work(1, 0));
          client.emit('work', work(2, 10));
          await delay(10 + i * 5);
          await client.close();
          expect(await settledLog(key)).toEqual([
            'open',
            'opened',
            'start:0',
            'done:0',
            'start:1',
            'done:1',
            'start:2',
            'done:2',
            'close',
          ]);
        }),
      );
    });

    it('close immediately after connect (ws client, and a raw client that drops at the 101)', async () => {
      const keys = ['now-1', 'now-2', 'now-3', 'now-4', 'now-5'];
      await Promise.all(
        keys.map(async (key) => {
          const client = await TestClient.open(t.url(`/race?key=${key}&open=20`));
          client.socket.close();
          expect(await settledLog(key)).toEqual(['open', 'opened', 'close']);
        }),
      );
      await Promise.all(
        ['drop-1', 'drop-2', 'drop-3'].map(async (key) => {
          const raw = await openRawWebSocket(t.port, `/race?key=${key}`);
          raw.socket.resetAndDestroy();
          expect(await settledLog(key)).toEqual(['open', 'opened', 'close']);
        }),
      );
    });

    it('terminate from the server inside a handler', async () => {
      const keys = ['term-1', 'term-2', 'term-3'];
      await Promise.all(
        keys.map(async (key) => {
          const client = await TestClient.open(t.url(`/race?key=${key}`));
          client.emit('work', work(0, 30));
          client.emit('terminate');
          expect((await client.closed).code).toBe(1006);
          expect(await settledLog(key)).toEqual([
            'open',
            'opened',
            'start:0',
            'done:0',
            'terminate',
            'close',
          ]);
        }),
      );
    });

    it('terminate writes what the batch holds first: the reply of the handler before it arrives', async () => {
      // Contract 11: close, send, ping, pong and terminate first write this turn's batch.
      const client = await TestClient.open(t.url('/race?key=term-reply'));
      client.emit('work', work(0, 30));
      client.emit('terminate');
      expect((await client.closed).code).toBe(1006);
      expect(client.received).toEqual(['done:0']);
      expect(await settledLog('term-reply')).toEqual([
        'open',
        'opened',
        'start:0',
        'done:0',
        'terminate',
        'close',
      ]);
    });

    it('close while the inbound queue is at its byte cap and reading is paused', async () => {
      let release!: () => void;
      journal.gate = new Promise((resolve) => (release = resolve));
      const client = await TestClient.open(t.url('/gated?key=paused'));
      const count = 12; // 3 MiB against a 1 MiB queue: the server stops reading
      for (let i = 0; i < count; i++) {
        const message = Buffer.alloc(256 * 1024);
        message.writeUInt32BE(i, 0);
        client.send(message);
      }
      const closed = client.close();
      await delay(200);
      expect(journal.entries('paused')).toEqual(['start:0']);
      const registry = t.app.get(WsConnectionRegistry);
      expect([...registry.byRoute(GatedRoute)].map((conn) => conn.socket.isPaused)).toEqual([true]);
      release();
      journal.gate = undefined;
      const expected = Array.from({ length: count }, (_, i) => [`start:${i}`, `done:${i}`]).flat();
      expect(await settledLog('paused')).toEqual([...expected, 'close']);
      expect(await closed).toEqual({ code: 1005, reason: '' });
    });

    it('a peer reset (TCP RST) while a handler is busy', async () => {
      const keys = ['reset-1', 'reset-2', 'reset-3'];
      await Promise.all(
        keys.map(async (key) => {
          const raw = await openRawWebSocket(t.port, `/race?key=${key}`);
          raw.write(
            Buffer.concat([
              clientFrame(Opcode.Text, JSON.stringify({ event: 'work', data: work(0, 100) })),
              clientFrame(Opcode.Text, JSON.stringify({ event: 'work', data: work(1, 0) })),
            ]),
          );
          await eventually(() => journal.entries(key).includes('start:0'));
          raw.socket.resetAndDestroy();
          expect(await settledLog(key)).toEqual([
            'open',
            'opened',
            'start:0',
            'done:0',
            'start:1',
            'done:1',
            'close',
          ]);
        }),
      );
    });
  });

  it('a handler whose Promise never settles: @OnClose runs after shutdownTimeout, with a warning', async () => {
    const client = await TestClient.open(t.url('/stuck?key=stuck-1'));
    client.emit('hang');
    await eventually(() => journal.entries('stuck-1').includes('hang'));
    const warningsBefore = logger.lines.filter((line) => line.level === 'warn').length;
    const closedAt = Date.now();
    await client.close();
    await eventually(() => journal.closes('stuck-1') > 0, 3000).catch(() => {
      throw new Error('@OnClose never ran after a handler that never settles');
    });
    const elapsed = Date.now() - closedAt;
    expect(elapsed).toBeGreaterThanOrEqual(400); // it did wait for the handler, up to 500 ms
    expect(elapsed).toBeLessThan(2000);
    await delay(100);
    expect(journal.entries('stuck-1')).toEqual(['hang', 'close']);
    const warnings = logger.lines
      .filter((line) => line.level === 'warn')
      .slice(warningsBefore)
      .map((line) => line.text);
    const id = journal.ids.get('stuck-1')!;
    expect(warnings.some((text) => text.includes('/stuck') && text.includes(id))).toBe(true);
  });

  describe('unserializable WsException data', () => {
    it.each(['bigint', 'cycle', 'reply-bigint'])(
      '%s: the client gets "Internal server error", the error is logged, the connection answers the next message',
      async (event) => {
        const client = await TestClient.open(t.url('/unserializable'));
        try {
          const errorsBefore = logger.lines.filter((line) => line.level === 'error').length;
          client.emit(event);
          const text = String(await client.next(1000));
          expect(JSON.parse(text)).toMatchObject({
            event: 'exception',
            data: { status: 'error', message: 'Internal server error' },
          });
          expect(text).not.toMatch(/\n\s+at |TypeError|serialize|circular/i);
          expect(logger.lines.filter((line) => line.level === 'error').length).toBeGreaterThan(
            errorsBefore,
          );
          client.emit('ping');
          expect(await client.next(1000)).toBe('pong');
          expect(client.socket.readyState).toBe(1);
        } finally {
          await client.close();
        }
      },
    );
  });

  it('leaves no connection behind', async () => {
    const registry = t.app.get(WsConnectionRegistry);
    await eventually(() => registry.size === 0, 2000).catch(() => {
      throw new Error(`left behind: ${JSON.stringify([...registry])}`);
    });
  });
});
