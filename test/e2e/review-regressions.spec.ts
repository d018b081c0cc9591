import 'reflect-metadata';
import {
  Injectable,
  Module,
  UseInterceptors,
  type CallHandler,
  type ExecutionContext,
  type NestInterceptor,
  type Type,
} from '@nestjs/common';
import type { Socket } from 'node:net';
import { from, switchMap, type Observable } from 'rxjs';
import {
  ConnectedSocket,
  HEARTBEAT_TIMEOUT_REASON,
  MessageBody,
  OnClose,
  OnDrain,
  OnMessage,
  WsConnection,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import { startApp, type TestApp } from '../utils/app.js';
import { delay, eventually, TestClient } from '../utils/ws-client.js';

/**
 * Guarantees that held over `ws`'s per-message deflate, a handler that never settles, an
 * interceptor that waits before calling the handler, and one large write to a slow reader:
 * - a fragmented escape-hatch message on a deflate route reaches the client whole, the batched
 *   replies after it;
 * - `@OnDrain` fires on a deflate route, where `ws.send()` frames the message;
 * - `app.close()` waits out `shutdownTimeout` for a connection still handling a message and
 *   runs its `@OnClose` then (not a `closeTimeout` after an `app.close()` that returned at once);
 * - a close waits for a stuck handler `closeTimeout` once, not twice;
 * - a connection dropped while an interceptor waits runs `@OnClose` at once;
 * - the heartbeat spares a peer that reads one large write slowly.
 */

const MB = 1_000_000;

/** What the routes saw, in the order they saw it, with timestamps. */
@Injectable()
class Journal {
  readonly entries: { what: string; at: number }[] = [];
  readonly drains = new Map<string, number>();
  readonly closes: { code?: number; reason?: string; at: number }[] = [];
  log(what: string): void {
    this.entries.push({ what, at: Date.now() });
  }
  has(what: string): boolean {
    return this.entries.some((entry) => entry.what === what);
  }
  at(what: string): number | undefined {
    return this.entries.find((entry) => entry.what === what)?.at;
  }
  count(what: string): number {
    return this.entries.filter((entry) => entry.what === what).length;
  }
}

/** Starts `module`, runs `body`, and closes the app. */
async function withApp(module: Type, body: (t: TestApp, journal: Journal) => Promise<void>) {
  const t = await startApp(module);
  try {
    await body(t, t.app.get(Journal));
  } finally {
    await t.app.close();
  }
}

/** The only connection of a route, once it is registered. */
async function onlyConnection(t: TestApp, route: Type): Promise<WsConnection> {
  const registry = t.app.get(WsConnectionRegistry);
  await eventually(() => registry.byRoute(route).size === 1);
  return [...registry.byRoute(route)][0];
}

// ---------------------------------------------------------------------------------------------
// Per-message deflate: escape-hatch fragments and @OnDrain

const FRAGMENT = 'a'.repeat(4096);
/** A long message as its first characters and length, for a readable diff. */
const short = (text: string) => (text.length > 40 ? `${text.slice(0, 8)}…(${text.length})` : text);
const DRAIN_PAYLOAD = 5 * MB;

@WsRoute('/deflate', { perMessageDeflate: true, lowWatermark: 1000, maxBufferedAmount: 100 * MB })
class DeflateRoute {
  constructor(private readonly journal: Journal) {}

  /** A fragmented message through `conn.socket`, batched replies before its last fragment. */
  @OnMessage('fragments')
  fragments(@ConnectedSocket() conn: WsConnection) {
    conn.socket.send(FRAGMENT, { fin: false });
    conn.send('batched-1');
    setTimeout(() => {
      conn.send('batched-2');
      conn.socket.send(FRAGMENT, { fin: true });
      conn.send('after');
    }, 20);
  }

  @OnMessage('ping') ping(@MessageBody() n: number) {
    return `pong:${n}`;
  }

  /** One message far above lowWatermark, framed (and compressed) by `ws.send()`. */
  @OnMessage('big') big(@ConnectedSocket() conn: WsConnection) {
    conn.send('x'.repeat(DRAIN_PAYLOAD));
  }

  @OnDrain() drained(conn: WsConnection) {
    this.journal.drains.set(conn.id, (this.journal.drains.get(conn.id) ?? 0) + 1);
  }
}

@Module({
  imports: [WsRoutesModule.forRoot({ rateLimit: false, heartbeat: false })],
  providers: [Journal, DeflateRoute],
})
class DeflateModule {}

describe('per-message deflate route', () => {
  it('a fragmented escape-hatch message arrives whole, the batched replies after it, no protocol error', () =>
    withApp(DeflateModule, async (t) => {
      const client = await TestClient.open(t.url('/deflate'), undefined, {
        perMessageDeflate: true,
      });
      expect(client.socket.extensions).toContain('permessage-deflate');
      const errors: string[] = [];
      client.socket.on('error', (error) => errors.push(error.message));
      client.emit('fragments');
      const received: string[] = [];
      for (let i = 0; i < 4; i++) {
        const message = await client.next(1000).catch((error: Error) => error.message);
        received.push(short(String(message)));
      }
      expect({ received, errors }).toEqual({
        received: [short(FRAGMENT + FRAGMENT), 'batched-1', 'batched-2', 'after'],
        errors: [],
      });
      // Still open: the next exchange works.
      client.emit('ping', 1);
      expect(await client.next(1000)).toBe('pong:1');
      expect(client.socket.readyState).toBe(1);
      expect(await client.close()).toEqual({ code: 1005, reason: '' });
    }));

  it('@OnDrain fires after one message that ws.send() frames drains below lowWatermark', () =>
    withApp(DeflateModule, async (t, journal) => {
      const client = await TestClient.open(t.url('/deflate'), undefined, {
        perMessageDeflate: true,
      });
      const conn = await onlyConnection(t, DeflateRoute);
      client.emit('big');
      const message = await client.next(5000);
      expect(message.length).toBe(DRAIN_PAYLOAD);
      await eventually(() => (journal.drains.get(conn.id) ?? 0) > 0, 2000).catch(() => {
        throw new Error(
          `@OnDrain fired ${journal.drains.get(conn.id) ?? 0} times; bufferedAmount ${conn.bufferedAmount}`,
        );
      });
      expect(conn.bufferedAmount).toBeLessThanOrEqual(1000);
      await delay(100);
      expect(journal.drains.get(conn.id)).toBe(1);
      await client.close();
    }));
});

// ---------------------------------------------------------------------------------------------
// @OnClose timing: a handler that never settles, an interceptor that waits

/** Waits 200 ms before it lets the handler run. */
@Injectable()
class SlowAuthInterceptor implements NestInterceptor {
  intercept(_context: ExecutionContext, next: CallHandler): Observable<unknown> {
    return from(delay(200)).pipe(switchMap(() => next.handle()));
  }
}

@WsRoute('/stuck')
class StuckRoute {
  constructor(private readonly journal: Journal) {}
  @OnMessage('hang') hang() {
    this.journal.log('hang');
    return new Promise(() => undefined);
  }
  @OnClose() closed() {
    this.journal.log('close');
  }
}

@WsRoute('/slow-auth')
class SlowAuthRoute {
  constructor(private readonly journal: Journal) {}
  @UseInterceptors(SlowAuthInterceptor)
  @OnMessage('x')
  x() {
    this.journal.log('handled');
    return 'ok';
  }
  @OnClose() closed() {
    this.journal.log('close');
  }
}

function closeTimingModule(shutdownTimeout: number): Type {
  @Module({
    imports: [WsRoutesModule.forRoot({ rateLimit: false, heartbeat: false, shutdownTimeout })],
    providers: [Journal, SlowAuthInterceptor, StuckRoute, SlowAuthRoute],
  })
  class CloseTimingModule {}
  return CloseTimingModule;
}

describe('@OnClose timing', () => {
  it('app.close() waits out shutdownTimeout for a connection whose handler never settles, and runs its @OnClose then', async () => {
    // This test closes the app itself: closing it is what it checks.
    const t = await startApp(closeTimingModule(1000));
    const journal = t.app.get(Journal);
    const client = await TestClient.open(t.url('/stuck'));
    client.emit('hang');
    await eventually(() => journal.has('hang'));
    const started = Date.now();
    await t.app.close();
    const resolvedAt = Date.now();
    // @OnClose has run by the time app.close() resolves, after the connection got its time.
    const closeAt = journal.at('close');
    expect({
      appCloseWaited: resolvedAt - started >= 800 && resolvedAt - started < 2500,
      onCloseRan: closeAt === undefined ? 'not yet' : closeAt <= resolvedAt ? 'before' : 'after',
    }).toEqual({ appCloseWaited: true, onCloseRan: 'before' });
    expect(journal.count('close')).toBe(1);
    expect((await client.closed).code).toBe(1001);
  });

  it('a close waits for a handler that never settles closeTimeout once, not twice', () =>
    withApp(closeTimingModule(1000), async (t, journal) => {
      const client = await TestClient.open(t.url('/stuck'));
      client.emit('hang');
      await eventually(() => journal.has('hang'));
      const closedAt = Date.now();
      client.socket.close();
      await eventually(() => journal.has('close'), 3000);
      const elapsed = journal.at('close')! - closedAt;
      expect(elapsed).toBeGreaterThan(800);
      expect(elapsed).toBeLessThan(1700);
      expect(journal.count('close')).toBe(1);
      await client.closed;
    }));

  it('a connection dropped while an interceptor waits before next.handle() runs @OnClose at once', () =>
    withApp(closeTimingModule(3000), async (t, journal) => {
      const client = await TestClient.open(t.url('/slow-auth'));
      client.emit('x');
      await delay(50);
      const terminatedAt = Date.now();
      client.socket.terminate();
      await eventually(() => journal.has('close'), 4000);
      const elapsed = journal.at('close')! - terminatedAt;
      expect(elapsed).toBeLessThan(500);
      await delay(300); // past the interceptor's 200 ms
      expect(journal.count('close')).toBe(1);
      // Nothing is left waiting for it: the shutdown has no connection to wait for.
      const closing = Date.now();
      await t.app.close();
      expect(Date.now() - closing).toBeLessThan(1000);
    }));
});

// ---------------------------------------------------------------------------------------------
// Heartbeat and one large write to a slow reader

const LARGE_WRITE = 40 * MB;

@WsRoute('/large', { heartbeat: { interval: 1000, timeout: 1000 }, maxBufferedAmount: 200 * MB })
class LargeWriteRoute {
  constructor(private readonly journal: Journal) {}
  @OnMessage('large') large(@ConnectedSocket() conn: WsConnection) {
    conn.send(Buffer.alloc(LARGE_WRITE, 1));
  }
  @OnClose() closed(conn: WsConnection) {
    this.journal.closes.push({ code: conn.closeCode, reason: conn.closeReason, at: Date.now() });
  }
}

@Module({
  imports: [WsRoutesModule.forRoot({ rateLimit: false })],
  providers: [Journal, LargeWriteRoute],
})
class LargeWriteModule {}

describe('heartbeat', () => {
  it(
    'does not terminate a slow but reading peer during one large write',
    () =>
      withApp(LargeWriteModule, async (t, journal) => {
        const client = await TestClient.open(t.url('/large'), undefined, { maxPayload: 100 * MB });
        const conn = await onlyConnection(t, LargeWriteRoute);
        const raw = (client.socket as unknown as { _socket: Socket })._socket;
        // Read ~4 MB/s: every 100 ms, resume until another 400 kB came in, then pause.
        const perTick = 400_000;
        let read = 0;
        let allowance = 0;
        raw.on('data', (chunk: Buffer) => {
          read += chunk.length;
          if (read >= allowance) raw.pause();
        });
        raw.pause();
        let closed = false;
        void client.closed.then(() => (closed = true));
        const startedAt = Date.now();
        client.emit('large');
        let writing = false;
        let writtenAt: number | undefined;
        const deadline = startedAt + 14_000;
        while (client.received.length === 0 && !closed && Date.now() < deadline) {
          if (conn.bufferedAmount > 0) writing = true;
          else if (writing && writtenAt === undefined) {
            // The kernel took the whole write: what is left sits in kernel buffers, and a ping
            // sent now is judged as one sent with an empty queue. Read the rest at once.
            writtenAt = Date.now() - startedAt;
            allowance = Infinity;
          }
          allowance += perTick;
          raw.resume();
          await delay(100);
        }
        allowance = Infinity;
        raw.resume();
        const elapsed = Date.now() - startedAt;
        expect({
          closes: journal.closes.map(({ code, reason }) => ({ code, reason })),
          closedAfter: closed ? elapsed : undefined,
        }).toEqual({ closes: [], closedAfter: undefined });
        const message = await client.next(1000);
        expect(message.length).toBe(LARGE_WRITE);
        // The write lasted several heartbeat rounds: the reader's pace was what kept it going.
        expect(writtenAt).toBeGreaterThan(5000);
        expect(journal.closes.map(({ reason }) => reason)).not.toContain(HEARTBEAT_TIMEOUT_REASON);
        await client.close();
      }),
    20_000,
  );
});
