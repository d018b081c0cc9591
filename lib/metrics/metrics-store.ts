import { Inject, Injectable } from '@nestjs/common';
import type { LocalDelivery } from '../broadcast/local-delivery.js';
import type { WsRoutesModuleOptions } from '../interfaces/ws-routes-module-options.interface.js';
import { WS_ROUTES_OPTIONS } from '../ws-routes.module-definition.js';
import { FixedHistogram } from './fixed-histogram.js';
import { resolveMetricsConfig, type MetricsConfig } from './metrics-config.js';
import { countStatus, RouteMetrics } from './route-metrics.js';

/**
 * Where the counts live: one {@link RouteMetrics} per route, made when the gateway
 * activates the route, the handshakes no route matched, and the broadcasts' recipients. The
 * places that count hold their route's object (or `undefined`, metrics off) from start-up on;
 * `WsRoutesMetrics` reads everything here when asked.
 */
@Injectable()
export class MetricsStore {
  readonly config: MetricsConfig | undefined;
  readonly routes = new Map<string, RouteMetrics>();
  /** Upgrade requests no route claimed (404) or whose target could not be read (400). */
  readonly unmatched = new Map<number, number>();
  /** Connections of this instance each broadcast message was written to. */
  readonly broadcastRecipients: FixedHistogram | undefined;

  constructor(@Inject(WS_ROUTES_OPTIONS) options: WsRoutesModuleOptions) {
    this.config = resolveMetricsConfig(options.metrics);
    this.broadcastRecipients = this.config
      ? new FixedHistogram(this.config.broadcastRecipientsBuckets)
      : undefined;
  }

  get enabled(): boolean {
    return this.config !== undefined;
  }

  /** The counts of a route, made once; `undefined` when metrics are off. */
  forRoute(pattern: string): RouteMetrics | undefined {
    if (!this.config) return undefined;
    let metrics = this.routes.get(pattern);
    if (!metrics)
      this.routes.set(
        pattern,
        (metrics = new RouteMetrics(pattern, this.config.handlerDurationBuckets)),
      );
    return metrics;
  }

  /** An upgrade request that no route matched was answered with `status`. */
  readonly unmatchedHandshake = (status: number): void => {
    if (this.config) countStatus(this.unmatched, status);
  };

  /**
   * The local delivery, counting the recipients of each message (not of joins, leaves and
   * disconnects): once per broadcast, whatever its number of recipients.
   */
  countDeliveries(local: LocalDelivery): LocalDelivery {
    const histogram = this.broadcastRecipients;
    if (!histogram) return local;
    return {
      deliver: (packet, byRoute) => {
        const delivered = local.deliver(packet, byRoute);
        if (!packet.action) histogram.observe(delivered);
        return delivered;
      },
      count: (packet) => local.count(packet),
    };
  }
}
