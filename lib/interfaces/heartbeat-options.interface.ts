/**
 * Server-side liveness check. Every `interval` ms each connection is pinged; a connection
 * that has shown no sign of life (pong, message, ping) `timeout` ms later is terminated and
 * its `@OnClose` runs with code 1006.
 */
export interface HeartbeatOptions {
  /** Milliseconds between pings. Default 30 000. */
  interval: number;
  /** Milliseconds a peer has to answer a ping; at most `interval` (equal: each ping judges the previous one, as `ws`'s own example does). Default 10 000. */
  timeout: number;
}
