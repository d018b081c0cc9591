import 'reflect-metadata';
import { Injectable, Module } from '@nestjs/common';
import type { Socket } from 'node:net';
import {
  BroadcastService,
  ConnectedSocket,
  OnDrain,
  OnOpen,
  WsConnection,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import { CapturingLogger, startApp, type TestApp } from '../utils/app.js';
import { settleGarbage } from '../utils/gc.js';
import { delay, eventually, TestClient } from '../utils/ws-client.js';

const KiB = 1024;
const CAP = 256 * KiB;
const LOW = 64 * KiB;

@Injectable()
class Drains {
  readonly ids: string[] = [];
}

@WsRoute('/feed', { heartbeat: false, rateLimit: false })
class FeedRoute {
  constructor(private readonly drains: Drains) {}
  @OnOpen() open(@ConnectedSocket() conn: WsConnection) {
    conn.join('feed');
  }
  @OnDrain() drained(conn: WsConnection) {
    this.drains.ids.push(conn.id);
  }
}

function moduleWith(slowConsumer: 'close' | 'drop') {
  @Module({
    imports: [WsRoutesModule.forRoot({ maxBufferedAmount: CAP, lowWatermark: LOW, slowConsumer })],
    providers: [Drains, FeedRoute],
  })
  class BackpressureModule {}
  return BackpressureModule;
}

/** A client that stops reading: the kernel buffers fill, then the server's queue would grow. */
async function pausedClient(t: TestApp): Promise<TestClient> {
  const client = await TestClient.open(t.url('/feed'));
  (client.socket as unknown as { _socket: Socket })._socket.pause();
  return client;
}

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));
/** Counts the messages a client receives, and checks they arrive in order, keeping none. */
function counter(client: TestClient) {
  const state = { count: 0, inOrder: true };
  client.socket.on('message', (data: Buffer) => {
    client.received.length = 0;
    if (data.readUInt32BE(0) !== state.count) state.inOrder = false;
    state.count++;
  });
  return state;
}

function message(seq: number, size: number): Buffer {
  const buffer = Buffer.alloc(size, 0x61);
  buffer.writeUInt32BE(seq, 0);
  return buffer;
}

describe('backpressure', () => {
  const logger = new CapturingLogger();

  /** An app with one client that reads and one that never does (registered second). */
  async function oneHealthyOnePaused(slowConsumer: 'close' | 'drop') {
    const t = await startApp(moduleWith(slowConsumer), { logger });
    const registry = t.app.get(WsConnectionRegistry);
    const healthy = await TestClient.open(t.url('/feed'));
    const count = counter(healthy);
    const paused = await pausedClient(t);
    await eventually(() => registry.size === 2);
    const slowConn = [...registry][1];
    return { t, broadcast: t.app.get(BroadcastService), healthy, count, paused, slowConn };
  }

  it("bounds a client that never reads ('drop'): its queue stays at the cap, memory does not grow, others get everything", async () => {
    const t = await startApp(moduleWith('drop'), { logger });
    try {
      const registry = t.app.get(WsConnectionRegistry);
      const broadcast = t.app.get(BroadcastService);
      const healthy = await Promise.all([
        TestClient.open(t.url('/feed')),
        TestClient.open(t.url('/feed')),
      ]);
      const counts = healthy.map(counter);
      const paused = await pausedClient(t);
      await eventually(() => registry.size === 3);
      const slowConn = [...registry][2]; // registered last

      await settleGarbage();
      const before = process.memoryUsage().arrayBuffers;
      const size = 16 * KiB;
      // Bursts stay under the cap: it counts the bytes of the current turn too, so a burst
      // larger than the cap is a slow consumer by definition.
      const bursts = 250;
      const perBurst = 12; // 3000 messages, 48 MiB to each client
      let maxQueued = 0;
      for (let b = 0; b < bursts; b++) {
        for (let i = 0; i < perBurst; i++)
          broadcast.to('feed').send(message(b * perBurst + i, size));
        await nextTurn();
        maxQueued = Math.max(maxQueued, slowConn.bufferedAmount);
        // let the healthy clients keep up, as real ones on other machines would
        await eventually(() => counts.every((c) => c.count >= (b + 1) * perBurst - perBurst), 5000);
      }
      await eventually(() => counts.every((c) => c.count === bursts * perBurst), 10000);
      expect(counts.every((c) => c.inOrder)).toBe(true);

      // Over the cap, it gets nothing more: at most one message on top, even within a turn.
      expect(maxQueued).toBeLessThanOrEqual(CAP + size + 4);
      expect(slowConn.droppedMessages).toBeGreaterThan((bursts * perBurst) / 2);
      expect(slowConn.readyState).toBe(WsConnection.OPEN);
      await settleGarbage();
      const grown = process.memoryUsage().arrayBuffers - before;
      expect(grown).toBeLessThan(CAP + perBurst * size + 8 * 1024 * KiB); // vs 48 MiB sent
      expect(logger.text('warn')).toContain(
        `connection ${slowConn.id} has over ${CAP} bytes waiting`,
      );
      expect(logger.text('warn').split(slowConn.id).length - 1).toBe(1); // one line, not one per message
      paused.socket.terminate();
      await Promise.all(healthy.map((client) => client.close()));
    } finally {
      await t.app.close();
    }
  });

  it("closes a client that never reads with 1013 ('close'); it sees the code once it reads again", async () => {
    const { t, broadcast, healthy, count, paused, slowConn } = await oneHealthyOnePaused('close');
    try {
      let sent = 0;
      while (slowConn.readyState === WsConnection.OPEN && sent < 4000) {
        for (let i = 0; i < 10; i++) broadcast.to('feed').send(message(sent++, 16 * KiB));
        await nextTurn();
        await eventually(() => count.count >= sent - 10, 5000);
      }
      expect(slowConn.readyState).toBe(WsConnection.CLOSING);
      expect(logger.text('warn')).toContain(
        `connection ${slowConn.id} has over ${CAP} bytes waiting to be sent; closing it with 1013`,
      );
      (paused.socket as unknown as { _socket: Socket })._socket.resume();
      expect(await paused.closed).toEqual({ code: 1013, reason: 'Slow consumer' });
      await eventually(() => count.count === sent);
      expect(count.inOrder).toBe(true);
      await healthy.close();
    } finally {
      await t.app.close();
    }
  });

  it('skips a lagging client for volatile messages and fires @OnDrain once it caught up', async () => {
    const { t, broadcast, healthy, count, paused, slowConn } = await oneHealthyOnePaused('drop');
    const drains = t.app.get(Drains);
    try {
      let sent = 0;
      while (slowConn.bufferedAmount <= LOW && sent < 2000) {
        broadcast.to('feed').send(message(sent++, 16 * KiB));
        await nextTurn();
      }
      expect(slowConn.bufferedAmount).toBeGreaterThan(LOW);
      const droppedBefore = slowConn.droppedMessages;
      const reached = broadcast.to('feed').send(message(sent++, 100), { volatile: true });
      expect(reached).toBe(1);
      expect(slowConn.droppedMessages).toBe(droppedBefore + 1);
      await eventually(() => count.count === sent);
      expect(drains.ids).not.toContain(slowConn.id);
      (paused.socket as unknown as { _socket: Socket })._socket.resume();
      await eventually(() => drains.ids.includes(slowConn.id), 5000);
      expect(healthy.socket.readyState).toBe(1);
      await Promise.all([healthy.close(), paused.close()]);
    } finally {
      await t.app.close();
    }
  });
});

@WsRoute('/busy', { heartbeat: { interval: 1000, timeout: 500 }, rateLimit: false })
class BusyRoute {
  @OnOpen() open() {
    return 'hi';
  }
}

@Module({ imports: [WsRoutesModule.forRoot()], providers: [BusyRoute] })
class BusyModule {}

describe('heartbeat under a busy event loop', () => {
  it('does not terminate healthy peers whose pongs waited behind a long synchronous burst', async () => {
    const t = await startApp(BusyModule);
    try {
      const registry = t.app.get(WsConnectionRegistry);
      const broadcast = t.app.get(BroadcastService);
      const clients = await Promise.all(
        Array.from({ length: 200 }, () => TestClient.open(t.url('/busy'))),
      );
      await Promise.all(clients.map((client) => client.next()));
      const counts = clients.map(counter);
      const closes: number[] = [];
      for (const client of clients) void client.closed.then(({ code }) => closes.push(code));

      // Let a ping go out, then keep the event loop busy for 3 s (6 heartbeat timeouts).
      await delay(1100);
      const until = Date.now() + 3000;
      let sent = 0;
      while (Date.now() < until) {
        if (sent < 1000) broadcast.toRoute(BusyRoute).send(message(sent++, 200));
      }
      await delay(2500);
      expect(closes).toEqual([]);
      expect(registry.size).toBe(200);
      await eventually(() => counts.every((c) => c.count === sent), 5000);
      expect(counts.every((c) => c.inOrder)).toBe(true);
      await Promise.all(clients.map((client) => client.close()));
    } finally {
      await t.app.close();
    }
  });
});
