import { Module } from '@nestjs/common';
import { WsRoutesModule } from '../lib/index.js';
import { ChatGuard } from './chat.guard.js';
import { ChatRoute } from './chat.route.js';
import { DemandController } from './demand.controller.js';
import { DemandRoute } from './demand.route.js';
import { DemandService } from './demand.service.js';
import { PagesController } from './pages.controller.js';

/**
 * Root module of the sample: the live board (`/` and the `/demand` route) and the chat
 * (`/chat` and the `/chat/:room` route). `WsRoutesModule` is imported once, here, and serves
 * every `@WsRoute` provider of the application; the defaults (same-origin browsers only,
 * heartbeat, 1 MiB messages, in-memory broadcasts) suit a single process.
 */
@Module({
  imports: [WsRoutesModule.forRoot()],
  controllers: [PagesController, DemandController],
  // A route class is an ordinary provider: listing it here is what makes it an endpoint.
  providers: [DemandRoute, DemandService, ChatRoute, ChatGuard],
})
export class AppModule {}
