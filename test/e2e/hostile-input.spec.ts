import 'reflect-metadata';
import { Module, type Type } from '@nestjs/common';
import { WebSocket } from 'ws';
import {
  MessageBody,
  OnMessage,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesModule,
  type WsConnection,
} from '../../lib/index.js';
import { CapturingLogger, startApp, type TestApp } from '../utils/app.js';
import {
  clientCloseFrame,
  clientFrame,
  Opcode,
  openRawWebSocket,
  parseHttpResponse,
  pseudoRandomBytes,
  RawSocket,
  upgradeRequest,
  type RawHttpResponse,
} from '../utils/raw-socket.js';
import { delay, eventually, refusedUpgrade, TestClient } from '../utils/ws-client.js';

/*
 * The hostile-input suite of the handshake-security issue: malformed handshakes, protocol
 * violations, floods. Every case asserts the exact answer, and afterEach checks that the server
 * is unharmed: a normal client still gets its echo, the registry holds only the connections
 * the test still holds, and nothing any client received contains a stack trace or a path.
 */

@WsRoute('/echo', { rateLimit: false })
class EchoRoute {
  @OnMessage() echo(@MessageBody() body: string | Buffer) {
    return `got: ${body}`;
  }
}

@WsRoute('/small', { maxPayload: 1024, rateLimit: false })
class SmallRoute {
  @OnMessage() echo(@MessageBody() body: string | Buffer) {
    return `got: ${body}`;
  }
}

@WsRoute('/limited', { rateLimit: { messages: 20, per: 1000 } })
class LimitedRoute {
  @OnMessage() echo(@MessageBody() body: string) {
    return `got: ${body}`;
  }
}

@WsRoute('/dropping', { rateLimit: { messages: 20, per: 1000, action: 'drop' } })
class DroppingRoute {
  @OnMessage() echo(@MessageBody() body: string) {
    return `got: ${body}`;
  }
}

const PER_IP = 5;
const HANDSHAKE_TIMEOUT = 600;

@Module({
  imports: [
    WsRoutesModule.forRoot({ maxConnectionsPerIp: PER_IP, handshakeTimeout: HANDSHAKE_TIMEOUT }),
  ],
  providers: [EchoRoute, SmallRoute, LimitedRoute, DroppingRoute],
})
class HostileModule {}

/** A stack frame, a source position or a file path: what a client must never see. */
const INTERNALS = /(^|\n)\s+at |\.[cm]?[jt]s:\d|node_modules|file:\/\/|\/work\//;

describe('hostile input', () => {
  let t: TestApp;
  let registry: WsConnectionRegistry;
  const logger = new CapturingLogger();

  /** Everything clients received in the current case (bodies, messages, close reasons). */
  const seen: string[] = [];
  const raws: RawSocket[] = [];
  const clients: TestClient[] = [];

  beforeAll(async () => {
    t = await startApp(HostileModule, { logger });
    registry = t.app.get(WsConnectionRegistry);
  });
  afterAll(() => t.app.close());

  afterEach(async () => {
    try {
      await expectServerUnharmed();
    } finally {
      for (const raw of raws.splice(0)) raw.destroy();
      for (const client of clients.splice(0)) client.socket.terminate();
      seen.length = 0;
    }
  });

  async function expectServerUnharmed(): Promise<void> {
    for (const raw of raws) seen.push(raw.received.toString());
    // (c) no stack trace or file path in anything a client got
    expect(seen.filter((text) => INTERNALS.test(text))).toEqual([]);
    // (b) the registry holds exactly the connections the test still holds
    await eventually(() => registry.size === held());
    // (a) a normal client still connects and gets its echo
    const probe = await TestClient.open(t.url('/echo'));
    probe.send('probe');
    expect(await probe.next()).toBe('got: probe');
    expect(registry.size).toBe(held() + 1);
    await probe.close();
    await eventually(() => registry.size === held());
  }

  /** Open connections on the test's side. */
  function held(): number {
    return (
      clients.filter((client) => client.socket.readyState === WebSocket.OPEN).length +
      raws.filter((raw) => raw.frameStart !== undefined && !raw.closed).length
    );
  }

  async function raw(): Promise<RawSocket> {
    const socket = await RawSocket.connect(t.port);
    raws.push(socket);
    return socket;
  }

  async function rawWebSocket(path: string): Promise<RawSocket> {
    const socket = await openRawWebSocket(t.port, path);
    raws.push(socket);
    return socket;
  }

  async function client(path: string): Promise<TestClient> {
    const opened = await TestClient.open(t.url(path));
    clients.push(opened);
    opened.socket.on('message', (data: Buffer) => seen.push(data.toString()));
    opened.socket.on('close', (_code: number, reason: Buffer) => seen.push(reason.toString()));
    return opened;
  }

  /** The one connection of a route in the registry. */
  async function connectionOf(route: Type): Promise<WsConnection> {
    await eventually(() => registry.byRoute(route).size === 1);
    return [...registry.byRoute(route)][0];
  }

  /** Sends bytes on a fresh TCP connection and waits for the server to close it. */
  async function exchange(request: string | Buffer): Promise<RawHttpResponse> {
    const socket = await raw();
    socket.write(request);
    await socket.waitClosed(2000);
    const response = parseHttpResponse(socket.received);
    if (!response) throw new Error(`not an HTTP response: ${socket.received.toString()}`);
    return response;
  }

  /** The headers and body `refuseUpgrade` writes, for an exact comparison. */
  function refusal(body: object, extra: Record<string, string> = {}) {
    const json = JSON.stringify(body);
    return {
      headers: {
        connection: 'close',
        'content-type': 'application/json; charset=utf-8',
        'content-length': String(Buffer.byteLength(json)),
        ...extra,
      },
      body: json,
    };
  }

  function closeFrame(code: number) {
    return { fin: true, opcode: Opcode.Close, masked: false, code, reason: '' };
  }

  describe('malformed handshakes', () => {
    it('1. answers an upgrade without Sec-WebSocket-Key with 400 and closes the socket', async () => {
      const response = await exchange(
        upgradeRequest('/echo', { headers: { 'Sec-WebSocket-Key': undefined } }),
      );
      expect(response.statusLine).toBe('HTTP/1.1 400 Bad Request');
      expect({ headers: response.headers, body: response.body.toString() }).toEqual(
        refusal({ statusCode: 400, message: 'Missing or invalid Sec-WebSocket-Key header' }),
      );
    });

    it('2. answers Sec-WebSocket-Version: 12 with 426 and the supported versions', async () => {
      const response = await exchange(
        upgradeRequest('/echo', { headers: { 'Sec-WebSocket-Version': '12' } }),
      );
      expect(response.statusLine).toBe('HTTP/1.1 426 Upgrade Required');
      expect({ headers: response.headers, body: response.body.toString() }).toEqual(
        refusal(
          { statusCode: 426, message: 'Unsupported Sec-WebSocket-Version' },
          { 'sec-websocket-version': '13, 8' },
        ),
      );
    });

    it('3. treats Connection: Upgrade without an Upgrade header as plain HTTP (Nest 404, kept alive)', async () => {
      const logged = logger.lines.length;
      const socket = await raw();
      socket.write(upgradeRequest('/echo', { headers: { Upgrade: undefined } }));
      await socket.waitFor((data) => parseHttpResponse(data)?.complete ?? false);
      const response = parseHttpResponse(socket.received)!;
      expect(response.statusLine).toBe('HTTP/1.1 404 Not Found');
      expect(response.headers.connection).toBe('keep-alive');
      expect(JSON.parse(response.body.toString())).toEqual({
        message: 'Cannot GET /echo',
        error: 'Not Found',
        statusCode: 404,
      });
      // It never reached the upgrade listener: no refusal logged, nothing registered.
      expect(logger.lines.slice(logged)).toEqual([]);
      expect(registry.size).toBe(0);
      // The HTTP connection is still usable, and the handshake timeout does not cut it.
      await delay(HANDSHAKE_TIMEOUT + 100);
      expect(socket.closed).toBe(false);
      socket.write('GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
      await socket.waitClosed(2000);
      const firstLength = response.headLength + Number(response.headers['content-length']);
      const second = parseHttpResponse(socket.received.subarray(firstLength));
      expect(second?.statusLine).toBe('HTTP/1.1 404 Not Found');
      expect(second?.headers.connection).toBe('close');
    });

    it('4. answers a POST upgrade with 405 and Allow: GET', async () => {
      const response = await exchange(upgradeRequest('/echo', { method: 'POST' }));
      expect(response.statusLine).toBe('HTTP/1.1 405 Method Not Allowed');
      expect({ headers: response.headers, body: response.body.toString() }).toEqual(
        refusal({ statusCode: 405, message: 'WebSocket upgrades must use GET' }, { allow: 'GET' }),
      );
    });

    it("5. answers 1 KB of garbage with Node's 400 and closes within 2 s", async () => {
      const garbage = pseudoRandomBytes(1024);
      expect(garbage[0]).toBe(25); // not a token character: the parser fails at the first byte
      const socket = await raw();
      socket.write(garbage);
      const elapsed = await socket.waitClosed(2000);
      expect(socket.received.toString()).toBe(
        'HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n',
      );
      expect(elapsed).toBeLessThan(2000);
    });

    it('6. cuts off a slowloris handshake with 408 after handshakeTimeout', async () => {
      const socket = await raw();
      socket.write('GET /echo HTTP/1.1\r\nHost: x\r\n');
      let lines = 0;
      const drip = setInterval(() => {
        if (socket.closed || lines >= 15) clearInterval(drip);
        else if (socket.write(`X-Drip-${lines}: ${'a'.repeat(8)}\r\n`)) lines++;
      }, 200);
      try {
        const elapsed = await socket.waitClosed(3000);
        expect(socket.received.toString()).toBe(
          'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n',
        );
        expect(elapsed).toBeGreaterThanOrEqual(HANDSHAKE_TIMEOUT - 50);
        expect(elapsed).toBeLessThanOrEqual(1500);
        expect(lines).toBeGreaterThanOrEqual(2); // it was still dripping when cut off
      } finally {
        clearInterval(drip);
      }
    });
  });

  describe('protocol violations after the 101', () => {
    it('7. closes with 1007 on a text frame that is not UTF-8', async () => {
      const socket = await rawWebSocket('/echo');
      socket.write(clientFrame(Opcode.Text, Buffer.from([0xff, 0xfe])));
      await socket.waitClosed(2000);
      expect(socket.frames()).toEqual([closeFrame(1007)]);
    });

    it('8. closes with 1002 on an unmasked client frame', async () => {
      const socket = await rawWebSocket('/echo');
      socket.write(clientFrame(Opcode.Text, 'hello', { mask: false }));
      await socket.waitClosed(2000);
      expect(socket.frames()).toEqual([closeFrame(1002)]);
    });

    it('9. closes with 1009 on a frame larger than maxPayload', async () => {
      const socket = await rawWebSocket('/small');
      socket.write(clientFrame(Opcode.Text, 'x'.repeat(2048)));
      await socket.waitClosed(2000);
      expect(socket.frames()).toEqual([closeFrame(1009)]);
    });

    it('10a. closes with 1009 when continuation frames add up past maxPayload', async () => {
      const socket = await rawWebSocket('/small');
      const chunk = 'y'.repeat(32);
      const frames = [clientFrame(Opcode.Text, chunk, { fin: false })];
      for (let i = 0; i < 99; i++)
        frames.push(clientFrame(Opcode.Continuation, chunk, { fin: false }));
      socket.write(Buffer.concat(frames)); // 3,200 bytes of a message that never ends
      await socket.waitClosed(2000);
      expect(socket.frames()).toEqual([closeFrame(1009)]);
    });

    it('10b. delivers a fragmented message of exactly maxPayload whole', async () => {
      const socket = await rawWebSocket('/small');
      const parts = ['a', 'b', 'c', 'd'].map((letter) => letter.repeat(256));
      socket.write(
        Buffer.concat(
          parts.map((part, i) =>
            clientFrame(i === 0 ? Opcode.Text : Opcode.Continuation, part, {
              fin: i === parts.length - 1,
            }),
          ),
        ),
      );
      await socket.waitFor((data) => data.length > socket.frameStart!, 2000, 'echo');
      socket.write(clientCloseFrame(1000));
      await socket.waitClosed(2000);
      expect(socket.frames()).toEqual([
        { fin: true, opcode: Opcode.Text, masked: false, text: `got: ${parts.join('')}` },
        closeFrame(1000),
      ]);
    });

    it.each([1005, 999, 5000])('11. answers a close frame with code %i with 1002', async (code) => {
      const socket = await rawWebSocket('/echo');
      socket.write(clientCloseFrame(code, 'bye'));
      await socket.waitClosed(2000);
      expect(socket.frames()).toEqual([closeFrame(1002)]);
    });
  });

  describe('floods', () => {
    it('12. holds the per-IP limit through 1000 connect/disconnect cycles without leaking slots', async () => {
      const five = await Promise.all(Array.from({ length: PER_IP }, () => client('/echo')));
      await eventually(() => registry.size === PER_IP);
      const sixth = await refusedUpgrade(t.url('/echo'));
      seen.push(sixth.body);
      expect(sixth.status).toBe(429);
      expect(sixth.headers['retry-after']).toBe('1');
      expect(JSON.parse(sixth.body)).toEqual({
        statusCode: 429,
        message: 'Too many connections from this address',
      });
      await Promise.all(five.map((open) => open.close()));
      await eventually(() => registry.size === 0);

      const started = Date.now();
      const deadline = started + 20_000;
      const failures: string[] = [];
      let cycles = 0;
      for (; cycles < 1000 && Date.now() < deadline; cycles++) {
        try {
          const cycle = await TestClient.open(t.url('/echo'));
          const closed = await cycle.close(1000, 'cycle');
          if (closed.code !== 1000) failures.push(`cycle ${cycles}: closed with ${closed.code}`);
        } catch (error) {
          failures.push(`cycle ${cycles}: ${(error as Error).message}`);
          if (failures.length >= 5) break;
        }
      }
      const elapsed = Date.now() - started;
      expect(failures).toEqual([]);
      expect(cycles).toBe(1000);
      expect(elapsed).toBeLessThan(20_000);
      await eventually(() => registry.size === 0);

      // Every slot came back: five connect again, the sixth is refused again.
      const again = await Promise.all(Array.from({ length: PER_IP }, () => client('/echo')));
      expect((await refusedUpgrade(t.url('/echo'))).status).toBe(429);
      await Promise.all(again.map((open) => open.close()));
      await eventually(() => registry.size === 0);
    });

    it('13a. closes a connection that bursts past its rate limit with 1008, and logs it', async () => {
      const flooder = await client('/limited');
      const conn = await connectionOf(LimitedRoute);
      for (let i = 0; i < 100; i++) flooder.send(`m${i}`);
      expect(await flooder.closed).toEqual({ code: 1008, reason: 'Rate limit exceeded' });
      // The messages within the limit are answered before the close: the 20 of the bucket,
      // plus one per 50 ms the burst took to arrive (the bucket refills continuously).
      const replies = flooder.received;
      expect(replies.length).toBeGreaterThanOrEqual(20);
      expect(replies.length).toBeLessThanOrEqual(22);
      expect(replies).toEqual(replies.map((_, i) => `got: m${i}`));
      const line = logger.lines.find(({ text }) => text.includes(conn.id));
      expect(line?.level).toBe('warn');
      expect(line?.text).toContain(
        `connection ${conn.id} from 127.0.0.1 exceeded 20 messages per 1000 ms`,
      );
      expect(line?.text).toContain('closing with 1008');
      await eventually(() => registry.byRoute(LimitedRoute).size === 0);
    });

    it('13b. with action "drop", answers 20 of a 100-message burst, drops 80, and recovers', async () => {
      const flooder = await client('/dropping');
      const conn = await connectionOf(DroppingRoute);
      for (let i = 0; i < 100; i++) flooder.send(`m${i}`);
      const replies: unknown[] = [];
      for (let i = 0; i < 20; i++) replies.push(await flooder.next());
      expect(replies).toEqual(Array.from({ length: 20 }, (_, i) => `got: m${i}`));
      expect(await flooder.silentFor(300)).toBe(true);
      expect(conn.droppedMessages).toBe(80);
      expect(conn.readyState).toBe(conn.OPEN);
      const warnings = logger.lines.filter(({ text }) => text.includes(conn.id));
      expect(warnings.map(({ level }) => level)).toEqual(['warn']); // logged once, not 80 times
      expect(warnings[0].text).toContain(
        `connection ${conn.id} from 127.0.0.1 exceeded 20 messages per 1000 ms; dropping`,
      );

      await delay(1050); // the bucket refills
      flooder.send('again');
      expect(await flooder.next()).toBe('got: again');
      expect(conn.droppedMessages).toBe(80);
      await flooder.close();
    });
  });

  describe('afterwards', () => {
    it('has every per-IP slot back after all of the above', async () => {
      const five = await Promise.all(Array.from({ length: PER_IP }, () => client('/echo')));
      expect(registry.size).toBe(PER_IP);
      expect((await refusedUpgrade(t.url('/echo'))).status).toBe(429);
      await Promise.all(five.map((open) => open.close()));
    });
  });
});
