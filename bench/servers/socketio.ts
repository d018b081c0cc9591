/**
 * A Socket.IO gateway (`@nestjs/platform-socket.io`, `IoAdapter`), WebSocket transport only
 * (the load clients skip long-polling). Broadcast: `server.emit('tick', obj)`, which Socket.IO
 * encodes once per broadcast. Echo: `@SubscribeMessage('echo')` returning `{ event, data }`,
 * which the adapter emits back as an `echo` event.
 */
import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { IoAdapter } from '@nestjs/platform-socket.io';
import {
  MessageBody,
  SubscribeMessage,
  WebSocketGateway,
  WebSocketServer,
} from '@nestjs/websockets';
import type { AddressInfo } from 'node:net';
import type { Server } from 'socket.io';
import { CountingLogger } from './logger.js';
import type { BenchServer } from './types.js';
import { packageVersion } from './versions.js';

@WebSocketGateway({ transports: ['websocket'] })
class IoGateway {
  @WebSocketServer() server!: Server;

  @SubscribeMessage('echo')
  echo(@MessageBody() data: string) {
    return { event: 'echo', data };
  }
}

@Module({ providers: [IoGateway] })
class IoModule {}

export async function startSocketIo(): Promise<BenchServer> {
  const logger = new CountingLogger();
  const app = await NestFactory.create(IoModule, { logger });
  app.useWebSocketAdapter(new IoAdapter(app));
  await app.listen(0, '127.0.0.1');
  const gateway = app.get(IoGateway);
  return {
    port: (app.getHttpServer().address() as AddressInfo).port,
    path: '/socket.io/',
    client: 'socketio',
    info: {
      'socket.io': packageVersion('socket.io'),
      'engine.io': packageVersion('engine.io', 'socket.io'),
      'ws (engine.io)': packageVersion('ws', 'engine.io'),
    },
    connections: () => gateway.server.engine.clientsCount,
    broadcast: (message) => {
      gateway.server.emit('tick', message);
    },
    logged: () => logger.counts(),
    close: () => app.close(),
  };
}
