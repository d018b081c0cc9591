/**
 * nestjs-ws-routes (lib/) as one instance of a scaled-out app: `RedisBroadcastTransport`
 * (`nestjs-ws-routes/redis`) on the bench's redis-server, or the default in-memory transport
 * when no URL is given (the single-instance variant). Route `/bench`; each connection joins
 * the rooms the orchestrator planned for it when it opens (`@OnOpen`). Broadcasts:
 * `broadcast.send(obj)` (everyone) and `broadcast.to(room).send(obj)`. The bench options of
 * ours.ts: no rate limit, connection limits 50,000, heartbeat off.
 */
import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { AddressInfo } from 'node:net';
import {
  BroadcastService,
  ConnectedSocket,
  OnOpen,
  WsConnection,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import { RedisBroadcastTransport } from '../../lib/redis/index.js';
import type { InstanceArgs, RedisBenchServer } from '../redis-instance.js';
import { CountingLogger } from './logger.js';
import { BENCH_OPTIONS } from './ours.js';
import { RoomPlan } from './room-plan.js';
import { packageVersion } from './versions.js';

@WsRoute('/bench')
class RedisBenchRoute {
  constructor(private readonly plan: RoomPlan) {}

  @OnOpen()
  open(@ConnectedSocket() conn: WsConnection) {
    const rooms = this.plan.take();
    if (rooms.length) conn.join(...rooms);
  }
}

/** Starts one instance; on Redis when `args.redisUrl` is set. */
export async function startOursRedis(args: InstanceArgs): Promise<RedisBenchServer> {
  const logger = new CountingLogger();
  const transport = args.redisUrl
    ? new RedisBroadcastTransport({ url: args.redisUrl, keyPrefix: args.keyPrefix, logger })
    : undefined;

  @Module({
    imports: [
      WsRoutesModule.forRoot({
        ...BENCH_OPTIONS,
        ...(transport ? { broadcastTransport: transport } : {}),
      }),
    ],
    providers: [RoomPlan, RedisBenchRoute],
  })
  class RedisBenchModule {}

  const app = await NestFactory.create(RedisBenchModule, { logger });
  await app.listen(0, '127.0.0.1');
  const broadcast = app.get(BroadcastService);
  const registry = app.get(WsConnectionRegistry);
  const plan = app.get(RoomPlan);
  return {
    port: (app.getHttpServer().address() as AddressInfo).port,
    client: 'ws',
    path: '/bench',
    info: {
      'nestjs-ws-routes': 'lib/ (this checkout)',
      transport: transport ? 'RedisBroadcastTransport' : 'in-memory (one instance)',
      redis: packageVersion('redis'),
      ws: packageVersion('ws'),
    },
    connections: () => registry.size,
    plan: (rooms) => plan.set(rooms),
    planned: () => plan.taken,
    everyone: (message) => {
      broadcast.send(message);
    },
    room: (room, message) => {
      broadcast.to(room).send(message);
    },
    transport: () => {
      if (!transport) return { ready: true, received: 0 };
      const stats = transport.stats;
      return {
        ready: transport.isReady(),
        received: stats.received,
        // Frames of this instance's own publishes, back on channels it is subscribed to.
        echoes: stats.received - stats.delivered - stats.deduplicated,
        details: { ...stats },
      };
    },
    logged: () => logger.counts(),
    close: () => app.close(),
  };
}
