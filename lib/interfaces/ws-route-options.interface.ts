import type { IncomingMessage } from 'node:http';
import type { PerMessageDeflateOptions } from 'ws';
import type {
  HandshakeGuard,
  OriginPolicy,
  RateLimitOptions,
  RefusalMode,
} from './handshake-options.interface.js';
import type { HeartbeatOptions } from './heartbeat-options.interface.js';
import type { RecoveryOptions } from '../recovery/recovery-options.js';

/**
 * Options of one `@WsRoute`. Every field overrides the module-wide value of the same name,
 * in the spirit of uWebSockets.js `app.ws(pattern, behavior)`: one object describes an endpoint.
 */
export interface WsRouteOptions {
  /** Largest accepted message in bytes; a larger one closes the connection with 1009. */
  maxPayload?: number;
  /** Heartbeat for this route, or `false` to disable it here. */
  heartbeat?: Partial<HeartbeatOptions> | false;
  /** Per-message deflate (RFC 7692) for this route. Off by default. */
  perMessageDeflate?: boolean | PerMessageDeflateOptions;
  /**
   * Subprotocols this route speaks, most preferred first. The server picks its most preferred
   * protocol that the client offered; if none matches, the connection opens without one.
   */
  subprotocols?: readonly string[];
  /**
   * Picks the subprotocol from those the client offered (in the client's order). Return the
   * chosen one, or `false` to open without a subprotocol. Takes precedence over `subprotocols`.
   */
  selectProtocol?: (offered: readonly string[], request: IncomingMessage) => string | false;
  /**
   * Refuse the upgrade with 400 when no subprotocol could be agreed (none offered, or none
   * acceptable), instead of opening without one. Default `false`.
   */
  requireProtocol?: boolean;
  /** Browser origins allowed to connect to this route; overrides the module's `origins`. */
  origins?: OriginPolicy;
  /**
   * Guards run at the upgrade, before the 101, after the origin check and the module's
   * `guards`, before the class's `@UseGuards()`.
   */
  guards?: HandshakeGuard[];
  /** How this route's refused upgrades are answered; overrides the module's `refuse`. */
  refuse?: RefusalMode;
  /** Most open connections on this route; more are refused with 503. Default: unlimited. */
  maxConnections?: number;
  /** Message rate limit per connection, or `false` for none; overrides the module's. */
  rateLimit?: RateLimitOptions | false;
  /** Outgoing bytes a connection may have queued; see the module option. */
  maxBufferedAmount?: number;
  /** Outgoing buffer level above which `volatile` messages skip a connection. */
  lowWatermark?: number;
  /** What to do with a connection over `maxBufferedAmount`. */
  slowConsumer?: 'close' | 'drop';
  /** Keep `conn.request` after `@OnOpen`; see the module option. */
  keepUpgradeRequest?: boolean;
  /** Bytes of received messages waiting for a busy handler; see the module option. */
  maxQueuedBytes?: number;
  /**
   * Keep this route's broadcasts for replay: every frame of a broadcast carries an `id`, and a
   * page that reconnects with `?lastEventId=<id>` gets what it missed after its `@OnOpen`,
   * then live traffic; or `{"event":"recovery","data":{"recovered":false,"reason":…}}` and no
   * replay at all. `true` for the defaults (two minutes, 1,000 broadcasts). One instance only
   * for now: with another broadcast transport the application does not start.
   */
  recovery?: RecoveryOptions | boolean;
}
