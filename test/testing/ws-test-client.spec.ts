import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { ORIGIN_REFUSED_MESSAGE, WsConnectionRegistry } from '../../lib/index.js';
import {
  closeWsTestClients,
  expectRefused,
  openWsTestClients,
  partial,
  wsTestClient,
  WsExpectationError,
  type WsTestClient,
} from '../../lib/testing/index.js';
import { acceptKey } from '../utils/raw-socket.js';
import { eventually } from '../utils/ws-client.js';
import { KitAppModule, NoRoutesModule, PlainModule } from './kit-app.js';

/** The rejection of `promise`, which must reject. */
async function failureOf(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected a rejection, the promise resolved');
}

/** Apps a test created; closed after it even when it failed half-way. */
const apps: INestApplication[] = [];

/** An app for one test: closed after it. */
async function createApp(platform: 'express' | 'fastify' = 'express', options = {}) {
  const app = await sharedApp(platform, options);
  apps.push(app);
  return app;
}

/** An app for a whole describe block, which closes it in afterAll. */
function sharedApp(platform: 'express' | 'fastify' = 'express', options = {}) {
  const module = KitAppModule.with(options);
  return platform === 'fastify'
    ? NestFactory.create(module, new FastifyAdapter(), { logger: false })
    : NestFactory.create(module, { logger: false });
}

afterEach(async () => {
  await closeWsTestClients();
  // A second close() of an app the test closed itself changes nothing.
  await Promise.all(apps.splice(0).map((app) => app.close().catch(() => undefined)));
});

describe('connecting to an application', () => {
  it.each(['express', 'fastify'] as const)(
    'makes a %s app that is not listening listen on 127.0.0.1 and a free port, once for concurrent clients; app.close() closes it',
    async (platform) => {
      const app = await createApp(platform);
      const server = app.getHttpServer() as Server;
      expect(server.listening).toBe(false);
      const clients = await Promise.all(
        Array.from({ length: 5 }, () => wsTestClient(app, '/echo')),
      );
      const address = server.address() as AddressInfo;
      expect(address.address).toBe('127.0.0.1');
      expect(address.port).toBeGreaterThan(0);
      for (const [i, client] of clients.entries()) {
        expect(client.url).toBe(`ws://127.0.0.1:${address.port}/echo`);
        client.send(`hello ${i}`);
      }
      for (const [i, client] of clients.entries()) await client.expectMessage(`hello ${i}`);
      await app.close();
      expect(server.listening).toBe(false);
      // The app's shutdown closed every client with 1001.
      for (const client of clients) await client.expectClose(1001, 'Server shutting down');
      expect(openWsTestClients()).toBe(0);
    },
  );

  it('uses the port of an app that is already listening', async () => {
    const app = await createApp();
    await app.listen(0, '127.0.0.1');
    const { port } = app.getHttpServer().address() as AddressInfo;
    const client = await wsTestClient(app, '/echo');
    expect(client.url).toBe(`ws://127.0.0.1:${port}/echo`);
    client.send('hi');
    await client.expectMessage('hi');
    await app.close();
  });

  it.each(['express', 'fastify'] as const)(
    'finds routes served on the module port option (%s), without making the app listen',
    async (platform) => {
      const app = await createApp(platform, { port: 0, host: '127.0.0.1' });
      const client = await wsTestClient(app, '/echo');
      expect((app.getHttpServer() as Server).listening).toBe(false);
      expect(client.url).toMatch(/^ws:\/\/127\.0\.0\.1:\d+\/echo$/);
      client.send(Buffer.from([1, 2, 3]));
      await client.expectMessage(Buffer.from([1, 2, 3]));
      await app.close();
    },
  );

  it('connects over IPv6 loopback when the routes listen there', async () => {
    const app = await createApp('express', { port: 0, host: '::1' });
    const client = await wsTestClient(app, '/echo');
    expect(client.url).toMatch(/^ws:\/\/\[::1\]:\d+\/echo$/);
    client.send('v6');
    await client.expectMessage('v6');
  });

  it('connects to a base URL (a server that is already running)', async () => {
    const app = await createApp();
    await app.listen(0, '127.0.0.1');
    const { port } = app.getHttpServer().address() as AddressInfo;
    for (const base of [`ws://127.0.0.1:${port}`, `http://127.0.0.1:${port}/`]) {
      const client = await wsTestClient(base, '/echo?x=1');
      expect(client.url).toBe(`ws://127.0.0.1:${port}/echo?x=1`);
      client.send('hi');
      await client.expectMessage('hi');
      await client.close();
    }
    await app.close();
  });

  it('sends the headers, subprotocols and origin it is given', async () => {
    const app = await createApp();
    const client = await wsTestClient(app, '/events?q=1', {
      headers: { 'x-probe': 'yes' },
      protocols: ['kit.v1', 'kit.v2'],
      origin: 'http://app.test',
    });
    expect(client.protocol).toBe('kit.v2');
    await client.expectEvent('welcome', {
      protocol: 'kit.v2',
      origin: 'http://app.test',
      probe: 'yes',
      query: { q: '1' },
    });
    await app.close();
  });

  it('says why it cannot connect: no WsRoutesModule, no route, a bad path, a refusal', async () => {
    const plain = await NestFactory.create(PlainModule, { logger: false });
    apps.push(plain);
    expect((await failureOf(wsTestClient(plain, '/echo'))).message).toMatch(
      /does not import WsRoutesModule/,
    );
    await plain.close();
    const empty = await NestFactory.create(NoRoutesModule, { logger: false });
    apps.push(empty);
    expect((await failureOf(wsTestClient(empty, '/echo'))).message).toMatch(
      /serves no WebSocket route/,
    );
    await empty.close();
    const app = await createApp();
    expect((await failureOf(wsTestClient(app, 'echo'))).message).toMatch(
      /the path must start with "\/", got "echo"/,
    );
    const refused = await failureOf(wsTestClient(app, '/guarded'));
    expect(refused).toBeInstanceOf(WsExpectationError);
    expect(refused.message).toBe(
      'wsTestClient: the upgrade of /guarded was refused with 401 Unauthorized ' +
        '"{\\"message\\":\\"Token required\\",\\"error\\":\\"Unauthorized\\",\\"statusCode\\":401}" (expectRefused() asserts a refusal)',
    );
    expect((await failureOf(wsTestClient('ws://127.0.0.1:1', '/echo'))).message).toMatch(
      /^wsTestClient: could not connect to ws:\/\/127\.0\.0\.1:1\/echo: .*ECONNREFUSED/,
    );
    await app.close();
    expect(openWsTestClients()).toBe(0);
  });
});

describe('messages', () => {
  let app: INestApplication;
  beforeAll(async () => {
    app = await sharedApp();
  });
  afterAll(() => app.close());

  it('matches text, RegExp, bytes, JSON values, partial shapes, predicates and asymmetric matchers, and returns the value', async () => {
    const client = await wsTestClient(app, '/echo');
    client.send('plain');
    expect(await client.expectMessage('plain')).toBe('plain');
    client.send('plain again');
    expect(await client.expectMessage(/again$/)).toBe('plain again');
    client.send(new Uint8Array([0, 255]));
    const bytes = await client.expectMessage(Buffer.from([0, 255]));
    expect(Buffer.isBuffer(bytes)).toBe(true);
    client.sendJson({ a: 1, b: [1, { c: 'x' }] });
    expect(await client.expectMessage({ a: 1, b: [1, { c: 'x' }] })).toEqual({
      a: 1,
      b: [1, { c: 'x' }],
    });
    client.sendJson({ a: 1, b: { c: 'x', d: 2 }, e: 3 });
    await client.expectMessage(partial({ b: { c: /^x$/ } }));
    client.sendJson({ id: 'abc', n: 5 });
    await client.expectMessage({ id: expect.any(String), n: (n: number) => n > 4 });
    client.sendJson(42);
    expect(await client.expectMessage(42)).toBe(42);
    client.send('anything');
    expect(await client.expectMessage()).toBe('anything');
    client.sendJson([1, 2]);
    await client.expectMessage((value, frame) => frame.isBinary === false && value.length === 2);
    client.send(new Uint8Array([7]).buffer);
    await client.expectMessage((value: Buffer) => Buffer.isBuffer(value) && value[0] === 7);
    await client.expectNothing(50);
    await client.close();
  });

  it('takes messages in arrival order, also for expectations called before they arrive', async () => {
    const client = await wsTestClient(app, '/events');
    await client.expectEvent('welcome');
    const first = client.expectEvent('n', 0);
    const second = client.expectEvent('n', 1);
    client.emit('many', 3);
    await Promise.all([first, second]);
    expect(client.pending.map((frame) => frame.value)).toEqual([{ event: 'n', data: 2 }]);
    expect(await client.expectEvent('n')).toBe(2);
    await client.close();
  });

  it('sends events and reads event data with expectEvent', async () => {
    const client = await wsTestClient(app, '/events');
    await client.expectEvent('welcome', partial({ protocol: '' }));
    client.emit('ping', { x: [1] });
    expect(await client.expectEvent('pong', { x: [1] })).toEqual({ x: [1] });
    client.emit('ping', 'text');
    await client.expectEvent('pong', /^te/);
    client.emit('ping', 3);
    await client.expectEvent(
      'pong',
      (data, frame) => data === 3 && frame.data === '{"event":"pong","data":3}',
    );
    await client.close();
  });

  it('waits as long as the per-client and per-call timeouts say', async () => {
    const client = await wsTestClient(app, '/events', { timeout: 100 });
    await client.expectEvent('welcome');
    client.emit('later', 400);
    const started = Date.now();
    const short = await failureOf(client.expectEvent('late'));
    expect(Date.now() - started).toBeLessThan(400);
    expect(short.message).toMatch(/within 100 ms, but nothing arrived/);
    // A longer wait for one call; the message that came late is still the next one.
    expect(await client.expectEvent('late', 400, { timeout: 5000 })).toBe(400);
    client.emit('later', 400);
    expect((await failureOf(client.expectEvent('late', 400, { timeout: 50 }))).message).toMatch(
      /within 50 ms, but nothing arrived/,
    );
    await client.close();
  });
});

describe('failure messages', () => {
  let app: INestApplication;
  beforeAll(async () => {
    app = await sharedApp();
  });
  afterAll(() => app.close());

  it('expectMessage that gets another message names it, where it differs, and what came next', async () => {
    const client = await wsTestClient(app, '/echo');
    client.sendJson({ user: 'bob', room: '42' });
    client.send('second');
    await eventually(() => client.pending.length === 2);
    const failure = await failureOf(client.expectMessage({ user: 'ada', room: '42' }));
    expect(failure).toBeInstanceOf(WsExpectationError);
    expect(failure.message).toBe(
      `expectMessage on /echo: expected JSON { user: 'ada', room: '42' }, got text "{\\"user\\":\\"bob\\",\\"room\\":\\"42\\"}" ` +
        `(.user: expected 'ada', got 'bob'); then 1 more: text "second"`,
    );
    expect((failure as WsExpectationError).received?.value).toEqual({ user: 'bob', room: '42' });
    await client.close();
  });

  it('names an extra key, a missing key, text that is not JSON and binary instead of text', async () => {
    const client = await wsTestClient(app, '/echo');
    client.sendJson({ a: 1, b: 2 });
    expect((await failureOf(client.expectMessage({ a: 1 }))).message).toMatch(
      /\(the message: unexpected key 'b'\)$/,
    );
    client.sendJson({ a: 1 });
    expect((await failureOf(client.expectMessage(partial({ b: 2 })))).message).toMatch(
      /\(\.b: missing \(expected 2\)\); the message before it was text "\{\\"a\\":1,\\"b\\":2\}"$/,
    );
    client.send('not json');
    expect((await failureOf(client.expectMessage({ a: 1 }))).message).toMatch(
      /got text "not json" \(text that is not JSON\); the message before it was text "\{\\"a\\":1\}"$/,
    );
    client.send(Buffer.from([1, 2]));
    expect((await failureOf(client.expectMessage('x'))).message).toMatch(
      /expected text "x", got binary \(2 bytes\) <01 02> \(a binary frame instead of text\)/,
    );
    await client.close();
  });

  it('expectMessage that times out says nothing arrived and what arrived before', async () => {
    const client = await wsTestClient(app, '/echo', { timeout: 150 });
    const silent = await failureOf(client.expectMessage('hello'));
    expect(silent.message).toBe(
      'expectMessage on /echo: expected text "hello" within 150 ms, but nothing arrived; no message arrived since the connection opened',
    );
    client.send('first');
    await client.expectMessage('first');
    const started = Date.now();
    const failure = await failureOf(client.expectMessage('hello'));
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    expect(failure.message).toMatch(
      /^expectMessage on \/echo: expected text "hello" within 150 ms, but nothing arrived; 1 message arrived before, the last text "first" at \d+ ms$/,
    );
    await client.close();
  });

  it('an expectation on a closed connection names the close code and reason', async () => {
    const client = await wsTestClient(app, '/events');
    await client.expectEvent('welcome');
    const waiting = failureOf(client.expectEvent('pong'));
    client.emit('kick', 'go away');
    const failure = await waiting;
    expect(failure.message).toMatch(
      /^expectEvent on \/events: expected event "pong", but the connection closed with 4000 "go away"; 1 message arrived before/,
    );
    expect((failure as WsExpectationError).close).toEqual({ code: 4000, reason: 'go away' });
    // Later calls fail at once, with the same close.
    expect((await failureOf(client.expectMessage())).message).toMatch(
      /but the connection had closed with 4000 "go away"/,
    );
    // A send after the close is discarded, as a browser's is; the next expectation says why.
    client.send('x');
    expect((await failureOf(client.expectMessage())).message).toMatch(/had closed with 4000/);
  });

  it('expectClose with a wrong code or reason fails with what the close was; a timeout says it is still open', async () => {
    const client = await wsTestClient(app, '/events');
    const stillOpen = await failureOf(client.expectClose(4000, undefined, { timeout: 100 }));
    expect(stillOpen.message).toMatch(
      /^expectClose on \/events: expected close 4000 within 100 ms, but the connection is still open; 1 message\(s\) unread: text "\{\\"event\\":\\"welcome\\"/,
    );
    client.emit('kick', 'kick');
    const wrongCode = await failureOf(client.expectClose(4001));
    expect(wrongCode.message).toMatch(
      /^expectClose on \/events: expected close 4001, got 4000 "kick"; 1 message\(s\) unread/,
    );
    expect((await failureOf(client.expectClose(4000, 'bye'))).message).toMatch(
      /expected close 4000 "bye", got 4000 "kick"/,
    );
    expect((await failureOf(client.expectClose(undefined, /^b/))).message).toMatch(
      /expected close with any code reason matching \/\^b\/, got 4000 "kick"/,
    );
    expect(await client.expectClose(4000, 'kick')).toEqual({ code: 4000, reason: 'kick' });
    expect(await client.expectClose(4000, /ic/)).toEqual({ code: 4000, reason: 'kick' });
  });

  it('expectNothing fails on a message that arrives, one already waiting, and an unasserted close', async () => {
    const client = await wsTestClient(app, '/events');
    const waiting = await failureOf(client.expectNothing(100));
    expect(waiting.message).toMatch(
      /^expectNothing on \/events: expected nothing for 100 ms, but text "\{\\"event\\":\\"welcome\\".*" was waiting$/,
    );
    await client.expectEvent('welcome');
    client.emit('later', 50);
    const late = await failureOf(client.expectNothing(1000));
    expect(late.message).toMatch(
      /^expectNothing on \/events: expected nothing for 1000 ms, got text "\{\\"event\\":\\"late\\",\\"data\\":50\}" after \d+ ms$/,
    );
    await client.expectEvent('late', 50);
    client.emit('kick', 'bye');
    const closed = await failureOf(client.expectNothing(1000));
    expect(closed.message).toMatch(/but the connection closed with 4000 "bye" after \d+ ms$/);
    await client.expectClose(4000, 'bye');
    await client.expectNothing(10); // the close is accounted for now
  });

  it('a predicate must return true: false or nothing fails; what it throws is the failure', async () => {
    const client = await wsTestClient(app, '/echo');
    client.send('a');
    expect(
      (
        await failureOf(
          client.expectMessage(function isB(v) {
            return v === 'b';
          }),
        )
      ).message,
    ).toMatch(
      /expected a message the predicate isB\(\) accepts, got text "a" \(the predicate isB\(\) returned false\)/,
    );
    client.send('a');
    // A predicate that forgets to return must not pass.
    expect(
      (
        await failureOf(
          client.expectMessage(((v: unknown) => void (v === 'a')) as unknown as () => boolean),
        )
      ).message,
    ).toMatch(/\(the predicate returned undefined, not true\)/);
    client.send('a');
    const thrown = await failureOf(
      client.expectMessage((v) => {
        expect(v).toBe('b');
        return true;
      }),
    );
    expect(thrown.message).toMatch(/expect\(received\)\.toBe\(expected\)/);
    await client.close();
  });

  it('waits 2 s by default, and cuts long messages in failures', async () => {
    const client = await wsTestClient(app, '/echo');
    expect(client.timeout).toBe(2000);
    client.send('x'.repeat(1000));
    const failure = await failureOf(client.expectMessage('y'));
    expect(failure.message).toContain(`got text "${'x'.repeat(299)}…" (1000 characters)`);
    expect(failure.message.length).toBeLessThan(500);
    await client.close();
  });

  it('the stack of a failure points at the line of the test that called the expectation', async () => {
    const client = await wsTestClient(app, '/echo', { timeout: 50 });
    const failure = await failureOf(client.expectMessage('never'));
    expect(failure.stack).toMatch(/^WsExpectationError: expectMessage on \/echo/);
    // The first frame is this test's line, not the kit's.
    expect(failure.stack!.split('\n')[1]).toContain('ws-test-client.spec.ts');
    await client.close();
  });

  it('expectEvent names another event, a message that is no event, and data that differs', async () => {
    const client = await wsTestClient(app, '/events');
    expect((await failureOf(client.expectEvent('pong'))).message).toMatch(
      /^expectEvent on \/events: expected event "pong", got text .* \(event "welcome" instead\)$/,
    );
    client.emit('ping', { n: 1 });
    expect((await failureOf(client.expectEvent('pong', { n: 2 }))).message).toMatch(
      /expected event "pong" with data \{ n: 2 \}, got text .* \(\.data\.n: expected 2, got 1\); the message before it was text "\{\\"event\\":\\"welcome\\"/,
    );
    client.emit('ping', 'y');
    expect((await failureOf(client.expectEvent('pong', 'x'))).message).toMatch(
      /^expectEvent on \/events: expected event "pong" with data 'x', got text .* \(\.data: expected 'x', got 'y'\)/,
    );
    const echo = await wsTestClient(app, '/echo');
    echo.sendJson([1]);
    expect((await failureOf(echo.expectEvent('x'))).message).toMatch(/\(not an event message\)$/);
    await Promise.all([client.close(), echo.close()]);
  });
});

describe('expectRefused', () => {
  let app: INestApplication;
  beforeAll(async () => {
    app = await sharedApp();
  });
  afterAll(() => app.close());

  it('asserts the status and the body of a refused upgrade and returns them', async () => {
    const refusal = await expectRefused(app, '/guarded', 401, {
      body: { statusCode: 401, message: 'Token required', error: 'Unauthorized' },
    });
    expect(refusal.status).toBe(401);
    expect(refusal.statusText).toBe('Unauthorized');
    expect(refusal.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(refusal.body).toEqual({
      statusCode: 401,
      message: 'Token required',
      error: 'Unauthorized',
    });
    expect(refusal.text).toBe(
      '{"message":"Token required","error":"Unauthorized","statusCode":401}',
    );
    await expectRefused(app, '/nowhere', 404, { body: partial({ statusCode: 404 }) });
    await expectRefused(app, '/echo', 403, {
      origin: 'https://evil.example',
      body: partial({ statusCode: 403, message: ORIGIN_REFUSED_MESSAGE }),
    });
    const inside = await wsTestClient(app, '/guarded?token=secret');
    await inside.expectMessage('in');
    await inside.close();
    expect(openWsTestClients()).toBe(0);
  });

  it('fails with what happened: another status, another body, an accepted upgrade (which it closes)', async () => {
    expect((await failureOf(expectRefused(app, '/guarded', 403))).message).toBe(
      'expectRefused: expected the upgrade of /guarded to be refused with 403, got 401 Unauthorized "{\\"message\\":\\"Token required\\",\\"error\\":\\"Unauthorized\\",\\"statusCode\\":401}"',
    );
    expect(
      (
        await failureOf(
          expectRefused(app, '/guarded', 401, { body: partial({ message: /denied/ }) }),
        )
      ).message,
    ).toMatch(
      /and the body JSON like partial\(.*\), got 401 .* \(\.message: 'Token required' does not match \/denied\/\)$/,
    );
    const registry = app.get(WsConnectionRegistry);
    expect(
      (await failureOf(expectRefused(app, '/events', 401, { protocols: 'kit.v1' }))).message,
    ).toBe(
      'expectRefused: expected the upgrade of /events to be refused with 401, but it was accepted (101, protocol "kit.v1")',
    );
    await eventually(() => registry.size === 0 && openWsTestClients() === 0);
  });

  it('on a route with refuse: close, fails saying the upgrade was closed at once, and how to assert that', async () => {
    expect((await failureOf(expectRefused(app, '/close-refused', 401))).message).toBe(
      'expectRefused: expected the upgrade of /close-refused to be refused with 401, but it was accepted (101) ' +
        'and closed at once with 4401 "Token required"; ' +
        "a refusal by close (refuse: 'close') is asserted with (await wsTestClient(…)).expectClose(4401)",
    );
    const refused = await wsTestClient(app, '/close-refused');
    await refused.expectClose(4401, 'Token required');
    expect(refused.pending).toEqual([]);
    const inside = await wsTestClient(app, '/close-refused?token=secret');
    await inside.expectMessage('in');
    await inside.close();
    expect(openWsTestClients()).toBe(0);
  });
});

describe('closing and cleaning up', () => {
  let app: INestApplication;
  beforeAll(async () => {
    app = await sharedApp();
  });
  afterAll(() => app.close());

  it('close() sends the code and reason and resolves with the server’s answer', async () => {
    const client = await wsTestClient(app, '/echo');
    expect(await client.close(4001, 'bye')).toEqual({ code: 4001, reason: 'bye' });
    expect(await client.close()).toEqual({ code: 4001, reason: 'bye' });
    await client.expectNothing(10);
  });

  it('closeWsTestClients closes every open client and handshake in progress', async () => {
    const registry = app.get(WsConnectionRegistry);
    await Promise.all([
      wsTestClient(app, '/echo'),
      wsTestClient(app, '/events'),
      wsTestClient(app, '/echo'),
    ]);
    expect(registry.size).toBe(3);
    const raw = await rawServer('hang');
    const connecting = failureOf(
      wsTestClient(`ws://127.0.0.1:${raw.port}`, '/x', { timeout: 10_000 }),
    );
    await eventually(() => openWsTestClients() === 4);
    await closeWsTestClients();
    expect(openWsTestClients()).toBe(0);
    expect((await connecting).message).toMatch(
      /could not connect .* closed before the connection was established/,
    );
    await eventually(() => registry.size === 0);
    await raw.close();
  });

  it('close() terminates a server that never answers the close, and fails', async () => {
    const raw = await rawServer('silent');
    const client = await wsTestClient(`ws://127.0.0.1:${raw.port}`, '/x', { timeout: 200 });
    const failure = await failureOf(client.close());
    expect(failure.message).toBe(
      'close on /x: the server did not answer the close within 200 ms; the socket was terminated',
    );
    expect((await client.closed).code).toBe(1006);
    expect(openWsTestClients()).toBe(0);
    await raw.close();
  });

  it('expectRefused that gets no answer fails after the timeout and leaves nothing open', async () => {
    const raw = await rawServer('hang');
    const failure = await failureOf(
      expectRefused(`ws://127.0.0.1:${raw.port}`, '/x', 401, { timeout: 150 }),
    );
    expect(failure.message).toBe(
      'expectRefused: expected the upgrade of /x to be refused with 401, but no answer came within 150 ms',
    );
    await eventually(() => openWsTestClients() === 0);
    await raw.close();
  });

  it('a connect that gets no answer fails after the timeout and leaves nothing open', async () => {
    const raw = await rawServer('hang');
    const failure = await failureOf(
      wsTestClient(`ws://127.0.0.1:${raw.port}`, '/x', { timeout: 150 }),
    );
    expect(failure.message).toBe('wsTestClient: no answer to the upgrade of /x within 150 ms');
    await eventually(() => openWsTestClients() === 0);
    await raw.close();
  });

  it('await using closes the client at the end of the block', async () => {
    const registry = app.get(WsConnectionRegistry);
    let client: WsTestClient;
    {
      await using scoped = await wsTestClient(app, '/echo');
      client = scoped;
      expect(registry.size).toBe(1);
    }
    expect((await client.closed).code).toBe(1000);
    await eventually(() => registry.size === 0);
  });
});

/** A server that hangs on the upgrade, or accepts it and then never answers anything. */
async function rawServer(
  mode: 'hang' | 'silent',
): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer();
  server.on('upgrade', (request, socket: Socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    if (mode === 'silent') {
      const key = request.headers['sec-websocket-key'] as string;
      socket.write(
        'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
          `Sec-WebSocket-Accept: ${acceptKey(key)}\r\n\r\n`,
      );
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    // Upgraded sockets still hold the server open: they are destroyed first.
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
