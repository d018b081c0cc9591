import 'reflect-metadata';
import { Module } from '@nestjs/common';
import {
  BroadcastService,
  ConnectedSocket,
  OnOpen,
  WsConnection,
  WsConnectionRegistry,
  WsQuery,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import { CapturingLogger, startApp } from '../utils/app.js';
import { settleGarbage } from '../utils/gc.js';
import { eventually, TestClient } from '../utils/ws-client.js';

@WsRoute('/churn', { rateLimit: false })
class ChurnRoute {
  @OnOpen()
  open(@ConnectedSocket() conn: WsConnection, @WsQuery('n') n: string) {
    conn.join('all', `group-${Number(n) % 10}`, `client-${n}`);
    return 'joined';
  }
}

@Module({
  imports: [WsRoutesModule.forRoot({ maxConnectionsPerIp: 1000 })],
  providers: [ChurnRoute],
})
class SoakModule {}

/** A small version of `npm run bench -- soak`: churn, then nothing may remain. */
describe('churn soak', () => {
  it('returns the registry, rooms and heap to where they started after rounds of connect, join, receive, disconnect', async () => {
    const logger = new CapturingLogger();
    const t = await startApp(SoakModule, { logger });
    try {
      const registry = t.app.get(WsConnectionRegistry);
      const broadcast = t.app.get(BroadcastService);
      const heapAt = async () => {
        await settleGarbage();
        return process.memoryUsage().heapUsed;
      };
      // One warm-up round so that lazily created things (JIT, pools) are not counted as growth.
      const rounds = 6;
      const perRound = 200;
      let start = 0;
      for (let round = 0; round < rounds; round++) {
        if (round === 1) start = await heapAt();
        const clients = await Promise.all(
          Array.from({ length: perRound }, (_, i) => TestClient.open(t.url(`/churn?n=${i}`))),
        );
        await Promise.all(clients.map((client) => client.next()));
        expect(registry.size).toBe(perRound);
        expect(broadcast.to('all').send({ round })).toBe(perRound);
        expect(broadcast.to('group-3').send('g3')).toBe(perRound / 10);
        expect(
          broadcast
            .toRoute(ChurnRoute)
            .except(...[...registry.inRoom('group-0')])
            .send('rest'),
        ).toBe(perRound - perRound / 10);
        for (const [i, client] of clients.entries()) {
          expect(await client.nextJson()).toEqual({ round });
          if (i % 10 === 3) expect(await client.next()).toBe('g3');
          if (i % 10 !== 0) expect(await client.next()).toBe('rest');
        }
        await Promise.all(
          clients.map((client, i) =>
            i % 2 ? client.close() : (client.socket.terminate(), client.closed),
          ),
        );
        await eventually(() => registry.size === 0, 5000);
        expect(registry.roomCount).toBe(0);
      }
      const end = await heapAt();
      expect(end).toBeLessThan(start * 1.1);
      expect(logger.text('error')).toBe('');
    } finally {
      await t.app.close();
    }
  });
});
