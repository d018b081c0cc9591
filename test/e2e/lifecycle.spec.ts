import 'reflect-metadata';
import { Injectable, Module } from '@nestjs/common';
import { connect, type Socket } from 'node:net';
import {
  CloseCode,
  ConnectedSocket,
  HEARTBEAT_TIMEOUT_REASON,
  MessageBody,
  OnClose,
  OnError,
  OnMessage,
  OnOpen,
  OnPing,
  OnPong,
  WsConnection,
  WsConnectionRegistry,
  WsException,
  WsRequest,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import type { IncomingMessage } from 'node:http';
import { CapturingLogger, startApp, type TestApp } from '../utils/app.js';
import { closeWsTestClients, expectRefused, wsTestClient } from '../../lib/testing/index.js';
import { delay, eventually } from '../utils/ws-client.js';

/** What the routes saw, for the test to read. */
@Injectable()
class Journal {
  readonly closes: { route: string; code?: number; reason?: string; arg?: unknown }[] = [];
  readonly errors: string[] = [];
  readonly pongs: number[] = [];
  readonly pings: string[] = [];
}

@WsRoute('/slow-open')
class SlowOpenRoute {
  @OnOpen()
  async open(@ConnectedSocket() conn: WsConnection) {
    await delay(100);
    conn.data.ready = true;
  }
  @OnMessage()
  message(@ConnectedSocket() conn: WsConnection, @MessageBody() body: string) {
    return `${conn.data.ready ? 'ready' : 'early'}:${body}`;
  }
}

/** Reports what the connection still knows of its upgrade request. */
class HandshakeInfo {
  @OnOpen()
  open(@ConnectedSocket() conn: WsConnection, @WsRequest() request: IncomingMessage) {
    return `open:${request.url}:${conn.request === request}:${request.headers['sec-websocket-key'] ? 'key' : 'no key'}`;
  }
  @OnMessage()
  message(@ConnectedSocket() conn: WsConnection) {
    return {
      request: conn.request ? conn.request.url : 'released',
      client: conn.headers['x-client'],
      key: conn.headers['sec-websocket-key'] ?? 'dropped',
      query: conn.query,
      params: conn.params,
    };
  }
}

@WsRoute('/info/:room')
class ReleasedRequestRoute extends HandshakeInfo {}

@WsRoute('/kept/:room', { keepUpgradeRequest: true })
class KeptRequestRoute extends HandshakeInfo {}

@WsRoute('/broken-open')
class BrokenOpenRoute {
  @OnOpen()
  open(@ConnectedSocket() conn: WsConnection) {
    if (conn.query.kind === 'ws') throw new WsException('go away');
    throw new Error('database is down');
  }
  @OnMessage() message() {
    return 'should not happen';
  }
}

@WsRoute('/closing')
class ClosingRoute {
  constructor(private readonly journal: Journal) {}
  @OnMessage('kick')
  kick(@ConnectedSocket() conn: WsConnection) {
    conn.close(4000, 'kick');
  }
  @OnClose()
  closed(conn: WsConnection, arg: unknown) {
    // no parameter decorators: (conn, { code, reason })
    this.journal.closes.push({
      route: 'closing',
      code: conn.closeCode,
      reason: conn.closeReason,
      arg,
    });
  }
  @OnError()
  failed(conn: WsConnection, error: Error) {
    this.journal.errors.push(error.message);
  }
}

@WsRoute('/small', { maxPayload: 16 })
class SmallRoute {
  constructor(private readonly journal: Journal) {}
  @OnMessage() echo(@MessageBody() body: string) {
    return body;
  }
  @OnError() failed(conn: WsConnection, error: Error) {
    this.journal.errors.push(`${conn.route}: ${error.message}`);
  }
  @OnClose() closed(conn: WsConnection) {
    this.journal.closes.push({ route: 'small', code: conn.closeCode });
  }
}

@WsRoute('/beat', { heartbeat: { interval: 150, timeout: 100 } })
class BeatRoute {
  constructor(private readonly journal: Journal) {}
  @OnMessage() echo(@MessageBody() body: string) {
    return body;
  }
  @OnPong() pong() {
    this.journal.pongs.push(Date.now());
  }
  @OnPing() ping(conn: WsConnection, payload: Buffer) {
    this.journal.pings.push(payload.toString());
  }
  @OnClose() closed(conn: WsConnection) {
    this.journal.closes.push({ route: 'beat', code: conn.closeCode, reason: conn.closeReason });
  }
}

@WsRoute('/no-beat', { heartbeat: false })
class NoBeatRoute {
  @OnMessage() echo(@MessageBody() body: string) {
    return body;
  }
}

/** Holds every message until the test opens the gate. */
const gate = { open: undefined as (() => void) | undefined };

@WsRoute('/gated', { heartbeat: false, rateLimit: false })
class GatedRoute {
  private opened: Promise<void> | undefined;
  @OnMessage()
  async message(@ConnectedSocket() conn: WsConnection, @MessageBody() body: string) {
    this.opened ??= new Promise((resolve) => (gate.open = resolve));
    await this.opened;
    return body;
  }
}

@WsRoute('/push-only')
class PushOnlyRoute {
  @OnOpen() open() {
    return 'hello';
  }
}

@Module({
  imports: [WsRoutesModule.forRoot({ shutdownTimeout: 500 })],
  providers: [
    Journal,
    SlowOpenRoute,
    BrokenOpenRoute,
    ClosingRoute,
    SmallRoute,
    BeatRoute,
    NoBeatRoute,
    PushOnlyRoute,
    GatedRoute,
    ReleasedRequestRoute,
    KeptRequestRoute,
  ],
})
class AppModule {}

describe('connection lifecycle', () => {
  let t: TestApp;
  let journal: Journal;
  let registry: WsConnectionRegistry;
  const logger = new CapturingLogger();

  beforeAll(async () => {
    t = await startApp(AppModule, { logger });
    journal = t.app.get(Journal);
    registry = t.app.get(WsConnectionRegistry);
  });
  afterEach(() => closeWsTestClients());
  afterAll(() => t.app.close());

  it('releases the upgrade request after @OnOpen unless the route keeps it; headers, query and params stay', async () => {
    const options = { headers: { 'X-Client': 'probe' } };
    const released = await wsTestClient(t.app, '/info/lobby?q=1&q=2', options);
    await released.expectMessage('open:/info/lobby?q=1&q=2:true:key');
    released.send('?');
    await released.expectMessage({
      request: 'released',
      client: 'probe',
      key: 'dropped',
      query: { q: ['1', '2'] },
      params: { room: 'lobby' },
    });
    const kept = await wsTestClient(t.app, '/kept/hall', options);
    await kept.expectMessage('open:/kept/hall:true:key');
    kept.send('?');
    await kept.expectMessage({
      request: '/kept/hall',
      client: 'probe',
      key: 'dropped',
      query: {},
      params: { room: 'hall' },
    });
    await Promise.all([released.close(), kept.close()]);
  });

  it('handles messages that arrive during an async @OnOpen after it, in order', async () => {
    const client = await wsTestClient(t.app, '/slow-open');
    for (let i = 0; i < 5; i++) client.send(`m${i}`);
    for (let i = 0; i < 5; i++) await client.expectMessage(`ready:m${i}`);
    await client.close();
  });

  it('pauses reading a connection with a long backlog and loses nothing, in order', async () => {
    const client = await wsTestClient(t.app, '/gated');
    const total = 3000;
    for (let i = 0; i < total; i++) client.send(String(i));
    await eventually(
      () => [...registry.byRoute(GatedRoute)].some((conn) => conn.socket.isPaused),
      5000,
    );
    gate.open!();
    for (let i = 0; i < total; i++) await client.expectMessage(String(i));
    expect([...registry.byRoute(GatedRoute)][0].socket.isPaused).toBe(false);
    await client.close();
  });

  it('closes with 1011 when @OnOpen throws, logs the error, and runs no message handler', async () => {
    const client = await wsTestClient(t.app, '/broken-open');
    client.send('hi');
    await client.expectClose(CloseCode.InternalError, 'Internal server error');
    expect(client.pending).toEqual([]);
    expect(logger.text('error')).toContain('database is down');
  });

  it('closes with 1008 and the message when @OnOpen throws a WsException', async () => {
    const client = await wsTestClient(t.app, '/broken-open?kind=ws');
    await client.expectClose(CloseCode.PolicyViolation, 'go away');
  });

  it('carries close codes and reasons from client to @OnClose', async () => {
    const client = await wsTestClient(t.app, '/closing');
    await eventually(() => registry.byRoute(ClosingRoute).size === 1);
    await client.close(4001, 'bye');
    await eventually(() => journal.closes.some((entry) => entry.code === 4001));
    expect(journal.closes.find((entry) => entry.code === 4001)).toEqual({
      route: 'closing',
      code: 4001,
      reason: 'bye',
      arg: { code: 4001, reason: 'bye' },
    });
    expect(registry.byRoute(ClosingRoute).size).toBe(0);
  });

  it('carries close codes and reasons from conn.close() to the client', async () => {
    const client = await wsTestClient(t.app, '/closing');
    client.emit('kick');
    await client.expectClose(4000, 'kick');
    await eventually(() => journal.closes.some((entry) => entry.code === 4000));
  });

  it('closes an oversized message with 1009, tells @OnError, and keeps serving others', async () => {
    const other = await wsTestClient(t.app, '/small');
    const client = await wsTestClient(t.app, '/small');
    client.send('x'.repeat(17));
    await client.expectClose(CloseCode.MessageTooBig);
    await eventually(() =>
      journal.errors.some((line) => line.startsWith('/small: Max payload size exceeded')),
    );
    // @OnClose sees the code the client got, not the 1006 of a socket that stopped reading.
    await eventually(() => journal.closes.some((entry) => entry.route === 'small'));
    expect(journal.closes.find((entry) => entry.route === 'small')?.code).toBe(1009);
    other.send('0123456789abcdef');
    await other.expectMessage('0123456789abcdef');
    await other.close();
  });

  it('closes with 1003 when a route takes no messages', async () => {
    const client = await wsTestClient(t.app, '/push-only');
    await client.expectMessage('hello');
    client.send('anything');
    await client.expectClose(CloseCode.UnsupportedData);
  });

  it('terminates a peer that stops answering pings and runs @OnClose; healthy peers stay', async () => {
    const healthy = await wsTestClient(t.app, '/beat');
    const silent = await wsTestClient(t.app, '/beat', { autoPong: false });
    const unbeaten = await wsTestClient(t.app, '/no-beat', { autoPong: false });
    // A ping every 150 ms, 100 ms to answer: generous, for a loaded machine.
    await silent.expectClose(CloseCode.Abnormal, undefined, { timeout: 10_000 });
    await eventually(() => journal.closes.some((entry) => entry.route === 'beat'));
    expect(journal.closes.find((entry) => entry.route === 'beat')).toMatchObject({
      code: 1006,
      reason: HEARTBEAT_TIMEOUT_REASON,
    });
    await delay(400);
    expect(journal.pongs.length).toBeGreaterThanOrEqual(2);
    healthy.send('alive');
    await healthy.expectMessage('alive');
    healthy.socket.ping('are you there');
    await eventually(() => journal.pings.includes('are you there'));
    unbeaten.send('alive');
    await unbeaten.expectMessage('alive');
    await Promise.all([healthy.close(), unbeaten.close()]);
  });

  it('leaves no connection or room behind after many connects and disconnects', async () => {
    for (let round = 0; round < 10; round++) {
      const clients = await Promise.all(
        Array.from({ length: 20 }, () => wsTestClient(t.app, '/no-beat')),
      );
      for (const conn of registry.byRoute(NoBeatRoute)) conn.join('room-a', `room-${round}`);
      await Promise.all(clients.map((client, i) => (i % 2 ? client.close() : client.terminate())));
    }
    await eventually(() => registry.size === 0);
    expect(registry.roomCount).toBe(0);
    expect(registry.byRoute(NoBeatRoute).size).toBe(0);
  });
});

describe('shutdown', () => {
  it('refuses new upgrades with 503, closes clients with 1001, runs @OnClose, and finishes within shutdownTimeout', async () => {
    const t = await startApp(AppModule);
    const journal = t.app.get(Journal);
    const polite = await wsTestClient(t.app, '/closing');
    const stubborn = await rawUpgrade(t.port, '/closing');
    // A connection that never sends a request (browsers open spare ones) must not hold the
    // HTTP server's close until the 10 s handshake timeout.
    const idle = connect(t.port, '127.0.0.1');
    idle.on('error', () => undefined);
    await new Promise((resolve) => idle.once('connect', resolve));
    // ...but one whose request is on its way when the shutdown begins (a load balancer's health
    // check) gets its answer, not a reset.
    const late = connect(t.port, '127.0.0.1');
    let lateAnswer = '';
    let lateError: Error | undefined;
    late.on('data', (chunk: Buffer) => (lateAnswer += chunk.toString('latin1')));
    late.on('error', (error) => (lateError = error));
    await new Promise((resolve) => late.once('connect', resolve));
    await eventually(() => t.app.get(WsConnectionRegistry).size === 2);

    const started = Date.now();
    const closing = t.app.close();
    await delay(100);
    late.write(`GET /nothing-here HTTP/1.1\r\nHost: 127.0.0.1:${t.port}\r\n\r\n`);
    await polite.expectClose(CloseCode.GoingAway, 'Server shutting down');
    await expectRefused(t.app, '/closing', 503);
    await closing;
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(450);
    expect(elapsed).toBeLessThan(3000);
    const codes = journal.closes
      .filter((entry) => entry.route === 'closing')
      .map((entry) => entry.code);
    expect(codes.sort()).toEqual([1001, 1006]);
    expect(lateError).toBeUndefined();
    expect(lateAnswer).toMatch(/^HTTP\/1\.1 404 /);
    stubborn.destroy();
    idle.destroy();
    late.destroy();
  });
});

/** A client that completes the handshake and then never reads or answers anything. */
function rawUpgrade(port: number, path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => {
      socket.write(
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
      );
    });
    socket.once('data', (chunk) => {
      if (chunk.toString().startsWith('HTTP/1.1 101')) {
        socket.pause();
        resolve(socket);
      } else reject(new Error(chunk.toString()));
    });
    socket.on('error', () => undefined);
  });
}
