/**
 * A classic Nest gateway on `@nestjs/platform-ws` (`WsAdapter`), on the app's HTTP server.
 *
 * Broadcast: what a gateway user writes, serialize once and loop over `server.clients` with
 * `client.send(data)` (no per-client stringify). Echo: `@SubscribeMessage('echo')` returning
 * `{ event, data }`, bare or with one guard, one pipe and one interceptor on the method.
 */
import 'reflect-metadata';
import { Module, UseGuards, UseInterceptors, UsePipes } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { WsAdapter } from '@nestjs/platform-ws';
import {
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  WebSocketServer,
} from '@nestjs/websockets';
import type { AddressInfo } from 'node:net';
import type { WebSocketServer as WsServer } from 'ws';
import { PassGuard, PassInterceptor, PassPipe } from './enhancers.js';
import { CountingLogger } from './logger.js';
import type { BenchServer } from './types.js';
import { packageVersion } from './versions.js';

const OPEN = 1;

@WebSocketGateway({ path: '/bench' })
class BareGateway {
  @WebSocketServer() server!: WsServer;

  @SubscribeMessage('echo')
  echo(@MessageBody() data: string) {
    return { event: 'echo', data };
  }
}

@WebSocketGateway({ path: '/bench' })
class EnhancedGateway {
  @WebSocketServer() server!: WsServer;

  @UseGuards(PassGuard)
  @UsePipes(PassPipe)
  @UseInterceptors(PassInterceptor)
  @SubscribeMessage('echo')
  echo(@MessageBody() data: string) {
    return { event: 'echo', data };
  }
}

@Module({ providers: [BareGateway] })
class BareModule {}

@Module({ providers: [EnhancedGateway] })
class EnhancedModule {}

export async function startNestGateway(enhanced: boolean): Promise<BenchServer> {
  const logger = new CountingLogger();
  const app = await NestFactory.create(enhanced ? EnhancedModule : BareModule, { logger });
  app.useWebSocketAdapter(new WsAdapter(app));
  await app.listen(0, '127.0.0.1');
  const gateway = app.get<BareGateway | EnhancedGateway>(enhanced ? EnhancedGateway : BareGateway);
  return {
    port: (app.getHttpServer().address() as AddressInfo).port,
    path: '/bench',
    client: 'ws',
    info: {
      '@nestjs/platform-ws': packageVersion('@nestjs/platform-ws'),
      'ws (platform-ws)': packageVersion('ws', '@nestjs/platform-ws'),
    },
    connections: () => gateway.server.clients.size,
    broadcast: (message) => {
      const data = JSON.stringify(message);
      for (const client of gateway.server.clients)
        if (client.readyState === OPEN) client.send(data);
    },
    logged: () => logger.counts(),
    close: () => app.close(),
  };
}
