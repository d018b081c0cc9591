import 'reflect-metadata';
import { Injectable, Module } from '@nestjs/common';
import type { Socket } from 'node:net';
import {
  BroadcastService,
  ConnectedSocket,
  HEARTBEAT_TIMEOUT_REASON,
  MessageBody,
  OnClose,
  OnDrain,
  OnMessage,
  OnOpen,
  WsConnection,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import { startApp, type TestApp } from '../utils/app.js';
import { settleGarbage } from '../utils/gc.js';
import {
  clientCloseFrame,
  clientFrame,
  Opcode,
  openRawWebSocket,
  parseFrames,
  type RawSocket,
} from '../utils/raw-socket.js';
import { delay, eventually, TestClient } from '../utils/ws-client.js';

/**
 * The write path (issue 9, findings 2, 4, 5 and 6): whoever closes or writes to a `ws` socket
 * (`ws` answering the peer's close, a protocol error, the `conn.socket` escape hatch), what this
 * turn's batch holds goes first; the outbound cap holds inside one synchronous loop; the inbound
 * queue is bounded by bytes; `@OnDrain` fires whatever the watermark; the heartbeat judges a
 * peer whose backlog does not move.
 */

const KiB = 1024;
const MiB = 1024 * KiB;

/** What the routes saw, for the tests to read. */
@Injectable()
class Journal {
  /** Stats of the last synchronous flood, taken right after the loop, inside the handler. */
  flood: { bufferedAmount: number; sent: number; dropped: number; readyState: number } | undefined;
  /** Inbound route: messages `ws` delivered (read from the socket), and those handled. */
  arrived = 0;
  readonly handled: number[] = [];
  gate: Promise<void> | undefined;
  readonly drains = new Map<string, number>();
  readonly closes: { id: string; code?: number; reason?: string }[] = [];
}

/** Replies of every kind, for the send + close and escape-hatch tests. */
@WsRoute('/reply')
class ReplyRoute {
  constructor(private readonly broadcast: BroadcastService) {}

  @OnMessage('sync')
  sync(@MessageBody() n: number) {
    return `sync:${n}`;
  }

  @OnMessage('async')
  async async(@MessageBody() n: number) {
    await delay(10);
    return `async:${n}`;
  }

  @OnMessage('broadcast')
  sendBroadcast(@ConnectedSocket() conn: WsConnection, @MessageBody() n: number) {
    this.broadcast.toConnection(conn).send(`broadcast:${n}`);
  }

  /** The raw `ws` escape hatch closes: the batched message still goes first. */
  @OnMessage('hatch-close')
  hatchClose(@ConnectedSocket() conn: WsConnection) {
    conn.send('x');
    conn.socket.close(1000, 'hatch');
  }

  /** A fragmented message through the escape hatch, a batched reply in the middle of it. */
  @OnMessage('fragments')
  async fragments(@ConnectedSocket() conn: WsConnection, @MessageBody() later: boolean) {
    conn.socket.send('a', { fin: false });
    conn.send('reply');
    // In a later turn the batch has been flushed already: it must not have gone inside "ab".
    if (later) await delay(20);
    conn.socket.send('b', { fin: true });
  }
}

/** 200 distinct 256 KiB messages in one synchronous loop; the stats are taken right after. */
function flood(conn: WsConnection, journal: Journal): void {
  let sent = 0;
  for (let i = 0; i < FLOOD_COUNT; i++) {
    if (conn.send(Buffer.alloc(FLOOD_SIZE, i & 0xff))) sent++;
  }
  journal.flood = {
    bufferedAmount: conn.bufferedAmount,
    sent,
    dropped: conn.droppedMessages,
    readyState: conn.readyState,
  };
}
const FLOOD_COUNT = 200;
const FLOOD_SIZE = 256 * KiB;
/** A 256 KiB binary frame's header: 2 bytes and a 64-bit length. */
const FLOOD_FRAME = FLOOD_SIZE + 10;

@WsRoute('/flood-close', { maxBufferedAmount: MiB, slowConsumer: 'close' })
class FloodCloseRoute {
  constructor(private readonly journal: Journal) {}
  @OnMessage('flood') flood(@ConnectedSocket() conn: WsConnection) {
    flood(conn, this.journal);
  }
}

@WsRoute('/flood-drop', { maxBufferedAmount: MiB, slowConsumer: 'drop' })
class FloodDropRoute {
  constructor(private readonly journal: Journal) {}
  @OnMessage('flood') flood(@ConnectedSocket() conn: WsConnection) {
    flood(conn, this.journal);
  }
}

/** Holds every message until the test opens the gate; counts what `ws` read meanwhile. */
@WsRoute('/inbound', { maxPayload: MiB, maxQueuedBytes: 2 * MiB })
class InboundRoute {
  constructor(private readonly journal: Journal) {}
  @OnOpen() open(@ConnectedSocket() conn: WsConnection) {
    conn.socket.on('message', () => this.journal.arrived++);
  }
  @OnMessage() async message(@MessageBody() body: Buffer) {
    const seq = body.readUInt32BE(0);
    this.journal.handled.push(seq);
    await this.journal.gate;
    return String(seq);
  }
}

@WsRoute('/drain', { lowWatermark: 4 * KiB, maxBufferedAmount: MiB, slowConsumer: 'drop' })
class DrainRoute {
  constructor(private readonly journal: Journal) {}
  @OnDrain() drained(conn: WsConnection) {
    this.journal.drains.set(conn.id, (this.journal.drains.get(conn.id) ?? 0) + 1);
  }
}

@Module({
  imports: [WsRoutesModule.forRoot({ rateLimit: false, heartbeat: false })],
  providers: [Journal, ReplyRoute, FloodCloseRoute, FloodDropRoute, InboundRoute, DrainRoute],
})
class AppModule {}

describe('write path', () => {
  let t: TestApp;
  let journal: Journal;
  let registry: WsConnectionRegistry;
  beforeAll(async () => {
    t = await startApp(AppModule);
    journal = t.app.get(Journal);
    registry = t.app.get(WsConnectionRegistry);
  });
  afterAll(() => t.app.close());

  describe('a reply to a message that came with the close goes before the close frame', () => {
    it.each(['sync', 'async', 'broadcast'])(
      'ws client: send + close in one tick, 50 times (%s)',
      async (kind) => {
        let lost = 0;
        // 10 rounds of 5 clients in parallel.
        for (let round = 0; round < 10; round++) {
          const results = await Promise.all(
            Array.from({ length: 5 }, async (_, i) => {
              const n = round * 5 + i;
              const client = await TestClient.open(t.url('/reply'));
              client.emit(kind, n);
              const closed = await client.close();
              return { received: client.received, closed };
            }),
          );
          for (const [i, { received, closed }] of results.entries()) {
            expect(closed).toEqual({ code: 1005, reason: '' });
            if (received.length === 0) lost++;
            else expect(received).toEqual([`${kind}:${round * 5 + i}`]);
          }
        }
        expect({ kind, lost, of: 50 }).toEqual({ kind, lost: 0, of: 50 });
      },
    );

    it.each(['sync', 'async', 'broadcast'])(
      'raw client: message frame and close frame in one TCP write, 20 times (%s)',
      async (kind) => {
        let lost = 0;
        for (let n = 0; n < 20; n++) {
          const raw = await openRawWebSocket(t.port, '/reply');
          raw.write(
            Buffer.concat([
              clientFrame(Opcode.Text, JSON.stringify({ event: kind, data: n })),
              clientCloseFrame(1000),
            ]),
          );
          await raw.waitClosed(2000);
          const frames = raw.frames();
          if (frames.length === 1) lost++;
          else {
            expect(frames).toEqual([
              { fin: true, opcode: Opcode.Text, masked: false, text: `${kind}:${n}` },
              { fin: true, opcode: Opcode.Close, masked: false, code: 1000, reason: '' },
            ]);
          }
          // Whatever happened, the last frame is the close frame: nothing follows it.
          expect(frames.at(-1)).toMatchObject({ opcode: Opcode.Close, code: 1000 });
        }
        expect({ kind, lost, of: 20 }).toEqual({ kind, lost: 0, of: 20 });
      },
    );

    it('ws closes on a protocol error: the reply to the valid message before it goes first', async () => {
      let lost = 0;
      for (let n = 0; n < 10; n++) {
        const raw = await openRawWebSocket(t.port, '/reply');
        raw.write(
          Buffer.concat([
            clientFrame(Opcode.Text, JSON.stringify({ event: 'sync', data: n })),
            clientFrame(Opcode.Text, 'unmasked', { mask: false }),
          ]),
        );
        await waitForCloseFrame(raw);
        const frames = raw.frames();
        if (frames.length === 1) lost++;
        else {
          expect(frames).toEqual([
            { fin: true, opcode: Opcode.Text, masked: false, text: `sync:${n}` },
            { fin: true, opcode: Opcode.Close, masked: false, code: 1002, reason: '' },
          ]);
        }
        expect(frames.at(-1)).toMatchObject({ opcode: Opcode.Close, code: 1002 });
        raw.destroy();
      }
      expect({ lost, of: 10 }).toEqual({ lost: 0, of: 10 });
    });

    it('conn.send(x) then conn.socket.close(1000): x arrives before the close', async () => {
      for (let n = 0; n < 10; n++) {
        const client = await TestClient.open(t.url('/reply'));
        client.emit('hatch-close');
        expect(await client.closed).toEqual({ code: 1000, reason: 'hatch' });
        expect(client.received).toEqual(['x']);
      }
    });
  });

  it.each([
    ['in the same turn', false],
    ['in a later turn', true],
  ])(
    'a batched reply waits for a fragmented escape-hatch message to end (fin: true %s)',
    async (_when, later) => {
      const client = await TestClient.open(t.url('/reply'));
      const errors: string[] = [];
      client.socket.on('error', (error) => errors.push(error.message));
      client.emit('fragments', later);
      expect(await client.next(1000)).toBe('ab');
      expect(await client.next(1000)).toBe('reply');
      // Still open, no protocol error on either side: the next exchange works.
      client.emit('sync', 1);
      expect(await client.next(1000)).toBe('sync:1');
      expect(errors).toEqual([]);
      expect(client.socket.readyState).toBe(1);
      expect(await client.close()).toEqual({ code: 1005, reason: '' });
    },
  );

  describe('a synchronous loop of sends to a client that stopped reading', () => {
    /** A raw client that never reads what the server sends (kernel buffers fill, then ours). */
    async function stoppedReader(path: string): Promise<{ raw: RawSocket; conn: WsConnection }> {
      const before = new Set(registry.byRoute(path));
      const raw = await openRawWebSocket(t.port, path);
      raw.socket.pause();
      let conn: WsConnection | undefined;
      await eventually(
        () => (conn = [...registry.byRoute(path)].find((c) => !before.has(c))) !== undefined,
      );
      return { raw, conn: conn! };
    }

    it("'close': stays within the cap plus one message, then closes with 1013", async () => {
      journal.flood = undefined;
      const { raw, conn } = await stoppedReader('/flood-close');
      await settleGarbage();
      const before = process.memoryUsage().arrayBuffers;
      raw.write(clientFrame(Opcode.Text, JSON.stringify({ event: 'flood' })));
      await eventually(() => journal.flood !== undefined);
      const stats = journal.flood!;
      expect(stats.bufferedAmount).toBeLessThanOrEqual(MiB + FLOOD_FRAME + 64);
      expect(stats.readyState).toBe(WsConnection.CLOSING);
      expect(stats.sent).toBeLessThan(FLOOD_COUNT);
      await delay(100); // the end-of-turn flushes have run
      await settleGarbage();
      const grown = process.memoryUsage().arrayBuffers - before;
      expect(grown).toBeLessThan(8 * MiB); // vs 50 MiB sent in the loop

      // Reading again, the client gets every accepted message, in order, then the 1013.
      raw.socket.resume();
      await waitForCloseFrame(raw, 5000);
      const frames = parseFrames(raw.received.subarray(raw.frameStart)).frames;
      const data = frames.filter((frame) => frame.opcode !== Opcode.Close);
      expect(data.length).toBe(stats.sent);
      data.forEach((frame, i) => {
        expect(frame.payload.length).toBe(FLOOD_SIZE);
        expect(frame.payload[0]).toBe(i & 0xff);
      });
      const close = frames.at(-1)!;
      expect(close.opcode).toBe(Opcode.Close);
      expect(close.payload.readUInt16BE(0)).toBe(1013);
      expect(conn.readyState).toBeGreaterThanOrEqual(WsConnection.CLOSING);
      raw.destroy();
    });

    it("'drop': stays within the cap plus one message and counts every dropped message", async () => {
      journal.flood = undefined;
      const { raw, conn } = await stoppedReader('/flood-drop');
      await settleGarbage();
      const before = process.memoryUsage().arrayBuffers;
      raw.write(clientFrame(Opcode.Text, JSON.stringify({ event: 'flood' })));
      await eventually(() => journal.flood !== undefined);
      const stats = journal.flood!;
      expect(stats.bufferedAmount).toBeLessThanOrEqual(MiB + FLOOD_FRAME);
      expect(stats.readyState).toBe(WsConnection.OPEN);
      expect(stats.sent).toBeGreaterThan(0);
      expect(stats.dropped).toBe(FLOOD_COUNT - stats.sent);
      expect(stats.dropped).toBeGreaterThan(FLOOD_COUNT / 2);
      await delay(100);
      await settleGarbage();
      const grown = process.memoryUsage().arrayBuffers - before;
      expect(grown).toBeLessThan(8 * MiB);
      expect(conn.readyState).toBe(WsConnection.OPEN);
      raw.destroy();
    });
  });

  it('bounds the inbound queue by bytes: reading pauses at maxQueuedBytes, nothing is lost', async () => {
    let release!: () => void;
    journal.gate = new Promise((resolve) => (release = resolve));
    journal.arrived = 0;
    journal.handled.length = 0;
    const client = await TestClient.open(t.url('/inbound'));
    const count = 64;
    const size = 512 * KiB;
    for (let i = 0; i < count; i++) {
      const message = Buffer.alloc(size, i & 0xff);
      message.writeUInt32BE(i, 0);
      client.send(message);
    }
    // Wait until the server stops reading: the count of arrived messages is stable for 300 ms.
    let maxQueued = 0;
    let stableSince = Date.now();
    let last = -1;
    const deadline = Date.now() + 8000;
    while (Date.now() - stableSince < 300 && Date.now() < deadline) {
      const queued = journal.arrived - journal.handled.length;
      maxQueued = Math.max(maxQueued, queued);
      if (journal.arrived !== last) {
        last = journal.arrived;
        stableSince = Date.now();
      }
      await delay(5);
    }
    // One message is in the handler; at most the cap (4 messages) plus one more wait.
    expect(journal.handled).toEqual([0]);
    expect(maxQueued * size).toBeLessThanOrEqual(2 * MiB + size);
    expect(journal.arrived).toBeLessThan(count);
    // The rest waits in the client (TCP flow control), not in the server.
    expect(client.socket.bufferedAmount).toBeGreaterThan(0);

    release();
    for (let i = 0; i < count; i++) expect(await client.next(5000)).toBe(String(i));
    expect(journal.handled).toEqual(Array.from({ length: count }, (_, i) => i));
    expect(journal.arrived).toBe(count);
    await client.close();
  });

  it('fires @OnDrain with a lowWatermark below 16 KiB, every round', async () => {
    const client = await TestClient.open(t.url('/drain'));
    const socket = (client.socket as unknown as { _socket: Socket })._socket;
    await eventually(() => registry.byRoute(DrainRoute).size === 1);
    const conn = [...registry.byRoute(DrainRoute)][0];
    const rounds = 5;
    for (let round = 0; round < rounds; round++) {
      socket.pause();
      // 3 × 4 KiB in one turn: above the 4 KiB watermark, below Node's 16 KiB high-water mark.
      for (let i = 0; i < 3; i++) conn.send(Buffer.alloc(4 * KiB, round));
      expect(conn.bufferedAmount).toBeGreaterThan(4 * KiB);
      await delay(50);
      socket.resume();
      for (let i = 0; i < 3; i++) expect(((await client.next()) as Buffer)[0]).toBe(round);
      await eventually(() => (journal.drains.get(conn.id) ?? 0) === round + 1, 2000).catch(() => {
        throw new Error(
          `@OnDrain fired ${journal.drains.get(conn.id) ?? 0} times in ${round + 1} rounds`,
        );
      });
    }
    await delay(200);
    expect(journal.drains.get(conn.id)).toBe(rounds);
    await client.close();
  });
});

/** Dead-peer route: heartbeat `interval`/`timeout` from the test; a big cap, 'drop'. */
function deadPeerModule(interval: number, timeout: number) {
  @WsRoute('/dead', {
    heartbeat: { interval, timeout },
    maxBufferedAmount: 64 * MiB,
    slowConsumer: 'drop',
  })
  class DeadPeerRoute {
    constructor(private readonly journal: Journal) {}
    @OnMessage() echo(@MessageBody() body: string) {
      return body;
    }
    @OnClose() closed(conn: WsConnection) {
      this.journal.closes.push({ id: conn.id, code: conn.closeCode, reason: conn.closeReason });
    }
  }
  @Module({
    imports: [WsRoutesModule.forRoot({ rateLimit: false })],
    providers: [Journal, DeadPeerRoute],
  })
  class DeadPeerModule {}
  return DeadPeerModule;
}

describe('heartbeat and a dead peer with a stuck backlog', () => {
  it.each([
    [300, 300],
    [300, 200],
  ])(
    'terminates a peer whose backlog does not move (interval %i, timeout %i); a healthy one stays',
    async (interval, timeout) => {
      const t = await startApp(deadPeerModule(interval, timeout));
      try {
        const journal = t.app.get(Journal);
        const registry = t.app.get(WsConnectionRegistry);
        const healthy = await TestClient.open(t.url('/dead'));
        await eventually(() => registry.size === 1);
        const healthyConn = [...registry][0];
        const raw = await openRawWebSocket(t.port, '/dead');
        raw.socket.pause(); // never reads, so never answers a ping
        await eventually(() => registry.size === 2);
        const deadConn = [...registry].find((conn) => conn !== healthyConn)!;

        // Fill the kernel buffers and leave a backlog that cannot move.
        for (let i = 0; i < 16; i++) {
          deadConn.send(Buffer.alloc(MiB, i));
          await new Promise((resolve) => setImmediate(resolve));
        }
        await delay(50);
        expect(deadConn.bufferedAmount).toBeGreaterThan(0);
        expect(deadConn.droppedMessages).toBe(0);
        const pushedAt = Date.now();

        await eventually(() => journal.closes.length > 0, 4000);
        const elapsed = Date.now() - pushedAt;
        expect(journal.closes).toEqual([
          { id: deadConn.id, code: 1006, reason: HEARTBEAT_TIMEOUT_REASON },
        ]);
        expect(elapsed).toBeLessThan(3000);

        // More heartbeat rounds: the healthy client is never judged dead.
        await delay(3 * interval);
        expect(journal.closes).toHaveLength(1);
        healthy.send('alive');
        expect(await healthy.next()).toBe('alive');
        expect(healthyConn.readyState).toBe(WsConnection.OPEN);
        raw.destroy();
        await healthy.close();
      } finally {
        await t.app.close();
      }
    },
  );
});

/** Waits until the server's close frame is among the complete frames received. */
async function waitForCloseFrame(raw: RawSocket, timeout = 2000): Promise<void> {
  await raw.waitFor(
    (received) =>
      parseFrames(received.subarray(raw.frameStart)).frames.some(
        (frame) => frame.opcode === Opcode.Close,
      ),
    timeout,
    'close frame',
  );
}
