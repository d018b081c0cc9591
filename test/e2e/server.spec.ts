import 'reflect-metadata';
import { Controller, Get, Injectable, Module } from '@nestjs/common';
import { MessageBody as GatewayBody, SubscribeMessage, WebSocketGateway } from '@nestjs/websockets';
import {
  ConnectedSocket,
  MessageBody,
  OnMessage,
  OnOpen,
  WsConnection,
  WsRoute,
  WsRoutesAdapter,
  WsRoutesGateway,
  WsRoutesModule,
} from '../../lib/index.js';
import { startApp } from '../utils/app.js';
import { refusedUpgrade, TestClient } from '../utils/ws-client.js';

@WsRoute('/live/:topic')
class LiveRoute {
  @OnMessage() echo(@MessageBody() body: string) {
    return `live: ${body}`;
  }
}

@WsRoute('/files/*rest')
class FilesRoute {
  @OnMessage() echo(@MessageBody() body: string) {
    return `files: ${body}`;
  }
}

@WsRoute('/proto', { subprotocols: ['chat.v2', 'chat.v1'] })
class ProtoRoute {
  @OnOpen() open(@ConnectedSocket() conn: WsConnection) {
    return `protocol=${conn.protocol}`;
  }
}

@Controller('api')
class HealthController {
  @Get('health') health() {
    return { ok: true };
  }
}

@Module({
  imports: [WsRoutesModule.forRoot()],
  controllers: [HealthController],
  providers: [LiveRoute, FilesRoute, ProtoRoute],
})
class AppModule {}

describe.each(['express', 'fastify'] as const)('on the %s platform', (platform) => {
  it('serves routes and HTTP on one port, and refuses unknown paths with 404', async () => {
    const t = await startApp(AppModule, { platform });
    try {
      const live = await TestClient.open(t.url('/live/prices?x=1'));
      live.send('a');
      expect(await live.next()).toBe('live: a');
      const files = await TestClient.open(t.url('/files/a/b/c'));
      files.send('b');
      expect(await files.next()).toBe('files: b');

      const response = await fetch(t.http('/api/health'));
      expect(response.status).toBe(200);
      expect(await response.json()).toEqual({ ok: true });

      const refused = await refusedUpgrade(t.url('/nowhere'));
      expect(refused.status).toBe(404);
      expect(JSON.parse(refused.body)).toEqual({
        statusCode: 404,
        message: 'No WebSocket endpoint at this path',
      });
      expect((await refusedUpgrade(t.url('/live'))).status).toBe(404);

      // The open connections were not disturbed by the refusals.
      live.send('c');
      expect(await live.next()).toBe('live: c');
      await Promise.all([live.close(), files.close()]);
    } finally {
      await t.app.close();
    }
  });
});

describe('subprotocols', () => {
  it("picks the server's most preferred protocol among those offered", async () => {
    const t = await startApp(AppModule);
    try {
      const client = await TestClient.open(t.url('/proto'), ['chat.v1', 'chat.v2']);
      expect(client.socket.protocol).toBe('chat.v2');
      expect(await client.next()).toBe('protocol=chat.v2');
      const old = await TestClient.open(t.url('/proto'), ['chat.v1', 'chat.v0']);
      expect(old.socket.protocol).toBe('chat.v1');
      const none = await TestClient.open(t.url('/proto'));
      expect(await none.next()).toBe('protocol=');
      await Promise.all([client.close(), old.close(), none.close()]);
    } finally {
      await t.app.close();
    }
  });
});

describe('a separate port', () => {
  it('serves the routes on their own port and answers plain HTTP there with 426', async () => {
    @Module({
      imports: [WsRoutesModule.forRoot({ port: 0, host: '127.0.0.1' })],
      controllers: [HealthController],
      providers: [LiveRoute],
    })
    class SeparatePortModule {}
    const t = await startApp(SeparatePortModule);
    try {
      const address = t.app.get(WsRoutesGateway).address();
      expect(address?.port).toBeGreaterThan(0);
      expect(address?.port).not.toBe(t.port);
      const client = await TestClient.open(`ws://127.0.0.1:${address!.port}/live/x`);
      client.send('p');
      expect(await client.next()).toBe('live: p');
      expect((await fetch(`http://127.0.0.1:${address!.port}/`)).status).toBe(426);
      await client.close();
    } finally {
      await t.app.close();
    }
  });
});

describe('forRootAsync', () => {
  it('takes options from an injected factory', async () => {
    @Injectable()
    class Config {
      readonly wsMaxPayload = 8;
    }
    @Module({ providers: [Config], exports: [Config] })
    class ConfigModule {}
    @Module({
      imports: [
        WsRoutesModule.forRootAsync({
          imports: [ConfigModule],
          inject: [Config],
          useFactory: async (config: Config) => ({ maxPayload: config.wsMaxPayload }),
        }),
      ],
      providers: [LiveRoute],
    })
    class AsyncModule {}
    const t = await startApp(AsyncModule);
    try {
      const client = await TestClient.open(t.url('/live/x'));
      client.send('123456789');
      expect((await client.closed).code).toBe(1009);
    } finally {
      await t.app.close();
    }
  });
});

@WebSocketGateway({ path: '/classic' })
class ClassicGateway {
  @SubscribeMessage('ping')
  ping(@GatewayBody() data: string) {
    return { event: 'pong', data };
  }
}

@Module({ imports: [WsRoutesModule.forRoot()], providers: [LiveRoute, ClassicGateway] })
class MixedModule {}

describe('next to a classic @WebSocketGateway', () => {
  it('routes both through one listener with WsRoutesAdapter', async () => {
    const t = await startApp(MixedModule, {
      configure: (app) => app.useWebSocketAdapter(new WsRoutesAdapter(app)),
    });
    try {
      const classic = await TestClient.open(t.url('/classic'));
      const live = await TestClient.open(t.url('/live/y'));
      classic.emit('ping', 'hi');
      expect(await classic.nextJson()).toEqual({ event: 'pong', data: 'hi' });
      live.send('z');
      expect(await live.next()).toBe('live: z');
      expect((await refusedUpgrade(t.url('/elsewhere'))).status).toBe(404);
      expect(t.app.getHttpServer().listenerCount('upgrade')).toBe(1);
      await Promise.all([classic.close(), live.close()]);
    } finally {
      await t.app.close();
    }
  });
});
