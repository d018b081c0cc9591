import 'reflect-metadata';
import { Module, type CanActivate, type ExecutionContext, type Type } from '@nestjs/common';
import {
  BroadcastService,
  ConnectedSocket,
  instanceOfConnection,
  MessageBody,
  OnClose,
  OnMessage,
  OnOpen,
  WsConnection,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesModule,
  type BroadcastPacket,
  type BroadcastTransport,
  type HandshakeRequest,
  type MembershipKind,
  type RemoteCount,
  type TransportBinding,
  type WsRoutesModuleOptions,
} from '../../lib/index.js';
import { CapturingLogger, startApp, type TestApp } from '../utils/app.js';
import { delay, eventually, TestClient } from '../utils/ws-client.js';

/*
 * The targets of a broadcast beyond routes and rooms, over real sockets: a user's connections
 * (toUser, registry.byUser, the userId rule), the remote actions of an operator (join, leave,
 * disconnect), count(), the ids of connections, and the membership hooks a transport such as
 * Redis relies on to subscribe to exactly what its instance has members of.
 *
 * Two applications in this process stand for two instances, joined by a bus that behaves like
 * Redis pub/sub: asynchronous, and an instance hears a packet only if it subscribed (through
 * the membership hooks) to one of the packet's targets, or if the packet is for everyone or
 * names one of its connections. So a test that passes on this bus also shows that the hooks
 * are enough for such a transport.
 */

/** How long a client must stay silent to count as "nothing came" (ms). */
const QUIET = 100;

/** What the routes saw: each `@OnClose`, and the user id read while `@OnOpen` ran. */
const journal = {
  closes: [] as { id: string; code: number | undefined; reason: string | undefined }[],
  duringOpen: new Map<string, string | undefined>(),
};

/** A handshake guard: `?user=<JSON>` becomes `request.user` (hence `conn.user`). */
const userFromQuery: CanActivate = {
  canActivate(context: ExecutionContext): boolean {
    const request = context.switchToHttp().getRequest<HandshakeRequest>();
    const raw = request.query.user;
    if (typeof raw === 'string') request.user = JSON.parse(raw);
    return true;
  },
};

/**
 * A tab of the application. `?onOpen=<JSON>` assigns that user in `@OnOpen` (by `conn.user`,
 * or by `conn.data.user` with `&via=data`), which then waits a little before it answers.
 */
@WsRoute('/tabs')
class TabsRoute {
  constructor(private readonly registry: WsConnectionRegistry) {}

  @OnOpen()
  async open(@ConnectedSocket() conn: WsConnection) {
    const assign = conn.query.onOpen;
    if (typeof assign === 'string') {
      const user: unknown = JSON.parse(assign);
      if (conn.query.via === 'data') conn.data.user = user;
      else conn.user = user;
      journal.duringOpen.set(conn.id, this.registry.userOf(conn));
      await delay(20);
    }
    return { event: 'hello', data: conn.id };
  }

  @OnMessage('become')
  become(@ConnectedSocket() conn: WsConnection, @MessageBody() user: unknown) {
    conn.user = user;
    return { event: 'user', data: this.registry.userOf(conn) ?? null };
  }

  @OnMessage('join')
  join(@ConnectedSocket() conn: WsConnection, @MessageBody() room: string) {
    conn.join(room);
    return { event: 'joined', data: room };
  }

  @OnMessage('leave')
  leave(@ConnectedSocket() conn: WsConnection, @MessageBody() room: string) {
    conn.leave(room);
    return { event: 'left', data: room };
  }

  @OnMessage('ping')
  ping() {
    return { event: 'pong', data: 'pong' };
  }

  @OnClose()
  closed(@ConnectedSocket() conn: WsConnection) {
    journal.closes.push({ id: conn.id, code: conn.closeCode, reason: conn.closeReason });
  }
}

/** A route only the route-membership test opens, so its first and last connection are known. */
@WsRoute('/lobby')
class LobbyRoute {
  @OnOpen()
  open(@ConnectedSocket() conn: WsConnection) {
    return { event: 'hello', data: conn.id };
  }
}

function appModule(options: WsRoutesModuleOptions = {}): Type {
  @Module({
    imports: [
      WsRoutesModule.forRoot({
        guards: [userFromQuery],
        rateLimit: false,
        heartbeat: false,
        ...options,
      }),
    ],
    providers: [TabsRoute, LobbyRoute],
  })
  class TargetsModule {}
  return TargetsModule;
}

type Hook = readonly ['subscribe' | 'unsubscribe', MembershipKind, string];
const KINDS: MembershipKind[] = ['route', 'room', 'user'];

/** Instances on one Redis-like bus (see the comment at the top). */
class Bus {
  readonly nodes: BusNode[] = [];
}

/** One instance's transport on the {@link Bus}; it records every membership hook call. */
class BusNode implements BroadcastTransport {
  readonly hooks: Hook[] = [];
  /** How many hook calls had been made when `close()` was called (`undefined`: open). */
  hooksAtClose: number | undefined = undefined;
  private readonly subscribed = new Set<string>();
  private binding: TransportBinding | undefined;

  constructor(private readonly bus: Bus) {}

  get instanceId(): string {
    return this.binding!.instanceId;
  }

  bind(binding: TransportBinding): void {
    this.binding = binding;
    for (const kind of KINDS)
      for (const name of binding.members(kind)) this.subscribed.add(`${kind}:${name}`);
    this.bus.nodes.push(this);
  }

  publish(packet: BroadcastPacket): void {
    // Across the "network": a copy, later, to every node that listens (the echo included).
    const copy: BroadcastPacket = { ...packet, payload: Buffer.from(packet.payload) };
    setImmediate(() => {
      for (const node of this.bus.nodes) if (node.hears(copy)) node.binding!.deliver(copy);
    });
  }

  subscribe(kind: MembershipKind, name: string): void {
    this.hooks.push(['subscribe', kind, name]);
    this.subscribed.add(`${kind}:${name}`);
  }

  unsubscribe(kind: MembershipKind, name: string): void {
    this.hooks.push(['unsubscribe', kind, name]);
    this.subscribed.delete(`${kind}:${name}`);
  }

  count(packet: BroadcastPacket): Promise<RemoteCount> {
    return new Promise((resolve) =>
      setImmediate(() => {
        const others = this.bus.nodes.filter((node) => node !== this);
        resolve({
          count: others.reduce((sum, node) => sum + node.binding!.count(packet), 0),
          answered: others.map((node) => node.instanceId),
          missing: [],
        });
      }),
    );
  }

  close(): void {
    this.hooksAtClose = this.hooks.length;
    const index = this.bus.nodes.indexOf(this);
    if (index >= 0) this.bus.nodes.splice(index, 1);
  }

  /** The hook calls about one route, room or user, in order. */
  hooksOf(kind: MembershipKind, name: string): string[] {
    return this.hooks.filter((hook) => hook[1] === kind && hook[2] === name).map((hook) => hook[0]);
  }

  private hears(packet: BroadcastPacket): boolean {
    const { routes, rooms, users, connections } = packet;
    if (!routes && !rooms && !users && !connections) return true;
    const on = (kind: MembershipKind, names: string[] | undefined): boolean =>
      names?.some((name) => this.subscribed.has(`${kind}:${name}`)) ?? false;
    return (
      on('route', routes) ||
      on('room', rooms) ||
      on('user', users) ||
      (connections?.some((id) => instanceOfConnection(id) === this.instanceId) ?? false)
    );
  }
}

/** An open tab: its client, its connection id, and the server's side of it. */
interface Tab {
  client: TestClient;
  id: string;
  conn: WsConnection;
}

/** Every client a test opened, closed after it. */
const clients: TestClient[] = [];

async function open(t: TestApp, path: string): Promise<Tab> {
  const client = await TestClient.open(t.url(path));
  clients.push(client);
  const hello = await client.nextJson<{ event: string; data: string }>();
  expect(hello.event).toBe('hello');
  const conn = t.app.get(WsConnectionRegistry).get(hello.data);
  if (!conn) throw new Error(`connection ${hello.data} is not in the registry`);
  return { client, id: hello.data, conn };
}

/** Opens a tab whose handshake guard makes `user` its `conn.user` (none if `undefined`). */
function tab(t: TestApp, user?: unknown, query = ''): Promise<Tab> {
  const params = new URLSearchParams(query);
  if (user !== undefined) params.set('user', JSON.stringify(user));
  return open(t, `/tabs?${params}`);
}

/** Sends an event and returns the reply's `data`. */
async function ask(tab: Tab, event: string, data?: unknown): Promise<unknown> {
  tab.client.emit(event, data);
  return (await tab.client.nextJson<{ data?: unknown }>()).data;
}

/** Waits until every tab in `reached` has `count` queued messages, then a quiet window. */
async function receivedAfterQuiet(reached: Tab[], count = 1): Promise<void> {
  await eventually(() => reached.every((one) => one.client.received.length >= count));
  await delay(QUIET);
}

function drain(tab: Tab): string[] {
  return tab.client.received.splice(0).map(String);
}

async function closeClients(...apps: TestApp[]): Promise<void> {
  await Promise.all(clients.splice(0).map((client) => client.close()));
  for (const t of apps) await eventually(() => t.app.get(WsConnectionRegistry).size === 0);
}

describe('broadcast targets', () => {
  describe('users, on one instance', () => {
    let t: TestApp;
    let broadcast: BroadcastService;
    let registry: WsConnectionRegistry;
    beforeAll(async () => {
      t = await startApp(appModule());
      broadcast = t.app.get(BroadcastService);
      registry = t.app.get(WsConnectionRegistry);
    });
    afterEach(() => closeClients(t));
    afterAll(() => t.app.close());

    it('toUser() reaches every tab of that user and nobody else; numeric and string ids are one', async () => {
      const first = await tab(t, { id: 7 });
      const second = await tab(t, { id: '7' });
      const other = await tab(t, { id: 8 });
      expect(registry.byUser(7).size).toBe(2);
      expect(registry.byUser('7')).toBe(registry.byUser(7));
      expect(new Set(registry.byUser(7))).toEqual(new Set([first.conn, second.conn]));
      expect([...registry.byUser(8)]).toEqual([other.conn]);

      expect(broadcast.toUser(7).send('for seven')).toBe(2);
      await receivedAfterQuiet([first, second]);
      expect(drain(first)).toEqual(['for seven']);
      expect(drain(second)).toEqual(['for seven']);
      expect(drain(other)).toEqual([]);

      expect(broadcast.toUser('7').send('again')).toBe(2);
      await receivedAfterQuiet([first, second]);
      expect(drain(first)).toEqual(['again']);
      expect(drain(second)).toEqual(['again']);
      expect(drain(other)).toEqual([]);

      // Two users, and a tab named twice (as a user and as a connection): once each.
      expect(broadcast.toUser(7, 8).toConnection(first.id).send('all')).toBe(3);
      await receivedAfterQuiet([first, second, other]);
      for (const one of [first, second, other]) expect(drain(one)).toEqual(['all']);

      expect(broadcast.toUser(9).send('nobody')).toBe(0);
      expect(broadcast.toUser(7).except(second.conn).send('but one')).toBe(1);
      await receivedAfterQuiet([first]);
      expect(drain(first)).toEqual(['but one']);
      expect(drain(second)).toEqual([]);
      expect(drain(other)).toEqual([]);
    });

    it('reads the user id by the default rule: a string or number, else id, else sub', async () => {
      const cases: [unknown, string | undefined][] = [
        ['alice', 'alice'],
        [42, '42'],
        [{ sub: 'abc' }, 'abc'],
        [{ id: 5, sub: 'zzz' }, '5'],
        [{ id: 'u-1' }, 'u-1'],
        [{ name: 'no id' }, undefined],
        [{ id: { nested: 1 }, sub: 'fallback' }, 'fallback'],
        ['', undefined],
        [undefined, undefined],
      ];
      const tabs = await Promise.all(cases.map(([user]) => tab(t, user)));
      cases.forEach(([, expected], i) => expect(registry.userOf(tabs[i].conn)).toBe(expected));
      expect(registry.byUser('abc').size).toBe(1);
      expect(registry.byUser('zzz').size).toBe(0); // id wins over sub
      expect(registry.byUser(5).size).toBe(1);
      expect(broadcast.toUser('abc').send('sub')).toBe(1);
      expect(await tabs[2].client.next()).toBe('sub');
    });

    it('moves a connection to another user when a message handler assigns conn.user', async () => {
      const moving = await tab(t, { id: 7 });
      const staying = await tab(t, { id: 7 });
      expect(registry.byUser(7).size).toBe(2);

      expect(await ask(moving, 'become', { sub: 'new-user' })).toBe('new-user');
      expect([...registry.byUser(7)]).toEqual([staying.conn]);
      expect([...registry.byUser('new-user')]).toEqual([moving.conn]);
      expect(broadcast.toUser(7).send('old')).toBe(1);
      expect(broadcast.toUser('new-user').send('new')).toBe(1);
      await receivedAfterQuiet([moving, staying]);
      expect(drain(moving)).toEqual(['new']);
      expect(drain(staying)).toEqual(['old']);

      // Assigning nothing makes it nobody's.
      expect(await ask(moving, 'become', null)).toBeNull();
      expect(registry.byUser('new-user').size).toBe(0);
      expect(registry.userOf(moving.conn)).toBeUndefined();
    });

    it.each([
      ['conn.user', ''],
      ['conn.data.user', 'via=data'],
    ])('counts a user assigned in @OnOpen by %s once @OnOpen has finished', async (_how, via) => {
      // The guard said 7; @OnOpen says 9 (a lookup, say): 9 it is.
      const opened = await tab(t, { id: 7 }, `onOpen=${JSON.stringify({ id: 9 })}&${via}`);
      expect(registry.userOf(opened.conn)).toBe('9');
      expect([...registry.byUser(9)]).toEqual([opened.conn]);
      expect(registry.byUser(7).size).toBe(0);
      expect(broadcast.toUser(9).send('nine')).toBe(1);
      expect(await opened.client.next()).toBe('nine');
      // The setter counts at once, while @OnOpen still runs.
      if (!via) expect(journal.duringOpen.get(opened.id)).toBe('9');
    });

    it('forgets a user once its connections have closed', async () => {
      const first = await tab(t, { id: 7 });
      const second = await tab(t, { id: 7 });
      expect(registry.byUser(7).size).toBe(2);
      await first.client.close();
      await eventually(() => registry.byUser(7).size === 1);
      expect([...registry.byUser(7)]).toEqual([second.conn]);
      await second.client.close();
      await eventually(() => registry.size === 0);
      expect(registry.byUser(7).size).toBe(0);
      expect(registry.userOf(second.conn)).toBeUndefined();
      expect(broadcast.toUser(7).send('gone')).toBe(0);
      expect(await broadcast.toUser(7).count()).toEqual({ count: 0, instances: 1, missing: [] });
    });
  });

  describe('the userId option', () => {
    it('overrides the default rule; when it throws the connection has no user, it is logged once, and serving goes on', async () => {
      const logger = new CapturingLogger();
      const t = await startApp(
        appModule({
          userId: (conn) => {
            if (conn.query.boom !== undefined) throw new Error('no user here');
            return (conn.user as { email?: string } | undefined)?.email;
          },
        }),
        { logger },
      );
      try {
        const registry = t.app.get(WsConnectionRegistry);
        const broadcast = t.app.get(BroadcastService);
        const byEmail = await tab(t, { id: 7, email: 'a@example.com' });
        expect(registry.userOf(byEmail.conn)).toBe('a@example.com');
        expect(registry.byUser(7).size).toBe(0);
        expect(broadcast.toUser(7).send('by id')).toBe(0);
        expect(broadcast.toUser('a@example.com').send('by email')).toBe(1);
        expect(await byEmail.client.next()).toBe('by email');

        const bad = await tab(t, { id: 7, email: 'b@example.com' }, 'boom=1');
        const worse = await tab(t, { id: 7, email: 'b@example.com' }, 'boom=1');
        // Assigning conn.user asks the rule again: it throws again, still no user.
        expect(await ask(bad, 'become', { email: 'c@example.com' })).toBeNull();
        for (const one of [bad, worse]) expect(registry.userOf(one.conn)).toBeUndefined();
        expect(registry.byUser('b@example.com').size).toBe(0);
        expect(registry.byUser('c@example.com').size).toBe(0);
        expect(registry.size).toBe(3);

        // Keeps serving: the connections answer, broadcasts reach them by other targets.
        expect(await ask(bad, 'ping')).toBe('pong');
        expect(broadcast.toConnection(worse.id).send('still here')).toBe(1);
        expect(await worse.client.next()).toBe('still here');
        expect(broadcast.toUser('a@example.com').send('fine')).toBe(1);
        expect(await byEmail.client.next()).toBe('fine');

        const lines = logger.lines.filter((line) => line.text.includes('userId option threw'));
        expect(lines).toHaveLength(1);
        expect(lines[0].level).toBe('error');
        expect(lines[0].text).toContain('no user here');
        await closeClients(t);
      } finally {
        await t.app.close();
      }
    });
  });

  describe('remote actions and count(), on one instance', () => {
    let t: TestApp;
    let broadcast: BroadcastService;
    let registry: WsConnectionRegistry;
    beforeAll(async () => {
      t = await startApp(appModule());
      broadcast = t.app.get(BroadcastService);
      registry = t.app.get(WsConnectionRegistry);
    });
    afterEach(() => closeClients(t));
    afterAll(() => t.app.close());

    it('toUser().join() and .leave() change the rooms of every tab of the user', async () => {
      const first = await tab(t, { id: 7 });
      const second = await tab(t, { id: 7 });
      const other = await tab(t, { id: 8 });
      expect(broadcast.toUser(7).join('vip', 'gold')).toBe(2);
      expect(new Set(registry.inRoom('vip'))).toEqual(new Set([first.conn, second.conn]));
      expect([...first.conn.rooms]).toEqual(['vip', 'gold']);

      expect(broadcast.to('vip').send('vip news')).toBe(2);
      await receivedAfterQuiet([first, second]);
      expect(drain(first)).toEqual(['vip news']);
      expect(drain(second)).toEqual(['vip news']);
      expect(drain(other)).toEqual([]);

      expect(await broadcast.to('vip').count()).toEqual({ count: 2, instances: 1, missing: [] });
      expect(await broadcast.to('vip').except(first.conn).count()).toEqual({
        count: 1,
        instances: 1,
        missing: [],
      });
      expect(await broadcast.to('vip').except(first.id, second.id).count()).toEqual({
        count: 0,
        instances: 1,
        missing: [],
      });
      // A connection in two targets counts once.
      expect((await broadcast.to('vip', 'gold').toUser(8).count()).count).toBe(3);

      expect(broadcast.toUser(7).leave('vip')).toBe(2);
      expect(registry.inRoom('vip').size).toBe(0);
      expect([...first.conn.rooms]).toEqual(['gold']);
      expect(broadcast.to('vip').send('nobody')).toBe(0);
      expect(await broadcast.to('vip').count()).toEqual({ count: 0, instances: 1, missing: [] });
      await delay(QUIET);
      for (const one of [first, second, other]) expect(drain(one)).toEqual([]);
    });

    it('toUser().disconnect(code, reason) closes every tab of the user, runs @OnClose for each, leaves the others open', async () => {
      const first = await tab(t, { id: 7 });
      const second = await tab(t, { id: 7 });
      const other = await tab(t, { id: 8 });
      expect(broadcast.toUser(7).disconnect(4001, 'Logged out')).toBe(2);
      expect(await first.client.closed).toEqual({ code: 4001, reason: 'Logged out' });
      expect(await second.client.closed).toEqual({ code: 4001, reason: 'Logged out' });
      await eventually(() =>
        [first.id, second.id].every((id) => journal.closes.some((entry) => entry.id === id)),
      );
      for (const id of [first.id, second.id])
        expect(journal.closes.filter((entry) => entry.id === id)).toEqual([
          { id, code: 4001, reason: 'Logged out' },
        ]);
      expect(registry.byUser(7).size).toBe(0);

      expect(other.client.socket.readyState).toBe(WsConnection.OPEN);
      expect(journal.closes.some((entry) => entry.id === other.id)).toBe(false);
      expect(await ask(other, 'ping')).toBe('pong'); // it still answers
      expect([...registry]).toEqual([other.conn]);
    });

    it('disconnect() closes with 1000 by default and refuses codes a server may not send, at the call site', async () => {
      const first = await tab(t, { id: 8 });
      const bystander = await tab(t, { id: 9 });
      for (const code of [1005, 1006, 1015, 999, 1004, 5000, 2999, 4001.5, NaN])
        expect(() => broadcast.toUser(8).disconnect(code)).toThrow(RangeError);
      expect(() => broadcast.toUser(8).disconnect(1005, 'no status')).toThrow(
        /1005 is not a close code/,
      );
      await delay(QUIET);
      expect(first.client.socket.readyState).toBe(WsConnection.OPEN);

      expect(broadcast.toUser(8).disconnect()).toBe(1);
      expect(await first.client.closed).toEqual({ code: 1000, reason: '' });
      await eventually(() => journal.closes.some((entry) => entry.id === first.id));
      expect(journal.closes.find((entry) => entry.id === first.id)?.code).toBe(1000);
      expect(bystander.client.socket.readyState).toBe(WsConnection.OPEN);

      // A reason longer than a close frame holds is cut at a character boundary.
      const long = 'é'.repeat(100);
      expect(broadcast.toUser(9).disconnect(4002, long)).toBe(1);
      const { code, reason } = await bystander.client.closed;
      expect(code).toBe(4002);
      expect(Buffer.byteLength(reason)).toBeLessThanOrEqual(123);
      expect(reason.length).toBeGreaterThan(50);
      expect(long.startsWith(reason)).toBe(true);
    });
  });

  describe('connection ids', () => {
    it('are <instanceId>.<random>: 29 URL-safe characters, different for every connection and instance', async () => {
      const one = await startApp(appModule());
      const two = await startApp(appModule());
      try {
        const instanceOne = one.app.get(BroadcastService).instanceId;
        const instanceTwo = two.app.get(BroadcastService).instanceId;
        expect(instanceOne).toMatch(/^[A-Za-z0-9_-]{12}$/);
        expect(instanceTwo).not.toBe(instanceOne);
        expect(one.app.get(WsConnectionRegistry).instanceId).toBe(instanceOne);

        const tabs = await Promise.all([tab(one), tab(one), tab(one), tab(two)]);
        const ids = tabs.map((one) => one.id);
        expect(new Set(ids).size).toBe(ids.length);
        ids.forEach((id, i) => {
          const instance = i < 3 ? instanceOne : instanceTwo;
          expect(id.startsWith(`${instance}.`)).toBe(true);
          expect(id).toHaveLength(29);
          expect(id).toMatch(/^[A-Za-z0-9_-]{12}\.[A-Za-z0-9_-]{16}$/);
          expect(encodeURIComponent(id)).toBe(id);
          expect(instanceOfConnection(id)).toBe(instance);
          expect(tabs[i].conn.id).toBe(id); // stable
        });
        await closeClients(one, two);
      } finally {
        await one.app.close();
        await two.app.close();
      }
    });
  });

  describe('two instances on a Redis-like bus', () => {
    let bus: Bus;
    let nodeA: BusNode;
    let nodeB: BusNode;
    let a: TestApp;
    let b: TestApp;
    beforeAll(async () => {
      bus = new Bus();
      nodeA = new BusNode(bus);
      nodeB = new BusNode(bus);
      a = await startApp(appModule({ broadcastTransport: nodeA }));
      b = await startApp(appModule({ broadcastTransport: nodeB }));
    });
    afterEach(() => closeClients(a, b));
    afterAll(async () => {
      await a.app.close();
      await b.app.close();
    });

    it('reaches a user on every instance, joins and leaves rooms there, and counts add up', async () => {
      const broadcastA = a.app.get(BroadcastService);
      const broadcastB = b.app.get(BroadcastService);
      const registryB = b.app.get(WsConnectionRegistry);
      const hereA = await tab(a, { id: 7 });
      const thereB = await tab(b, { id: 7 });
      const otherB = await tab(b, { id: 8 });

      expect(broadcastA.toUser(7).send('everywhere')).toBe(1);
      await receivedAfterQuiet([hereA, thereB]);
      expect(drain(hereA)).toEqual(['everywhere']);
      expect(drain(thereB)).toEqual(['everywhere']);
      expect(drain(otherB)).toEqual([]);

      // `except` names a connection of the other instance: that instance leaves it out.
      expect(broadcastA.toUser(7).except(thereB.id).send('not there')).toBe(1);
      await receivedAfterQuiet([hereA]);
      expect(drain(hereA)).toEqual(['not there']);
      expect(drain(thereB)).toEqual([]);

      expect(broadcastA.toUser(7).join('vip')).toBe(1);
      await eventually(() => registryB.inRoom('vip').size === 1);
      expect([...registryB.inRoom('vip')]).toEqual([thereB.conn]);
      // B joined on A's word, and so subscribed to the room: B's broadcast there reaches A.
      expect(broadcastB.to('vip').send('vip only')).toBe(1);
      await receivedAfterQuiet([hereA, thereB]);
      expect(drain(hereA)).toEqual(['vip only']);
      expect(drain(thereB)).toEqual(['vip only']);
      expect(drain(otherB)).toEqual([]);

      otherB.conn.join('vip');
      expect(await broadcastA.to('vip').count()).toEqual({ count: 3, instances: 2, missing: [] });
      expect(await broadcastB.to('vip').count()).toEqual({ count: 3, instances: 2, missing: [] });
      expect(await broadcastA.to('vip').except(thereB.id).count()).toEqual({
        count: 2,
        instances: 2,
        missing: [],
      });
      expect((await broadcastA.toUser(7).count()).count).toBe(2);
      expect((await broadcastA.toUser(8).count()).count).toBe(1);
      expect((await broadcastA.toRoute(TabsRoute).count()).count).toBe(3);
      expect((await broadcastA.toConnection(otherB.id).count()).count).toBe(1);

      expect(broadcastA.toUser(7).leave('vip')).toBe(1);
      await eventually(() => registryB.inRoom('vip').size === 1);
      expect([...registryB.inRoom('vip')]).toEqual([otherB.conn]);
      expect((await broadcastA.to('vip').count()).count).toBe(1);
    });

    it('toUser().disconnect() closes the tabs of the user on every instance', async () => {
      const broadcastA = a.app.get(BroadcastService);
      const hereA = await tab(a, { id: 7 });
      const thereB = await tab(b, { id: 7 });
      const otherB = await tab(b, { id: 8 });
      expect(broadcastA.toUser(7).disconnect(4001, 'Logged out')).toBe(1);
      expect(await hereA.client.closed).toEqual({ code: 4001, reason: 'Logged out' });
      expect(await thereB.client.closed).toEqual({ code: 4001, reason: 'Logged out' });
      await eventually(() => journal.closes.some((entry) => entry.id === thereB.id));
      expect(journal.closes.find((entry) => entry.id === thereB.id)).toEqual({
        id: thereB.id,
        code: 4001,
        reason: 'Logged out',
      });
      await delay(QUIET);
      expect(otherB.client.socket.readyState).toBe(WsConnection.OPEN);
      expect(b.app.get(WsConnectionRegistry).size).toBe(1);
    });

    it('calls subscribe and unsubscribe for a room on its first and last member only', async () => {
      const registryB = b.app.get(WsConnectionRegistry);
      const first = await tab(a);
      const second = await tab(a);
      const remote = await tab(b);
      expect(nodeA.hooksOf('room', 'a')).toEqual([]);

      expect(await ask(first, 'join', 'a')).toBe('a');
      expect(nodeA.hooksOf('room', 'a')).toEqual(['subscribe']);
      expect(await ask(first, 'join', 'a')).toBe('a'); // already a member
      a.app.get(BroadcastService).toConnection(second.id).join('a');
      expect(nodeA.hooksOf('room', 'a')).toEqual(['subscribe']);

      // The other instance has its own first member, by a remote action.
      a.app.get(BroadcastService).toConnection(remote.id).join('a');
      await eventually(() => registryB.inRoom('a').size === 1);
      expect(nodeB.hooksOf('room', 'a')).toEqual(['subscribe']);

      expect(await ask(first, 'leave', 'a')).toBe('a');
      expect(nodeA.hooksOf('room', 'a')).toEqual(['subscribe']);
      await second.client.close(); // closing leaves every room
      await eventually(() => a.app.get(WsConnectionRegistry).inRoom('a').size === 0);
      expect(nodeA.hooksOf('room', 'a')).toEqual(['subscribe', 'unsubscribe']);
      expect(nodeB.hooksOf('room', 'a')).toEqual(['subscribe']);

      remote.conn.leave('a');
      expect(nodeB.hooksOf('room', 'a')).toEqual(['subscribe', 'unsubscribe']);
      expect(await ask(first, 'join', 'a')).toBe('a'); // first member again
      expect(nodeA.hooksOf('room', 'a')).toEqual(['subscribe', 'unsubscribe', 'subscribe']);
    });

    it('calls subscribe and unsubscribe for a route on its first and last connection only', async () => {
      const registryA = a.app.get(WsConnectionRegistry);
      expect(nodeA.hooksOf('route', '/lobby')).toEqual([]);
      const first = await open(a, '/lobby');
      expect(nodeA.hooksOf('route', '/lobby')).toEqual(['subscribe']);
      const second = await open(a, '/lobby');
      expect(nodeA.hooksOf('route', '/lobby')).toEqual(['subscribe']);

      // Subscribed: a route broadcast from B reaches A's connections.
      expect(b.app.get(BroadcastService).toRoute(LobbyRoute).send('lobby')).toBe(0);
      await receivedAfterQuiet([first, second]);
      expect(drain(first)).toEqual(['lobby']);
      expect(drain(second)).toEqual(['lobby']);

      await first.client.close();
      await eventually(() => registryA.byRoute(LobbyRoute).size === 1);
      expect(nodeA.hooksOf('route', '/lobby')).toEqual(['subscribe']);
      await second.client.close();
      await eventually(() => registryA.byRoute(LobbyRoute).size === 0);
      expect(nodeA.hooksOf('route', '/lobby')).toEqual(['subscribe', 'unsubscribe']);
      expect(nodeB.hooksOf('route', '/lobby')).toEqual([]);
    });

    it('calls subscribe and unsubscribe for a user on its first and last connection only', async () => {
      const registryA = a.app.get(WsConnectionRegistry);
      const first = await tab(a, { id: 70 });
      expect(nodeA.hooksOf('user', '70')).toEqual(['subscribe']);
      const second = await tab(a, { id: '70' });
      expect(nodeA.hooksOf('user', '70')).toEqual(['subscribe']);

      // The second tab becomes another user: 71 is new, 70 still has a tab.
      expect(await ask(second, 'become', { id: 71 })).toBe('71');
      expect(nodeA.hooksOf('user', '71')).toEqual(['subscribe']);
      expect(nodeA.hooksOf('user', '70')).toEqual(['subscribe']);

      // Subscribed: a user broadcast from B reaches A's tab.
      expect(b.app.get(BroadcastService).toUser(71).send('seventy-one')).toBe(0);
      await receivedAfterQuiet([second]);
      expect(drain(second)).toEqual(['seventy-one']);
      expect(drain(first)).toEqual([]);

      await first.client.close();
      await eventually(() => registryA.byUser(70).size === 0);
      expect(nodeA.hooksOf('user', '70')).toEqual(['subscribe', 'unsubscribe']);
      expect(await ask(second, 'become', null)).toBeNull(); // nobody's: 71 loses its last tab
      expect(nodeA.hooksOf('user', '71')).toEqual(['subscribe', 'unsubscribe']);
      await second.client.close();
      await eventually(() => registryA.size === 0);
      expect(nodeA.hooksOf('user', '71')).toEqual(['subscribe', 'unsubscribe']);
      expect(nodeB.hooksOf('user', '70')).toEqual([]);
    });
  });

  describe('membership at shutdown', () => {
    it('unsubscribes from everything it subscribed to as app.close() closes the connections, before the transport closes', async () => {
      const node = new BusNode(new Bus());
      const t = await startApp(appModule({ broadcastTransport: node }));
      let closed = false;
      try {
        const first = await tab(t, { id: 7 });
        await tab(t, { sub: 'abc' });
        await open(t, '/lobby');
        expect(await ask(first, 'join', 'vip')).toBe('vip');
        const subscribed = node.hooks.map(([, kind, name]) => `${kind}:${name}`);
        expect(new Set(subscribed)).toEqual(
          new Set(['route:/tabs', 'route:/lobby', 'user:7', 'user:abc', 'room:vip']),
        );
        expect(node.hooks.every(([op]) => op === 'subscribe')).toBe(true);

        await t.app.close();
        closed = true;
        clients.splice(0);
        const unsubscribed = node.hooks
          .filter(([op]) => op === 'unsubscribe')
          .map(([, kind, name]) => `${kind}:${name}`);
        expect(unsubscribed.sort()).toEqual([...subscribed].sort());
        expect(node.hooksAtClose).toBe(node.hooks.length);
      } finally {
        if (!closed) await t.app.close();
      }
    });
  });

  describe('a transport whose hooks or count fail', () => {
    it('logs a failing membership hook without throwing it into join(), and counts only here when count() rejects', async () => {
      const logger = new CapturingLogger();
      const transport: BroadcastTransport = {
        bind() {},
        publish() {},
        subscribe(kind) {
          if (kind === 'room') throw new Error('subscribe failed');
        },
        unsubscribe() {},
        count: () => Promise.reject(new Error('redis is down')),
      };
      const t = await startApp(appModule({ broadcastTransport: transport }), { logger });
      try {
        const broadcast = t.app.get(BroadcastService);
        const member = await tab(t, { id: 7 });
        expect(await ask(member, 'join', 'vip')).toBe('vip');
        expect(broadcast.toUser(7).join('gold')).toBe(1);
        expect([...member.conn.rooms]).toEqual(['vip', 'gold']);
        expect(broadcast.to('vip').send('still delivered')).toBe(1);
        expect(await member.client.next()).toBe('still delivered');
        expect(logger.text('error')).toContain('subscribe failed');

        expect(await broadcast.to('vip').count()).toEqual({
          count: 1,
          instances: 1,
          missing: ['*'],
        });
        expect(logger.text('warn')).toContain('redis is down');
        await closeClients(t);
      } finally {
        await t.app.close();
      }
    });
  });
});
