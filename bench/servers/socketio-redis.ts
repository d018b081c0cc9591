/**
 * The anchor users would pick for a scaled-out NestJS app with Socket.IO: a gateway on
 * `@nestjs/platform-socket.io` whose `IoAdapter` installs `@socket.io/redis-adapter`
 * (`createAdapter(pubClient, subClient)` with node-redis clients, as in Nest's docs), WebSocket
 * transport only. Each connection joins the rooms the orchestrator planned for it in
 * `handleConnection`. Broadcasts: `server.emit('tick', obj)` and `server.to(room).emit(...)`.
 */
import 'reflect-metadata';
import { Injectable, Module, type INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { IoAdapter } from '@nestjs/platform-socket.io';
import { WebSocketGateway, WebSocketServer, type OnGatewayConnection } from '@nestjs/websockets';
import { createAdapter } from '@socket.io/redis-adapter';
import type { AddressInfo } from 'node:net';
import { createClient } from 'redis';
import type { Server, ServerOptions, Socket } from 'socket.io';
import type { InstanceArgs, RedisBenchServer } from '../redis-instance.js';
import { CountingLogger } from './logger.js';
import { RoomPlan } from './room-plan.js';
import { packageVersion } from './versions.js';

/** Nest's documented way to put Socket.IO on Redis: an `IoAdapter` that installs the adapter. */
class RedisIoAdapter extends IoAdapter {
  constructor(
    app: INestApplicationContext,
    private readonly adapter: ReturnType<typeof createAdapter>,
  ) {
    super(app);
  }

  override createIOServer(port: number, options?: ServerOptions): Server {
    const server: Server = super.createIOServer(port, options);
    server.adapter(this.adapter);
    return server;
  }
}

@Injectable()
@WebSocketGateway({ transports: ['websocket'] })
class RedisIoGateway implements OnGatewayConnection {
  @WebSocketServer() server!: Server;

  constructor(private readonly plan: RoomPlan) {}

  handleConnection(client: Socket) {
    const rooms = this.plan.take();
    if (rooms.length) client.join(rooms);
  }
}

@Module({ providers: [RoomPlan, RedisIoGateway] })
class RedisIoModule {}

/** Starts one Socket.IO instance on the Redis adapter (`args.redisUrl` is required). */
export async function startSocketIoRedis(args: InstanceArgs): Promise<RedisBenchServer> {
  if (!args.redisUrl) throw new Error('socketio-redis needs --redis-url');
  const logger = new CountingLogger();
  const pubClient = createClient({ url: args.redisUrl });
  const subClient = pubClient.duplicate();
  pubClient.on('error', (error: Error) => logger.record('error', `redis pub: ${error.message}`));
  subClient.on('error', (error: Error) => logger.record('error', `redis sub: ${error.message}`));
  await Promise.all([pubClient.connect(), subClient.connect()]);

  const app = await NestFactory.create(RedisIoModule, { logger });
  app.useWebSocketAdapter(
    new RedisIoAdapter(app, createAdapter(pubClient, subClient, { key: args.keyPrefix })),
  );
  await app.listen(0, '127.0.0.1');
  const gateway = app.get(RedisIoGateway);
  const plan = app.get(RoomPlan);
  const io = gateway.server;
  // Frames from Redis: the adapter's listener calls its `onmessage` for every one of them.
  const adapter = io.of('/').adapter as unknown as {
    onmessage(pattern: unknown, channel: unknown, message: unknown): void;
  };
  let received = 0;
  const onmessage = adapter.onmessage.bind(adapter);
  adapter.onmessage = (pattern, channel, message) => {
    received++;
    onmessage(pattern, channel, message);
  };
  return {
    port: (app.getHttpServer().address() as AddressInfo).port,
    client: 'socketio',
    path: '/socket.io/',
    info: {
      'socket.io': packageVersion('socket.io'),
      '@socket.io/redis-adapter': packageVersion('@socket.io/redis-adapter'),
      redis: packageVersion('redis'),
    },
    connections: () => io.engine.clientsCount,
    plan: (rooms) => plan.set(rooms),
    planned: () => plan.taken,
    everyone: (message) => {
      io.emit('tick', message);
    },
    room: (room, message) => {
      io.to(room).emit('tick', message);
    },
    transport: () => ({ ready: pubClient.isReady && subClient.isReady, received }),
    logged: () => logger.counts(),
    close: async () => {
      await app.close();
      await Promise.allSettled([pubClient.quit(), subClient.quit()]);
    },
  };
}
