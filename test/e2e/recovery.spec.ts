import 'reflect-metadata';
import { Module, type Type } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import {
  BroadcastService,
  ConnectedSocket,
  OnOpen,
  WsConnection,
  WsRoute,
  WsRoutesModule,
  type BroadcastTransport,
} from '../../lib/index.js';
import { startApp, type TestApp } from '../utils/app.js';
import { delay, TestClient } from '../utils/ws-client.js';

/*
 * Recovery on one instance: ids in the frames of a recovery route, the position of a new
 * connection, the replay of what a reconnecting connection missed (after @OnOpen, matching
 * its rooms then), and the recovered:false signal without any partial replay.
 */
let openDelay = 0;

@WsRoute('/board', { rateLimit: false, recovery: { window: 60_000, maxMessages: 200 } })
class BoardRoute {
  @OnOpen() async open(@ConnectedSocket() conn: WsConnection) {
    const rooms = conn.query.rooms;
    if (typeof rooms === 'string' && rooms) conn.join(...rooms.split(','));
    if (openDelay) await delay(openDelay);
  }
}

@WsRoute('/plain', { rateLimit: false })
class PlainRoute {}

@Module({
  imports: [WsRoutesModule.forRoot()],
  providers: [BoardRoute, PlainRoute],
})
class RecoveryModule {}

interface Frame {
  event: string;
  data: any;
  id: string;
}

describe('recovery on one instance', () => {
  let app: TestApp;
  let broadcast: BroadcastService;
  const clients: TestClient[] = [];

  beforeEach(async () => {
    openDelay = 0;
    app = await startApp(RecoveryModule);
    broadcast = app.app.get(BroadcastService);
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.socket.terminate();
    await app.app.close();
  });

  async function open(query = ''): Promise<TestClient> {
    const c = await TestClient.open(app.url(`/board${query}`));
    clients.push(c);
    return c;
  }
  const next = (c: TestClient): Promise<Frame> => c.nextJson<Frame>();

  it('tells a new connection its position first, and every broadcast frame carries its id', async () => {
    broadcast.toRoute(BoardRoute).send({ event: 'tick', data: 0 });
    const c = await open();
    const position = await next(c);
    expect(position).toMatchObject({ event: 'position', data: null });
    const [epoch, seq] = position.id.split('.');
    expect(Number(seq)).toBe(1);
    broadcast.send({ event: 'tick', data: 1 });
    broadcast.toRoute(BoardRoute).send('raw text');
    expect(await next(c)).toEqual({ event: 'tick', data: 1, id: `${epoch}.2` });
    expect(await next(c)).toEqual({ event: 'message', data: 'raw text', id: `${epoch}.3` });
  });

  it('replays exactly what was missed, in order, once, then live traffic, with broadcasts racing the replay', async () => {
    const first = await open();
    await next(first); // position
    let last = '';
    for (let n = 1; n <= 50; n++) broadcast.send({ event: 'n', data: n });
    for (let n = 1; n <= 50; n++) {
      const frame = await next(first);
      expect(frame.data).toBe(n);
      last = frame.id;
    }
    await first.close();
    for (let n = 51; n <= 100; n++) broadcast.send({ event: 'n', data: n });
    openDelay = 100;
    const again = await open(`?lastEventId=${encodeURIComponent(last)}`);
    // While @OnOpen runs (100 ms), broadcasts go on: they must come after the replay, once.
    for (let n = 101; n <= 110; n++) {
      broadcast.send({ event: 'n', data: n });
      await delay(5);
    }
    const recovery = await next(again);
    expect(recovery).toMatchObject({ event: 'recovery', data: { recovered: true } });
    const seen: number[] = [];
    for (let i = 0; i < 60; i++) seen.push((await next(again)).data);
    broadcast.send({ event: 'n', data: 111 });
    seen.push((await next(again)).data);
    expect(seen).toEqual(Array.from({ length: 61 }, (_, i) => 51 + i));
    expect(recovery.data.replayed).toBe(60);
    expect(await again.silentFor(100)).toBe(true);
  });

  it('replays only the rooms the connection is in after its @OnOpen', async () => {
    const c = await open('?rooms=a,b');
    const { id } = await next(c);
    await c.close();
    broadcast.to('a').send({ event: 'a', data: 1 });
    broadcast.to('b').send({ event: 'b', data: 2 });
    broadcast.to('a').send({ event: 'a', data: 3 });
    broadcast.toRoute(PlainRoute).send({ event: 'plain', data: 4 });
    const back = await open(`?rooms=a&lastEventId=${id}`);
    expect((await next(back)).data).toEqual({ recovered: true, replayed: 2 });
    expect((await next(back)).data).toBe(1);
    expect((await next(back)).data).toBe(3);
    expect(await back.silentFor(100)).toBe(true);
  });

  it('says recovered:false with a reason and replays nothing when it cannot replay everything', async () => {
    const c = await open();
    const { id } = await next(c);
    const [epoch, seq] = id.split('.');
    await c.close();
    for (let n = 1; n <= 250; n++) broadcast.send({ event: 'n', data: n }); // ring of 200
    const cases: [string, string][] = [
      [id, 'too_many'],
      [`${epoch}.999999`, 'unknown_position'],
      ['garbage', 'unknown_position'],
      [`otherEpoch.${seq}`, 'history_lost'],
    ];
    for (const [index, [presented, reason]] of cases.entries()) {
      const back = await open(`?lastEventId=${encodeURIComponent(presented)}`);
      const answer = await next(back);
      expect(answer).toEqual({
        event: 'recovery',
        data: { recovered: false, reason },
        id: `${epoch}.${250 + index}`, // each case below sends one live broadcast
      });
      expect(await back.silentFor(50)).toBe(true);
      broadcast.send({ event: 'live', data: reason });
      expect((await next(back)).data).toBe(reason);
    }
  });

  it('refuses a binary broadcast that would reach a recovery route, at the call site', async () => {
    const plain = await TestClient.open(app.url('/plain'));
    clients.push(plain);
    expect(() => broadcast.send(Buffer.from([1, 2, 3]))).toThrow(/binary broadcast/);
    expect(await plain.silentFor(50)).toBe(true);
    broadcast.toRoute(PlainRoute).send(Buffer.from([1, 2, 3]));
    expect([...((await plain.next()) as Buffer)]).toEqual([1, 2, 3]);
  });

  it('does not start with a transport that reaches other instances but offers no shared history', async () => {
    const shared: BroadcastTransport = { bind() {}, publish() {}, subscribe() {} };
    @Module({
      imports: [WsRoutesModule.forRoot({ broadcastTransport: shared })],
      providers: [BoardRoute],
    })
    class SharedModule {}
    const other = await NestFactory.create(SharedModule as Type, { logger: false });
    await expect(other.init()).rejects.toThrow(/recovery needs a history every instance shares/);
    await other.close().catch(() => undefined);
  });
});
