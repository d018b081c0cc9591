/**
 * nestjs-ws-routes, this repository's library, as it is in lib/ (compiled next to the bench).
 *
 * Broadcast: `broadcast.toRoute(BenchRoute).send(obj)`; rooms: `@OnMessage('join')` is
 * `conn.join(room)`, a room broadcast `broadcast.to(room).send(obj)`. With `--metrics` (ours-metrics), every
 * count on, in a prom-client registry scraped every 5 s. Echo: `@OnMessage('echo')` returning
 * `{ event, data }`, bare or with one guard, one pipe and one interceptor on the method (a
 * class-level `@UseGuards` would run once at the upgrade, not per message). The defaults that
 * would throttle a benchmark are lifted: 256 connections per IP, 100 messages/s per connection.
 *
 * Soak: a `/soak` route whose clients send `{"event":"join","data":"room-7"}`; a ticker
 * broadcasts to rooms and to the route.
 */
import 'reflect-metadata';
import { Module, UseGuards, UseInterceptors, UsePipes, type Type } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { AddressInfo } from 'node:net';
import { Registry } from 'prom-client';
import {
  BroadcastService,
  ConnectedSocket,
  MessageBody,
  OnMessage,
  WsConnection,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';
import { PassGuard, PassInterceptor, PassPipe } from './enhancers.js';
import { CountingLogger } from './logger.js';
import type { BenchServer, ServerArgs, SoakTickOptions } from './types.js';
import { packageVersion } from './versions.js';

/** `join` messages handled by the bench routes (the orchestrator waits for all of them). */
let joins = 0;

@WsRoute('/bench')
class BareRoute {
  @OnMessage('echo')
  echo(@MessageBody() data: string) {
    return { event: 'echo', data };
  }

  @OnMessage('join')
  join(@MessageBody() room: string, @ConnectedSocket() conn: WsConnection) {
    conn.join(room);
    joins++;
  }
}

@WsRoute('/bench')
class EnhancedRoute {
  @UseGuards(PassGuard)
  @UsePipes(PassPipe)
  @UseInterceptors(PassInterceptor)
  @OnMessage('echo')
  echo(@MessageBody() data: string) {
    return { event: 'echo', data };
  }

  @OnMessage('join')
  join(@MessageBody() room: string, @ConnectedSocket() conn: WsConnection) {
    conn.join(room);
    joins++;
  }
}

@WsRoute('/soak')
class SoakRoute {
  @OnMessage('join')
  join(@MessageBody() room: string, @ConnectedSocket() conn: WsConnection) {
    conn.join(room);
  }
}

/** The options of the issue: nothing that would throttle the load. */
export const BENCH_OPTIONS = {
  rateLimit: false,
  maxConnections: 50_000,
  maxConnectionsPerIp: 50_000,
  heartbeat: false,
} as const;

function appModule(route: Type, heartbeat: boolean, registry: Registry | undefined): Type {
  @Module({
    imports: [
      WsRoutesModule.forRoot({
        ...BENCH_OPTIONS,
        // The soak runs with heartbeats, to churn through their bookkeeping too.
        heartbeat: heartbeat ? { interval: 10_000, timeout: 5_000 } : false,
        metrics: registry ? { registry } : false,
      }),
    ],
    providers: [route],
  })
  class BenchModule {}
  return BenchModule;
}

export async function startOurs(args: ServerArgs): Promise<BenchServer> {
  const logger = new CountingLogger();
  const route = args.soak ? SoakRoute : args.enhanced ? EnhancedRoute : BareRoute;
  // ours-metrics: every count on, read by a scrape every 5 s as a (busy) Prometheus would.
  const metrics = args.metrics ? new Registry() : undefined;
  const app = await NestFactory.create(appModule(route, args.heartbeat, metrics), { logger });
  await app.listen(0, '127.0.0.1');
  const scraper = metrics ? setInterval(() => void metrics.metrics(), 5_000) : undefined;
  scraper?.unref();
  const broadcast = app.get(BroadcastService);
  const registry = app.get(WsConnectionRegistry);
  let ticker: NodeJS.Timeout | undefined;
  return {
    port: (app.getHttpServer().address() as AddressInfo).port,
    path: args.soak ? '/soak' : '/bench',
    client: 'ws',
    info: {
      'nestjs-ws-routes': 'lib/ (this checkout)',
      ws: packageVersion('ws'),
      ...(metrics ? { metrics: `on, prom-client ${packageVersion('prom-client')}` } : {}),
    },
    connections: () => registry.size,
    broadcast: (message) => {
      broadcast.toRoute(route).send(message);
    },
    logged: () => logger.counts(),
    rooms: {
      joins: () => joins,
      broadcast: (room, message) => {
        broadcast.to(room).send(message);
      },
    },
    close: () => {
      clearInterval(scraper);
      return app.close();
    },
    soak: {
      start: (options: SoakTickOptions) => {
        let tick = 0;
        ticker = setInterval(() => {
          tick++;
          for (let i = 0; i < options.roomsPerTick; i++) {
            const room = `room-${Math.floor(Math.random() * options.rooms)}`;
            broadcast.to(room).send({ event: 'room', data: { room, tick } });
          }
          if (tick % options.routeEvery === 0)
            broadcast.toRoute(SoakRoute).send({ event: 'all', data: { tick } });
        }, options.tickMs);
      },
      stop: () => clearInterval(ticker),
      stats: () => ({ connections: registry.size, rooms: registry.roomCount }),
    },
  };
}
