import { Injectable } from '@nestjs/common';
import { HealthIndicatorService, type HealthIndicatorResult } from '@nestjs/terminus';
import { BroadcastService } from '../broadcast/broadcast.service.js';
import { WsRoutesGateway, type WsRoutesStatus } from '../ws-routes.gateway.js';

/** Options of {@link WsRoutesHealthIndicator.isHealthy}. */
export interface WsRoutesHealthOptions {
  /**
   * Report down once this share of `maxConnections` is taken (open connections and handshakes
   * in progress), so a load balancer sends new clients elsewhere before upgrades get 503.
   * Default `1`: down only when the process is full.
   */
  connectionsThreshold?: number;
}

/** What the indicator reports under its key, besides `status` (and `message` when down). */
export interface WsRoutesHealthDetails extends Omit<WsRoutesStatus, 'phase'> {
  /** `false` while the broadcast transport does not reach the other instances (Redis down). */
  transportReady: boolean;
  /** A shutdown began: draining (`drainDelay`) or closing. */
  shuttingDown: boolean;
}

/**
 * A `@nestjs/terminus` health indicator for the WebSocket side: down while a shutdown drains
 * or closes, while the broadcast transport does not reach the other instances (Redis
 * unreachable, subscriptions not restored yet), or when the connection limit is reached.
 * Made for a readiness probe: a liveness probe that fails restarts the pod, and every
 * connection with it.
 *
 * ```ts
 * @Module({
 *   imports: [TerminusModule],
 *   controllers: [HealthController],
 *   providers: [WsRoutesHealthIndicator],
 * })
 * export class HealthModule {}
 *
 * @Get('ready') @HealthCheck()
 * ready() {
 *   return this.health.check([() => this.ws.isHealthy('websocket')]);
 * }
 * ```
 */
@Injectable()
export class WsRoutesHealthIndicator {
  constructor(
    private readonly indicators: HealthIndicatorService,
    private readonly gateway: WsRoutesGateway,
    private readonly broadcast: BroadcastService,
  ) {}

  isHealthy<const Key extends string = 'websocket'>(
    key: Key = 'websocket' as Key,
    options: WsRoutesHealthOptions = {},
  ): HealthIndicatorResult<Key> {
    const threshold = options.connectionsThreshold ?? 1;
    if (!(typeof threshold === 'number' && threshold > 0 && threshold <= 1)) {
      throw new RangeError(
        `WsRoutesHealthIndicator: connectionsThreshold must be in (0, 1], got ${String(threshold)}`,
      );
    }
    const { phase, ...status } = this.gateway.status();
    const details: WsRoutesHealthDetails = {
      ...status,
      transportReady: this.broadcast.transportReady,
      shuttingDown: phase !== 'serving',
    };
    const taken = status.connections + status.handshakes;
    const problem = details.shuttingDown
      ? `shutting down (${phase})`
      : !details.transportReady
        ? 'the broadcast transport does not reach the other instances'
        : taken >= status.maxConnections * threshold
          ? `${taken} of ${status.maxConnections} connections taken`
          : undefined;
    const session = this.indicators.check(key);
    return problem ? session.down({ ...details, message: problem }) : session.up({ ...details });
  }
}
