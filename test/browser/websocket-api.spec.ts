import 'reflect-metadata';
import { Injectable, Module } from '@nestjs/common';
import { randomBytes } from 'node:crypto';
import type { Page } from 'playwright-core';
import {
  OnClose,
  OnMessage,
  OnOpen,
  WsConnection,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import {
  appOf,
  BlankPageController,
  describeWithChromium,
  startBrowserApp,
  TestBrowser,
  type BrowserTestApp,
} from '../utils/browser.js';
import { eventually } from '../utils/ws-client.js';

/**
 * The browser's WebSocket API against our server, in a real Chromium: what a page script sees
 * (readyState, protocol, bufferedAmount, binaryType, close codes) is part of the contract.
 * Every page is served by the app itself, so its WebSockets are same-origin.
 */

/** What the server saw, for assertions from the Node side: every route records opens and closes. */
@Injectable()
class Seen {
  readonly connections: WsConnection[] = [];
  readonly messages: (string | Buffer)[] = [];
  readonly closes: { code: number; reason: string }[] = [];

  reset(): void {
    for (const list of [this.connections, this.messages, this.closes]) list.length = 0;
  }
}

/** Echoes every message as it came: text as text, binary as binary. */
@WsRoute('/echo', { subprotocols: ['chat.v1', 'chat.v2'], heartbeat: false })
class EchoRoute {
  constructor(private readonly seen: Seen) {}

  @OnOpen() open(conn: WsConnection) {
    this.seen.connections.push(conn);
    return { event: 'hello', data: { protocol: conn.protocol } };
  }
  @OnMessage() echo(_conn: WsConnection, body: string | Buffer) {
    this.seen.messages.push(body);
    return body;
  }
  @OnClose() close(_conn: WsConnection, closing: { code: number; reason: string }) {
    this.seen.closes.push(closing);
  }
}

/** Takes large messages and answers with their size. */
@WsRoute('/sink', { maxPayload: 32 * 1024 * 1024, heartbeat: false })
class SinkRoute {
  constructor(private readonly seen: Seen) {}

  @OnOpen() open(conn: WsConnection) {
    this.seen.connections.push(conn);
  }
  @OnClose() close(_conn: WsConnection, closing: { code: number; reason: string }) {
    this.seen.closes.push(closing);
  }
  @OnMessage() take(_conn: WsConnection, body: string | Buffer) {
    this.seen.messages.push(body);
    return `received ${body.length} bytes`;
  }
}

/** Speaks chat.v1 only, and refuses (400, before the 101) clients that do not offer it. */
@WsRoute('/strict-protocol', { subprotocols: ['chat.v1'], requireProtocol: true })
class StrictProtocolRoute {
  constructor(private readonly seen: Seen) {}

  @OnOpen() open(conn: WsConnection) {
    this.seen.connections.push(conn);
  }
  @OnClose() close(_conn: WsConnection, closing: { code: number; reason: string }) {
    this.seen.closes.push(closing);
  }
}

@Module({
  imports: [WsRoutesModule.forRoot()],
  controllers: [BlankPageController],
  providers: [Seen, EchoRoute, SinkRoute, StrictProtocolRoute],
})
class ContractModule {}

describeWithChromium('the browser WebSocket API (Chromium)', () => {
  let browser: TestBrowser;
  beforeAll(async () => {
    browser = await TestBrowser.launch();
  });
  afterAll(async () => {
    await browser?.close();
  });
  afterEach(() => {
    expect(browser.pageErrors).toEqual([]);
  });

  describe.each(['express', 'fastify'] as const)('on %s', (platform) => {
    // One app per platform; each test gets a fresh page and an empty record.
    let t: BrowserTestApp;
    let appClosed = false;
    let seen: Seen;
    let page: Page;
    beforeAll(async () => {
      t = await startBrowserApp(appOf(ContractModule, platform));
      seen = t.app.get(Seen);
    });
    afterAll(async () => {
      await page?.close();
      if (!appClosed) await t?.app.close();
    });
    beforeEach(async () => {
      // A fresh document: the previous test's sockets go with the old one. Wait until the
      // server has seen them go, then forget them.
      if (!page) page = await browser.newPage();
      await page.goto(t.http('/blank'));
      const registry = t.app.get(WsConnectionRegistry);
      await eventually(() => registry.size === 0 && seen.closes.length === seen.connections.length);
      seen.reset();
    });

    it("goes CONNECTING → OPEN → CLOSING → CLOSED and reports the server's subprotocol", async () => {
      const result = await page.evaluate(async (url) => {
        const g = globalThis as any;
        const ws = new WebSocket(url, ['chat.v2', 'chat.v1']);
        const trace = g.track(ws);
        const before = {
          readyState: ws.readyState,
          protocol: ws.protocol,
          extensions: ws.extensions,
          binaryType: ws.binaryType,
          bufferedAmount: ws.bufferedAmount,
        };
        const open = await trace.next('open');
        const protocol = ws.protocol;
        const hello = await trace.next('message');
        ws.close(1000, 'done');
        const closing = ws.readyState;
        const close = await trace.next('close');
        const { readyState, code, reason, wasClean } = close;
        return {
          before,
          onopen: open.readyState,
          protocol,
          hello: hello.data,
          closing,
          onclose: { readyState, code, reason, wasClean },
          events: trace.events.map((event: { type: string }) => event.type),
        };
      }, t.url('/echo'));

      expect(result.before).toEqual({
        readyState: 0,
        protocol: '',
        extensions: '',
        binaryType: 'blob',
        bufferedAmount: 0,
      });
      expect(result.onopen).toBe(1);
      // The page preferred chat.v2; the route prefers chat.v1 and the server decides.
      expect(result.protocol).toBe('chat.v1');
      expect(JSON.parse(result.hello)).toEqual({ event: 'hello', data: { protocol: 'chat.v1' } });
      expect(result.closing).toBe(2);
      expect(result.onclose).toEqual({ readyState: 3, code: 1000, reason: 'done', wasClean: true });
      expect(result.events).toEqual(['open', 'message', 'close']);
      await eventually(() => seen.closes.length === 1);
      expect(seen.closes).toEqual([{ code: 1000, reason: 'done' }]);
    });

    it('takes the only protocol the page offers when the route speaks it', async () => {
      const protocol = await page.evaluate(async (url) => {
        const ws = new WebSocket(url, 'chat.v2');
        await (globalThis as any).track(ws).next('open');
        ws.close();
        return ws.protocol;
      }, t.url('/echo'));
      expect(protocol).toBe('chat.v2');
      expect(seen.connections[0].protocol).toBe('chat.v2');
    });

    it('fails in the browser when the route speaks none of the offered protocols', async () => {
      // The route opens without a subprotocol, as RFC 6455 allows, but a browser that asked
      // for one fails such a connection: onerror, then 1006. The server saw an open.
      const unknown = await page.evaluate(async (url) => {
        const trace = (globalThis as any).track(new WebSocket(url, ['chat.v3']));
        const { code, wasClean } = await trace.next('close');
        return {
          code,
          wasClean,
          events: trace.events.map((event: { type: string }) => event.type),
        };
      }, t.url('/echo'));
      expect(unknown).toEqual({ code: 1006, wasClean: false, events: ['error', 'close'] });
      await eventually(() => seen.closes.length === 1);
      expect(seen.connections).toHaveLength(1);

      // With requireProtocol the server refuses before the 101: the page sees the same, and no
      // connection is ever opened on the server.
      const refused = await page.evaluate(async (url) => {
        const trace = (globalThis as any).track(new WebSocket(url, ['chat.v3']));
        const { code, wasClean } = await trace.next('close');
        return {
          code,
          wasClean,
          events: trace.events.map((event: { type: string }) => event.type),
        };
      }, t.url('/strict-protocol'));
      expect(refused).toEqual({ code: 1006, wasClean: false, events: ['error', 'close'] });
      expect(seen.connections).toHaveLength(1);
      const accepted = await page.evaluate(async (url) => {
        const ws = new WebSocket(url, ['chat.v1']);
        await (globalThis as any).track(ws).next('open');
        return ws.protocol;
      }, t.url('/strict-protocol'));
      expect(accepted).toBe('chat.v1');
    });

    it('carries text both ways with every character intact', async () => {
      const text = 'héllo wörld ✓ 🚀 ' + 'ж'.repeat(2000);
      const echoed = await page.evaluate(
        async ({ url, text }) => {
          const g = globalThis as any;
          const ws = new WebSocket(url);
          g.trace = g.track(ws);
          await g.trace.next('message'); // hello
          ws.send(text);
          const echo = await g.trace.next('message');
          return { type: typeof echo.data, same: echo.data === text };
        },
        { url: t.url('/echo'), text },
      );
      expect(echoed).toEqual({ type: 'string', same: true });
      expect(seen.messages).toEqual([text]);

      // A push the server starts, not a reply.
      seen.connections[0].send('from the server ✓');
      const pushed = await page.evaluate(async () => {
        const g = globalThis as any;
        return (await g.trace.next('message')).data;
      });
      expect(pushed).toBe('from the server ✓');
    });

    it.each(['arraybuffer', 'blob'] as const)(
      'carries binary both ways byte for byte with binaryType %s',
      async (binaryType) => {
        const bytes = randomBytes(100_000);
        for (let i = 0; i < 256; i++) bytes[i] = i; // every byte value, first
        const echoed = await page.evaluate(
          async ({ url, binaryType, base64 }) => {
            const g = globalThis as any;
            const ws = new WebSocket(url);
            ws.binaryType = binaryType;
            g.trace = g.track(ws);
            await g.trace.next('message'); // hello
            const bytes: Uint8Array = g.fromBase64(base64);
            // Send it as the page's binaryType suggests: an ArrayBuffer, or a Blob.
            ws.send(binaryType === 'blob' ? new Blob([bytes]) : bytes.buffer);
            // A view sends only its own bytes, not its whole buffer.
            ws.send(bytes.subarray(1000, 1010));
            const echoes = [await g.trace.next('message'), await g.trace.next('message')];
            const results = [];
            for (const echo of echoes) {
              results.push({
                kind: Object.prototype.toString.call(echo.data),
                base64: g.toBase64(await g.toBytes(echo.data)),
              });
            }
            return results;
          },
          { url: t.url('/echo'), binaryType, base64: bytes.toString('base64') },
        );

        const kind = binaryType === 'blob' ? '[object Blob]' : '[object ArrayBuffer]';
        expect(echoed.map((echo) => echo.kind)).toEqual([kind, kind]);
        expect(Buffer.from(echoed[0].base64, 'base64').equals(bytes)).toBe(true);
        expect(Buffer.from(echoed[1].base64, 'base64').equals(bytes.subarray(1000, 1010))).toBe(
          true,
        );
        // What the server received, before echoing it.
        expect(seen.messages).toHaveLength(2);
        expect(Buffer.isBuffer(seen.messages[0]) && seen.messages[0].equals(bytes)).toBe(true);
        expect(seen.messages[1]).toEqual(bytes.subarray(1000, 1010));

        // A binary push the server starts.
        const push = randomBytes(5000);
        seen.connections[0].send(push);
        const pushed = await page.evaluate(async () => {
          const g = globalThis as any;
          const { data } = await g.trace.next('message');
          return {
            kind: Object.prototype.toString.call(data),
            base64: g.toBase64(await g.toBytes(data)),
          };
        });
        expect(pushed.kind).toBe(kind);
        expect(Buffer.from(pushed.base64, 'base64').equals(push)).toBe(true);
      },
    );

    it('counts a large send in bufferedAmount until it has gone out, then 0', async () => {
      const size = 8 * 1024 * 1024;
      const result = await page.evaluate(
        async ({ url, size }) => {
          const g = globalThis as any;
          const ws = new WebSocket(url);
          const trace = g.track(ws);
          await trace.next('open');
          const payload = new Uint8Array(size);
          for (let i = 0; i < size; i++) payload[i] = (i * 7) & 255;
          ws.send(payload);
          const rightAfterSend = ws.bufferedAmount;
          const samples = [rightAfterSend];
          const started = performance.now();
          while (ws.bufferedAmount > 0 && performance.now() - started < 10_000) {
            await new Promise((resolve) => setTimeout(resolve, 1));
            samples.push(ws.bufferedAmount);
          }
          const reply = await trace.next('message');
          return { rightAfterSend, samples, final: ws.bufferedAmount, reply: reply.data };
        },
        { url: t.url('/sink'), size },
      );
      // The spec: send() adds the message's size at once; it drains as the bytes go out.
      expect(result.rightAfterSend).toBe(size);
      expect(result.final).toBe(0);
      expect(result.reply).toBe(`received ${size} bytes`);
      for (let i = 1; i < result.samples.length; i++) {
        expect(result.samples[i]).toBeLessThanOrEqual(result.samples[i - 1]);
      }
      const received = seen.messages[0] as Buffer;
      expect(received.length).toBe(size);
      expect(received[12345]).toBe((12345 * 7) & 255);
      expect(received[size - 1]).toBe(((size - 1) * 7) & 255);
    });

    it("delivers the page's close(4001, 'bye') to @OnClose", async () => {
      const close = await page.evaluate(async (url) => {
        const ws = new WebSocket(url);
        const trace = (globalThis as any).track(ws);
        await trace.next('open');
        ws.close(4001, 'bye');
        const { code, reason, wasClean } = await trace.next('close');
        return { code, reason, wasClean };
      }, t.url('/echo'));
      await eventually(() => seen.closes.length === 1);
      expect(seen.closes).toEqual([{ code: 4001, reason: 'bye' }]);
      // The server answered the closing handshake with the same code.
      expect(close).toEqual({ code: 4001, reason: 'bye', wasClean: true });
    });

    it("gives the page onclose with the server's close(4000, 'kick'), cleanly", async () => {
      await page.evaluate(async (url) => {
        const g = globalThis as any;
        g.trace = g.track(new WebSocket(url));
        await g.trace.next('open');
      }, t.url('/echo'));
      await eventually(() => seen.connections.length === 1);
      seen.connections[0].close(4000, 'kick');
      const close = await page.evaluate(async () => {
        const g = globalThis as any;
        const { readyState, code, reason, wasClean } = await g.trace.next('close');
        const errors = g.trace.events.filter((event: { type: string }) => event.type === 'error');
        return { readyState, code, reason, wasClean, errors: errors.length };
      });
      expect(close).toEqual({
        readyState: 3,
        code: 4000,
        reason: 'kick',
        wasClean: true,
        errors: 0,
      });
      await eventually(() => seen.closes.length === 1);
      expect(seen.closes[0].code).toBe(4000);
    });

    it('gives the page 1006, not clean, when the server drops the connection', async () => {
      await page.evaluate(async (url) => {
        const g = globalThis as any;
        g.trace = g.track(new WebSocket(url));
        await g.trace.next('open');
      }, t.url('/echo'));
      await eventually(() => seen.connections.length === 1);
      seen.connections[0].terminate();
      const close = await page.evaluate(async () => {
        const { readyState, code, reason, wasClean } = await (globalThis as any).trace.next(
          'close',
        );
        return { readyState, code, reason, wasClean };
      });
      expect(close).toEqual({ readyState: 3, code: 1006, reason: '', wasClean: false });
    });

    it('closes with 1009 when the page sends more than maxPayload', async () => {
      const close = await page.evaluate(async (url) => {
        const ws = new WebSocket(url);
        const trace = (globalThis as any).track(ws);
        await trace.next('open');
        ws.send(new Uint8Array(1024 * 1024 + 1));
        const { code, wasClean } = await trace.next('close');
        return { code, wasClean };
      }, t.url('/echo'));
      expect(close).toEqual({ code: 1009, wasClean: true });
    });

    // Last: it closes the app.
    it('tells the page 1001 when the application shuts down', async () => {
      await page.evaluate(async (url) => {
        const g = globalThis as any;
        g.trace = g.track(new WebSocket(url));
        await g.trace.next('open');
      }, t.url('/echo'));
      await t.app.close();
      appClosed = true;
      const close = await page.evaluate(async () => {
        const { code, reason, wasClean } = await (globalThis as any).trace.next('close');
        return { code, reason, wasClean };
      });
      expect(close).toEqual({ code: 1001, reason: 'Server shutting down', wasClean: true });
    });
  });
});
