import type { PerMessageDeflateOptions } from 'ws';
import type { BroadcastTransport } from '../broadcast/broadcast-transport.interface.js';
import type { HeartbeatOptions } from './heartbeat-options.interface.js';

/** Options of `WsRoutesModule.forRoot()`; all optional, defaults in `WS_ROUTES_DEFAULTS`. */
export interface WsRoutesModuleOptions {
  /**
   * Serve the routes on their own port instead of the application's HTTP server. `0` picks a
   * free port (read it from `WsRoutesGateway.address()`).
   */
  port?: number;
  /** Host the separate `port` listens on. Default `'0.0.0.0'`. */
  host?: string;
  /** Largest accepted message in bytes. Default 1 MiB; larger messages close with 1009. */
  maxPayload?: number;
  /** Heartbeat for every route, or `false` to disable. Default `{ interval: 30000, timeout: 10000 }`. */
  heartbeat?: Partial<HeartbeatOptions> | false;
  /** Per-message deflate for every route. Default `false`. */
  perMessageDeflate?: boolean | PerMessageDeflateOptions;
  /** Milliseconds `app.close()` waits for clients to answer the 1001 close. Default 5000. */
  shutdownTimeout?: number;
  /**
   * Where broadcasts travel. Default: in memory (this process only). Pass a Redis transport
   * to reach the connections of every instance.
   */
  broadcastTransport?: BroadcastTransport;
}
