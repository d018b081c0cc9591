import type { IncomingMessage } from 'node:http';
import type { PerMessageDeflateOptions } from 'ws';
import type { HeartbeatOptions } from './heartbeat-options.interface.js';

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
}
