import { Module } from '@nestjs/common';
import { WsRoutesModule } from '../lib/index.js';
import { DemandController } from './demand.controller.js';
import { DemandRoute } from './demand.route.js';
import { DemandService } from './demand.service.js';

/**
 * Root module of the sample. `WsRoutesModule` is imported once, here, and serves every
 * `@WsRoute` provider of the application; the defaults (heartbeat, 1 MiB messages, in-memory
 * broadcasts) suit a single process.
 */
@Module({
  imports: [WsRoutesModule.forRoot({})],
  controllers: [DemandController],
  // A route class is an ordinary provider: listing it here is what makes it an endpoint.
  providers: [DemandRoute, DemandService],
})
export class AppModule {}
