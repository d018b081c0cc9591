import {
  Inject,
  Injectable,
  Logger,
  type OnApplicationShutdown,
  type OnModuleInit,
} from '@nestjs/common';
import { BROADCAST_TRANSPORT, BroadcastService } from '../broadcast/broadcast.service.js';
import type { BroadcastTransport } from '../broadcast/broadcast-transport.interface.js';
import { MemoryBroadcastTransport } from '../broadcast/memory-broadcast.transport.js';
import { WsConnectionRegistry } from '../connection/ws-connection-registry.js';
import { FixedHistogram } from './fixed-histogram.js';
import type {
  TransportMetricsSnapshot,
  WsRouteMetricsSnapshot,
  WsRoutesMetricsSnapshot,
} from './metrics-snapshot.interface.js';
import { MetricsStore } from './metrics-store.js';
import {
  prometheusMetrics,
  type CollectedMetric,
  type MetricsReaders,
} from './prometheus-metrics.js';
import type { RouteMetrics } from './route-metrics.js';

const EMPTY_HISTOGRAM = new FixedHistogram([]);

/**
 * The counts of the `metrics` option: per route pattern (connections, handshakes by status,
 * messages and bytes both ways, drops by reason, closes, handler errors and durations), the
 * broadcasts' recipients and the transport. Inject it to read them with
 * {@link WsRoutesMetrics.snapshot}; with `metrics: { registry }` they are in that prom-client
 * registry too, read at each scrape.
 */
@Injectable()
export class WsRoutesMetrics implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger('WsRoutes');
  private readonly readers: MetricsReaders;
  private registered: CollectedMetric[] = [];

  /** @internal */
  constructor(
    private readonly store: MetricsStore,
    connections: WsConnectionRegistry,
    broadcast: BroadcastService,
    @Inject(BROADCAST_TRANSPORT) transport: BroadcastTransport,
  ) {
    this.readers = {
      connectionsOpen: (pattern) => connections.byRoute(pattern).size,
      transport:
        transport instanceof MemoryBroadcastTransport
          ? undefined
          : {
              up: () => broadcast.transportReady,
              publishFailures: () => broadcast.publishFailures,
              stats: () => transport.stats,
            },
    };
  }

  /** Whether anything is counted (the `metrics` option; default `false`). */
  get enabled(): boolean {
    return this.store.enabled;
  }

  /** Every count since start-up, as plain data (JSON-ready). */
  snapshot(): WsRoutesMetricsSnapshot {
    const routes: Record<string, WsRouteMetricsSnapshot> = {};
    for (const route of this.store.routes.values())
      routes[route.pattern] = this.routeSnapshot(route);
    return {
      enabled: this.store.enabled,
      routes,
      unmatchedHandshakes: Object.fromEntries(this.store.unmatched),
      broadcastRecipients: (this.store.broadcastRecipients ?? EMPTY_HISTOGRAM).snapshot(),
      transport: this.store.enabled ? this.transportSnapshot() : undefined,
    };
  }

  /** Registers the metrics in the configured registry; a name already taken stops the start. */
  onModuleInit(): void {
    const config = this.store.config;
    const registry = config?.registry;
    if (!config || !registry) return;
    for (const metric of prometheusMetrics(config.prefix, this.store, this.readers)) {
      const existing = registry.getSingleMetric(metric.name);
      if (existing !== undefined && existing !== metric) {
        this.onApplicationShutdown();
        throw new Error(
          `WsRoutesModule: option metrics.registry already has a metric named ${metric.name} ` +
            '(another application in this process, or a metric of your own?): give this one ' +
            'a registry of its own or a different metrics.prefix',
        );
      }
      registry.registerMetric(metric);
      this.registered.push(metric);
    }
  }

  /**
   * Takes the metrics out of the registry, so that an application started again in the same
   * process (tests, hot reload) can register them anew.
   */
  onApplicationShutdown(): void {
    const registry = this.store.config?.registry;
    if (!registry) return;
    for (const metric of this.registered) {
      try {
        if (registry.getSingleMetric(metric.name) === metric)
          registry.removeSingleMetric(metric.name);
      } catch (error) {
        this.logger.warn(
          `Could not remove metric ${metric.name} from the registry: ${String(error)}`,
        );
      }
    }
    this.registered = [];
  }

  private routeSnapshot(route: RouteMetrics): WsRouteMetricsSnapshot {
    return {
      connectionsOpen: this.readers.connectionsOpen(route.pattern),
      handshakes: Object.fromEntries(route.handshakes),
      messagesReceived: route.messagesReceived,
      bytesReceived: route.bytesReceived,
      messagesSent: route.messagesSent,
      bytesSent: route.bytesSent,
      messagesDropped: {
        rateLimit: route.droppedRateLimit,
        slowConsumer: route.droppedSlowConsumer,
        volatile: route.droppedVolatile,
      },
      slowConsumerCloses: route.slowConsumerCloses,
      rateLimitCloses: route.rateLimitCloses,
      handlerErrors: route.handlerErrors,
      handlerDuration: route.handlerDuration.snapshot(),
    };
  }

  private transportSnapshot(): TransportMetricsSnapshot | undefined {
    const { transport } = this.readers;
    if (!transport) return undefined;
    const stats = transport.stats();
    const numberOf = (value: unknown) => (typeof value === 'number' ? value : undefined);
    return {
      up: transport.up(),
      publishFailures: transport.publishFailures(),
      published: numberOf(stats?.published),
      received: numberOf(stats?.received),
      outages: numberOf(stats?.outages),
      instances: numberOf(stats?.instances),
    };
  }
}
