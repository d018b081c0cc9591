import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { MessageBody as GatewayBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import {
  ConnectedSocket,
  MessageBody,
  OnMessage,
  OnOpen,
  WsConnection,
  WsRoute,
  WsRoutesAdapter,
  WsRoutesModule,
} from '../../lib/index.js';
import { startApp, type TestApp } from '../utils/app.js';
import {
  clientFrame,
  Opcode,
  parseHttpResponse,
  RawSocket,
  upgradeRequest,
} from '../utils/raw-socket.js';
import { TestClient } from '../utils/ws-client.js';

/**
 * `WsRoutesAdapter` in place of Nest's `WsAdapter`: the same constructor arguments, and classic
 * gateway paths matched as `WsAdapter` matches them, next to `@WsRoute` routes on one port.
 */

/** A wire format that is not JSON: `event:data`. */
function colonParser(data: unknown): { event: string; data: string } | void {
  const text = String(data);
  const colon = text.indexOf(':');
  if (colon === -1) return;
  return { event: text.slice(0, colon), data: text.slice(colon + 1) };
}

@WebSocketGateway({ path: '/classic' })
class ClassicGateway {
  @SubscribeMessage('ping')
  ping(@GatewayBody() data: string) {
    return { event: 'pong', data };
  }
}

@WsRoute('/live/:topic')
class LiveRoute {
  @OnOpen() open(@ConnectedSocket() conn: WsConnection) {
    return `topic=${conn.params.topic} query=${JSON.stringify(conn.query)}`;
  }

  @OnMessage() echo(@MessageBody() body: string) {
    return `live: ${body}`;
  }
}

@Module({ imports: [WsRoutesModule.forRoot()], providers: [LiveRoute, ClassicGateway] })
class MixedModule {}

/** Upgrades `target` over raw TCP; the status of the answer (and the socket, to go on). */
async function upgradeStatus(
  port: number,
  target: string,
  headers?: Record<string, string>,
): Promise<{ status: number; raw: RawSocket }> {
  const raw = await RawSocket.connect(port);
  raw.write(upgradeRequest(target, { headers }));
  await raw.waitFor((data) => data.includes('\r\n\r\n'), 3000, `an answer to ${target}`);
  const response = parseHttpResponse(raw.received)!;
  if (response.status === 101) raw.frameStart = response.headLength;
  return { status: response.status, raw };
}

/** Text frames the server sent after the 101, waited for until `count` arrived. */
async function texts(raw: RawSocket, count: number): Promise<string[]> {
  const read = () =>
    raw
      .frames()
      .filter((frame) => frame.opcode === Opcode.Text)
      .map((frame) => ('text' in frame ? frame.text : ''));
  await raw.waitFor(() => read().length >= count, 3000, `${count} text frame(s)`);
  return read();
}

describe('WsRoutesAdapter as a drop-in for WsAdapter', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startApp(MixedModule, {
      configure: (app) =>
        app.useWebSocketAdapter(new WsRoutesAdapter(app, { messageParser: colonParser })),
    });
  });
  afterAll(() => t.app.close());

  it('passes its options to WsAdapter: a custom messageParser serves the classic gateway, next to a route', async () => {
    const classic = await TestClient.open(t.url('/classic'));
    const live = await TestClient.open(t.url('/live/news'));
    expect(await live.next()).toBe('topic=news query={}');
    classic.send('ping:hi');
    expect(await classic.nextJson()).toEqual({ event: 'pong', data: 'hi' });
    live.send('z');
    expect(await live.next()).toBe('live: z');
    expect(t.app.getHttpServer().listenerCount('upgrade')).toBe(1);
    await Promise.all([classic.close(), live.close()]);
  });

  describe('request targets, read as WsAdapter reads them', () => {
    it.each([
      ['absolute-form', 'ws://127.0.0.1/classic'],
      ['absolute-form with a query', 'http://127.0.0.1/classic?x=1'],
      ['dot segments', '/a/../classic'],
      ['percent-encoded dot segments', '/a/%2e%2e/classic'],
      ['a query string', '/classic?token=abc'],
    ])('%s (%s) reaches the classic gateway', async (_what, target) => {
      const { status, raw } = await upgradeStatus(t.port, target);
      expect(status).toBe(101);
      raw.write(clientFrame(Opcode.Text, 'ping:via raw'));
      expect(await texts(raw, 1)).toEqual([JSON.stringify({ event: 'pong', data: 'via raw' })]);
      raw.destroy();
    });

    it.each([
      ['absolute-form', 'ws://127.0.0.1/live/a?x=1', 'topic=a query={"x":"1"}'],
      ['dot segments', '/x/y/../../live/b', 'topic=b query={}'],
      ['percent-encoded dot segments', '/x/%2E%2E/live/c', 'topic=c query={}'],
      ['a percent-encoded parameter', '/live/caf%C3%A9', 'topic=café query={}'],
    ])('%s (%s) reaches the @WsRoute', async (_what, target, greeting) => {
      const { status, raw } = await upgradeStatus(t.port, target);
      expect(status).toBe(101);
      expect(await texts(raw, 1)).toEqual([greeting]);
      raw.destroy();
    });

    it.each([
      ['a percent-encoded letter', '/%63lassic'],
      ['another case', '/Classic'],
      ['a longer path', '/classic/more'],
    ])('%s (%s) does not match the gateway, as with WsAdapter: 404', async (_what, target) => {
      const { status, raw } = await upgradeStatus(t.port, target);
      expect(status).toBe(404);
      await raw.waitClosed();
    });

    it('answers a target that is not a URL with 400, and keeps serving', async () => {
      const { status, raw } = await upgradeStatus(t.port, '/classic', { Host: '[::1' });
      expect(status).toBe(400);
      await raw.waitClosed();
      const classic = await TestClient.open(t.url('/classic'));
      classic.send('ping:after');
      expect(await classic.nextJson()).toEqual({ event: 'pong', data: 'after' });
      await classic.close();
    });
  });
});

describe('WsRoutesAdapter on its own', () => {
  @Module({ providers: [ClassicGateway] })
  class ClassicOnlyModule {}

  it('takes (app, { messageParser }) without @WsRoute routes, and reads targets as WsAdapter does', async () => {
    const t = await startApp(ClassicOnlyModule, {
      configure: (app) =>
        app.useWebSocketAdapter(new WsRoutesAdapter(app, { messageParser: colonParser })),
    });
    try {
      const { status, raw } = await upgradeStatus(t.port, 'ws://127.0.0.1/x/../classic');
      expect(status).toBe(101);
      raw.write(clientFrame(Opcode.Text, 'ping:alone'));
      expect(await texts(raw, 1)).toEqual([JSON.stringify({ event: 'pong', data: 'alone' })]);
      raw.destroy();
      const bad = await upgradeStatus(t.port, '/classic', { Host: '[::1' });
      expect(bad.status).toBe(400);
      bad.raw.destroy();
    } finally {
      await t.app.close();
    }
  });
});
