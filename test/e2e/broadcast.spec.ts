import 'reflect-metadata';
import { Module } from '@nestjs/common';
import {
  BroadcastService,
  ConnectedSocket,
  MessageBody,
  OnMessage,
  OnOpen,
  WsConnection,
  WsConnectionRegistry,
  WsParam,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import { startApp, type TestApp } from '../utils/app.js';
import { eventually, TestClient } from '../utils/ws-client.js';

@WsRoute('/rooms/:room')
class ChatRoute {
  constructor(private readonly broadcast: BroadcastService) {}

  @OnOpen()
  open(@ConnectedSocket() conn: WsConnection, @WsParam('room') room: string) {
    conn.join(room);
    return { event: 'joined', data: { id: conn.id, room } };
  }

  @OnMessage('chat')
  chat(@MessageBody() text: string, @ConnectedSocket() conn: WsConnection) {
    this.broadcast.to(conn.params.room).except(conn).send({ event: 'chat', data: text });
  }
}

@WsRoute('/demand')
class DemandRoute {
  @OnOpen()
  open(@ConnectedSocket() conn: WsConnection) {
    return { event: 'hello', data: conn.id };
  }
}

/** A route that never reads `conn.id`. */
@WsRoute('/quiet')
class QuietRoute {
  @OnMessage()
  message() {
    return 'ok';
  }
}

@Module({ imports: [WsRoutesModule.forRoot()], providers: [ChatRoute, DemandRoute, QuietRoute] })
class AppModule {}

async function join(t: TestApp, path: string): Promise<{ client: TestClient; id: string }> {
  const client = await TestClient.open(t.url(path));
  const hello = await client.nextJson();
  return { client, id: typeof hello.data === 'string' ? hello.data : hello.data.id };
}

describe('BroadcastService', () => {
  let t: TestApp;
  let broadcast: BroadcastService;
  let registry: WsConnectionRegistry;
  beforeAll(async () => {
    t = await startApp(AppModule);
    broadcast = t.app.get(BroadcastService);
    registry = t.app.get(WsConnectionRegistry);
  });
  afterAll(() => t.app.close());

  it('sends a chat line to the room except the sender', async () => {
    const alice = await join(t, '/rooms/lobby');
    const bob = await join(t, '/rooms/lobby');
    const carol = await join(t, '/rooms/kitchen');
    alice.client.emit('chat', 'hi all');
    expect(await bob.client.nextJson()).toEqual({ event: 'chat', data: 'hi all' });
    expect(await alice.client.silentFor(100)).toBe(true);
    expect(await carol.client.silentFor(0)).toBe(true);
    await Promise.all([alice, bob, carol].map(({ client }) => client.close()));
  });

  it('reaches everyone, a route, rooms, connections, and honours except', async () => {
    const d1 = await join(t, '/demand');
    const d2 = await join(t, '/demand');
    const r1 = await join(t, '/rooms/a');
    const r2 = await join(t, '/rooms/b');
    const all = [d1, d2, r1, r2];

    expect(broadcast.send('to everyone')).toBe(4);
    for (const { client } of all) expect(await client.next()).toBe('to everyone');

    expect(broadcast.toRoute(DemandRoute).send({ event: 'demand', data: [1, 2] })).toBe(2);
    for (const { client } of [d1, d2])
      expect(await client.nextJson()).toEqual({ event: 'demand', data: [1, 2] });

    expect(broadcast.toRoute('/rooms/:room').except(r1.id).send('route by pattern')).toBe(1);
    expect(await r2.client.next()).toBe('route by pattern');

    // A connection named by two targets receives the message once.
    expect(
      broadcast
        .to('a', 'b')
        .toConnection(r1.id, d1.id)
        .send(Buffer.from([9, 8])),
    ).toBe(3);
    for (const { client } of [r1, r2, d1])
      expect([...((await client.next()) as Buffer)]).toEqual([9, 8]);

    expect(broadcast.except(d1.id, d2.id).send('text', { binary: false })).toBe(2);
    for (const { client } of [r1, r2]) expect(await client.next()).toBe('text');

    expect(broadcast.to('nobody-here').send('lost')).toBe(0);
    for (const { client } of all) expect(await client.silentFor(50)).toBe(true);
    await Promise.all(all.map(({ client }) => client.close()));
  });

  it('exposes connections through the registry', async () => {
    const a = await join(t, '/rooms/x');
    const b = await join(t, '/demand');
    expect(registry.size).toBe(2);
    expect(registry.get(a.id)?.params).toEqual({ room: 'x' });
    expect([...registry.inRoom('x')].map((conn) => conn.id)).toEqual([a.id]);
    expect([...registry.byRoute(DemandRoute)].map((conn) => conn.id)).toEqual([b.id]);
    expect([...registry].length).toBe(2);
    registry.get(a.id)!.leave('x');
    expect(registry.inRoom('x').size).toBe(0);
    await Promise.all([a.client.close(), b.client.close()]);
    await eventually(() => registry.size === 0);
    expect(registry.get(a.id)).toBeUndefined();
  });

  it('finds a connection by an id read at any time while it is open, and never after', async () => {
    const first = await TestClient.open(t.url('/quiet'));
    const second = await TestClient.open(t.url('/quiet'));
    await eventually(() => registry.byRoute(QuietRoute).size === 2);
    const [one, two] = [...registry.byRoute(QuietRoute)];
    expect([...registry].length).toBe(2);
    // The id is made when first read, and from then on it addresses the connection.
    expect(registry.get(one.id)).toBe(one);
    expect(broadcast.toConnection(one.id).send('only you')).toBe(1);
    expect(broadcast.toRoute(QuietRoute).except(one.id).send('not you')).toBe(1);
    const received = await Promise.all([first.next(), second.next()]);
    expect(received.sort()).toEqual(['not you', 'only you']);
    expect(one.id).not.toBe(two.id);

    await first.close();
    await second.close();
    await eventually(() => registry.size === 0);
    // An id read after the close addresses nothing.
    expect(registry.get(one.id)).toBeUndefined();
    expect(registry.get(two.id)).toBeUndefined();
    expect(broadcast.toConnection(two.id).send('gone')).toBe(0);
  });
});
