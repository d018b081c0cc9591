import { Module, type DynamicModule } from '@nestjs/common';
import { DiscoveryModule } from '@nestjs/core';
import { BROADCAST_TRANSPORT, BroadcastService } from './broadcast/broadcast.service.js';
import { MemoryBroadcastTransport } from './broadcast/memory-broadcast.transport.js';
import { WsConnectionRegistry } from './connection/ws-connection-registry.js';
import { RecoveryHub } from './recovery/recovery-hub.js';
import { WsHandlerFactory } from './handlers/ws-handler-factory.js';
import { MetricsStore } from './metrics/metrics-store.js';
import { WsRoutesMetrics } from './metrics/ws-routes-metrics.js';
import type { WsRoutesModuleOptions } from './interfaces/ws-routes-module-options.interface.js';
import { WsRouteExplorer } from './routing/ws-route-explorer.js';
import { WsRoutesGateway } from './ws-routes.gateway.js';
import {
  WsRoutesConfigurableModule,
  WS_ROUTES_OPTIONS,
  type WS_ROUTES_OPTIONS_TYPE,
} from './ws-routes.module-definition.js';

/**
 * Serves every `@WsRoute` class of the application. Import it once, in the root module:
 * `WsRoutesModule.forRoot({ ... })` or `WsRoutesModule.forRootAsync({ imports, inject,
 * useFactory })`. It is global and exports {@link BroadcastService},
 * {@link WsConnectionRegistry}, {@link WsRoutesGateway} and {@link WsRoutesMetrics}.
 */
@Module({
  imports: [DiscoveryModule],
  providers: [
    WsConnectionRegistry,
    WsRouteExplorer,
    WsHandlerFactory,
    WsRoutesGateway,
    BroadcastService,
    RecoveryHub,
    MetricsStore,
    WsRoutesMetrics,
    {
      provide: BROADCAST_TRANSPORT,
      useFactory: (options: WsRoutesModuleOptions) =>
        options.broadcastTransport ?? new MemoryBroadcastTransport(),
      inject: [WS_ROUTES_OPTIONS],
    },
  ],
  exports: [BroadcastService, WsConnectionRegistry, WsRoutesGateway, WsRoutesMetrics],
})
export class WsRoutesModule extends WsRoutesConfigurableModule {
  /** Serves the routes with these options; every option is optional. */
  static override forRoot(options: typeof WS_ROUTES_OPTIONS_TYPE = {}): DynamicModule {
    return super.forRoot(options);
  }
}
