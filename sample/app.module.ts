import { Module, type DynamicModule } from '@nestjs/common';
import { WsRoutesModule } from '../lib/index.js';
import { RedisBroadcastTransport } from '../lib/redis/index.js';
import { ChatGuard } from './chat.guard.js';
import { ChatRoute } from './chat.route.js';
import { DemandController } from './demand.controller.js';
import { DemandRoute } from './demand.route.js';
import { DemandService, DEMAND_STORE } from './demand.service.js';
import { MemoryDemandStore, RedisDemandStore } from './demand.store.js';
import { PagesController } from './pages.controller.js';
import type { SampleConfig } from './sample-config.js';

/**
 * Root module of the sample: the live board (`/` and the `/demand` route) and the chat
 * (`/chat` and the `/chat/:room` route). `WsRoutesModule` is imported once, here, and serves
 * every `@WsRoute` provider of the application. Alone, the defaults suit one process
 * (same-origin browsers only, heartbeat, 1 MiB messages, in-memory broadcasts and history);
 * with a Redis, broadcasts and the board's history go through it, so several instances serve
 * the same pages.
 */
@Module({})
export class AppModule {
  static register(config: SampleConfig): DynamicModule {
    const { redisUrl, keyPrefix } = config;
    return {
      module: AppModule,
      imports: [
        // A factory: each application gets its own transport (one per app), made at start-up.
        WsRoutesModule.forRootAsync({
          useFactory: () =>
            redisUrl
              ? { broadcastTransport: new RedisBroadcastTransport({ url: redisUrl, keyPrefix }) }
              : {},
        }),
      ],
      controllers: [PagesController, DemandController],
      // A route class is an ordinary provider: listing it here is what makes it an endpoint.
      providers: [
        DemandRoute,
        DemandService,
        ChatRoute,
        ChatGuard,
        {
          provide: DEMAND_STORE,
          useFactory: () =>
            redisUrl ? new RedisDemandStore(redisUrl, keyPrefix) : new MemoryDemandStore(),
        },
      ],
    };
  }
}
