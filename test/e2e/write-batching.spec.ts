import 'reflect-metadata';
import { Injectable, Module } from '@nestjs/common';
import WebSocket from 'ws';
import {
  BroadcastService,
  ConnectedSocket,
  MessageBody,
  OnMessage,
  WsConnection,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import { startApp, type TestApp } from '../utils/app.js';
import { TestClient } from '../utils/ws-client.js';

/**
 * Everything a connection is sent within one event-loop turn is batched and written at the end
 * of the turn: these tests hold the batches to the order of the sends, across replies and
 * broadcasts, large messages, per-message deflate and closing.
 */
@Injectable()
class Interleaving {
  constructor(private readonly broadcast: BroadcastService) {}

  /** 100 messages alternating between `conn.send` and a broadcast to this connection. */
  @OnMessage('mix')
  mix(@ConnectedSocket() conn: WsConnection) {
    for (let i = 0; i < 100; i++) {
      if (i % 2) conn.send(`r${i}`);
      else this.broadcast.toConnection(conn).send(`b${i}`);
    }
    return 'done';
  }

  /** Text, then 20 binary messages of 16 KiB (more than one flush copies), then text. */
  @OnMessage('large')
  large(@ConnectedSocket() conn: WsConnection) {
    conn.send('start');
    for (let i = 0; i < 20; i++) conn.send(Buffer.alloc(16 * 1024, i));
    return 'end';
  }

  /** 50 messages, then a close: every one arrives before the close frame. */
  @OnMessage('bye')
  bye(@ConnectedSocket() conn: WsConnection) {
    for (let i = 0; i < 50; i++) this.broadcast.toConnection(conn).send(`m${i}`);
    conn.close(4000, 'bye');
  }

  /**
   * Route broadcasts around messages to this connection only, the first of them before this
   * connection has anything of its own: the route's log is then written at the end of the
   * turn before the connection's own batch, which it must merge into once, in send order.
   */
  @OnMessage('around')
  around(@ConnectedSocket() conn: WsConnection) {
    for (let i = 0; i < 30; i++) {
      if (i % 3 === 1) this.broadcast.toConnection(conn).send(`c${i}`);
      else this.broadcast.toRoute(this.constructor as never).send(`r${i}`);
    }
  }

  @OnMessage('burst')
  burst(@MessageBody() count: number) {
    for (let i = 0; i < count; i++) this.broadcast.toRoute('/batch').send({ i });
  }
}

@WsRoute('/batch')
class BatchRoute extends Interleaving {}

@WsRoute('/batch-deflate', { perMessageDeflate: true })
class DeflateRoute extends Interleaving {}

@Module({
  imports: [WsRoutesModule.forRoot({ rateLimit: false })],
  providers: [BatchRoute, DeflateRoute],
})
class AppModule {}

const expectedMix = [...Array.from({ length: 100 }, (_, i) => (i % 2 ? `r${i}` : `b${i}`)), 'done'];

describe('write batching', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp(AppModule);
  });
  afterAll(() => t.app.close());

  it.each(['/batch', '/batch-deflate'])(
    'keeps replies and broadcasts of one turn in the order they were sent (%s)',
    async (path) => {
      const client = await TestClient.open(t.url(path));
      if (path.endsWith('deflate'))
        expect(client.socket.extensions).toContain('permessage-deflate');
      client.emit('mix');
      const received = [];
      for (let i = 0; i < expectedMix.length; i++) received.push(await client.next());
      expect(received).toEqual(expectedMix);
      await client.close();
    },
  );

  it.each(['/batch', '/batch-deflate'])(
    'merges a route broadcast log with messages to one connection, once each and in order (%s)',
    async (path) => {
      const sender = await TestClient.open(t.url(path));
      const other = await TestClient.open(t.url(path));
      sender.emit('around');
      const sent = Array.from({ length: 30 }, (_, i) => (i % 3 === 1 ? `c${i}` : `r${i}`));
      const received = [];
      for (let i = 0; i < sent.length; i++) received.push(await sender.next());
      expect(received).toEqual(sent);
      const routeOnly = sent.filter((m) => m.startsWith('r'));
      const seen = [];
      for (let i = 0; i < routeOnly.length; i++) seen.push(await other.next());
      expect(seen).toEqual(routeOnly);
      // Nothing more: a duplicate of the log would follow here.
      sender.emit('mix');
      expect(await sender.next()).toBe('b0');
      await Promise.all([sender.close(), other.close()]);
    },
  );

  it('delivers large messages of one turn whole and in order', async () => {
    const client = await TestClient.open(t.url('/batch'));
    client.emit('large');
    expect(await client.next()).toBe('start');
    for (let i = 0; i < 20; i++) {
      const data = (await client.next()) as Buffer;
      expect(data.length).toBe(16 * 1024);
      expect(data.every((byte) => byte === i)).toBe(true);
    }
    expect(await client.next()).toBe('end');
    await client.close();
  });

  it('sends what was queued before a close ahead of the close frame', async () => {
    const client = await TestClient.open(t.url('/batch'));
    const closed = new Promise<[number, string]>((resolve) =>
      client.socket.once('close', (code, reason) => resolve([code, reason.toString()])),
    );
    client.emit('bye');
    for (let i = 0; i < 50; i++) expect(await client.next()).toBe(`m${i}`);
    expect(await closed).toEqual([4000, 'bye']);
  });

  it('delivers a burst of broadcasts to every connection, complete and in order', async () => {
    const clients = await Promise.all(
      Array.from({ length: 40 }, () => TestClient.open(t.url('/batch'))),
    );
    const count = 300;
    clients[0].emit('burst', count);
    await Promise.all(
      clients.map(async (client) => {
        for (let i = 0; i < count; i++) expect(await client.nextJson()).toEqual({ i });
      }),
    );
    await Promise.all(clients.map((client) => client.close()));
  });

  it('a raw ws client sees one frame per message', async () => {
    // Batching writes many frames in one TCP write; each must still be its own message.
    const socket = new WebSocket(t.url('/batch'));
    const messages: string[] = [];
    await new Promise((resolve) => socket.once('open', resolve));
    const done = new Promise<void>((resolve) =>
      socket.on('message', (data) => {
        messages.push(data.toString());
        if (messages.length === expectedMix.length) resolve();
      }),
    );
    socket.send(JSON.stringify({ event: 'mix' }));
    await done;
    expect(messages).toEqual(expectedMix);
    socket.close();
  });
});
