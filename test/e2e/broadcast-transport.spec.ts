import 'reflect-metadata';
import { Module, type Type } from '@nestjs/common';
import {
  BroadcastService,
  ConnectedSocket,
  OnOpen,
  WsConnection,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesModule,
  type BroadcastPacket,
  type BroadcastTransport,
  type TransportBinding,
} from '../../lib/index.js';
import { CapturingLogger, startApp, type TestApp } from '../utils/app.js';
import { delay, eventually, TestClient } from '../utils/ws-client.js';

/*
 * The transport contract: BroadcastService delivers to its own instance's connections at once
 * and hands the packet to the transport for the other instances only; a packet carries its
 * origin and an instance ignores its own echo; a failing publish never reaches send().
 *
 * Two applications in this process stand for two instances, joined by a bus that, like Redis
 * pub/sub, delivers every packet to every subscriber, the publisher included, asynchronously.
 */
class Bus {
  readonly members: TransportBinding[] = [];
  readonly carried: BroadcastPacket[] = [];

  transport(): BroadcastTransport {
    return {
      bind: (binding) => void this.members.push(binding),
      publish: (packet) => {
        this.carried.push(packet);
        // Across the "network": a copy, later, to everyone (the echo included).
        const copy = { ...packet, payload: Buffer.from(packet.payload) };
        setImmediate(() => {
          for (const member of this.members) member.deliver(copy);
        });
      },
    };
  }
}

@WsRoute('/feed', { rateLimit: false })
class FeedRoute {
  @OnOpen() open(@ConnectedSocket() conn: WsConnection) {
    conn.join('news');
  }
}

function instance(transport: BroadcastTransport): Type {
  @Module({
    imports: [WsRoutesModule.forRoot({ broadcastTransport: transport })],
    providers: [FeedRoute],
  })
  class InstanceModule {}
  return InstanceModule;
}

/** Collects the text messages a client receives. */
function texts(client: TestClient): string[] {
  const seen: string[] = [];
  client.socket.on('message', (data: Buffer) => seen.push(data.toString()));
  return seen;
}

async function feedClient(t: TestApp): Promise<TestClient> {
  const client = await TestClient.open(t.url('/feed'));
  await eventually(() => t.app.get(WsConnectionRegistry).inRoom('news').size > 0);
  return client;
}

describe('broadcast transport', () => {
  describe('two instances on one bus', () => {
    let bus: Bus;
    let a: TestApp;
    let b: TestApp;
    beforeEach(async () => {
      bus = new Bus();
      a = await startApp(instance(bus.transport()));
      b = await startApp(instance(bus.transport()));
    });
    afterEach(async () => {
      await a.app.close();
      await b.app.close();
    });

    it('delivers here at once and there through the transport, once each, with the origin on the packet', async () => {
      const onA = await feedClient(a);
      const onB = await feedClient(b);
      const seenA = texts(onA);
      const seenB = texts(onB);
      const broadcastA = a.app.get(BroadcastService);

      // Written to this instance's socket before the transport carried anything anywhere.
      expect(broadcastA.to('news').send('one')).toBe(1);
      expect(bus.carried).toHaveLength(1);
      expect(bus.carried[0].origin).toBe(broadcastA.instanceId);
      expect(broadcastA.instanceId).not.toBe(b.app.get(BroadcastService).instanceId);

      await eventually(() => seenB.length === 1);
      await delay(50); // the echo has come back to A by now
      expect(seenA).toEqual(['one']);
      expect(seenB).toEqual(['one']);
      await Promise.all([onA.close(), onB.close()]);
    });

    it('keeps the order of one instance broadcasts on the other instance', async () => {
      const onB = await feedClient(b);
      const seenB = texts(onB);
      const broadcastA = a.app.get(BroadcastService);
      for (let i = 0; i < 200; i++) broadcastA.to('news').send(String(i));
      await eventually(() => seenB.length === 200);
      expect(seenB).toEqual(Array.from({ length: 200 }, (_, i) => String(i)));
      await onB.close();
    });
  });

  describe('a transport whose publish fails', () => {
    const failing: [string, BroadcastTransport][] = [
      ['rejects', { bind() {}, publish: () => Promise.reject(new Error('redis is down')) }],
      [
        'throws',
        {
          bind() {},
          publish() {
            throw new Error('redis is down');
          },
        },
      ],
    ];
    it.each(failing)(
      'publish %s: send() still delivers here, returns the local count, and the failures are counted and logged in summary',
      async (_how, transport) => {
        const logger = new CapturingLogger();
        const t = await startApp(instance(transport), { logger });
        try {
          const client = await feedClient(t);
          const seen = texts(client);
          const broadcast = t.app.get(BroadcastService);
          const counts = [1, 2, 3].map((i) => broadcast.to('news').send(`m${i}`));
          expect(counts).toEqual([1, 1, 1]);
          await eventually(() => seen.length === 3);
          expect(seen).toEqual(['m1', 'm2', 'm3']);
          await eventually(() => broadcast.publishFailures === 3);
          const lines = logger.lines.filter((line) => line.text.includes('publish(es) failed'));
          expect(lines).toHaveLength(1); // one line per interval, not one per broadcast
          expect(lines[0].level).toBe('error');
          expect(lines[0].text).toContain('redis is down');
          await client.close();
        } finally {
          await t.app.close();
        }
      },
    );
  });
});
