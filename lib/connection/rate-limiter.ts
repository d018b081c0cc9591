import type { RateLimitOptions } from '../interfaces/handshake-options.interface.js';
import type { WsConnection } from './ws-connection.js';

/**
 * A token bucket per connection: `messages` tokens, refilled continuously over `per` ms, one
 * taken per message. The state is two numbers on the connection, updated only when a message
 * arrives: no timer per socket.
 */
export class RateLimiter {
  readonly capacity: number;
  private readonly refillPerMs: number;

  constructor(readonly options: RateLimitOptions) {
    if (!(options.messages > 0 && options.per > 0)) {
      throw new Error(`rateLimit needs messages > 0 and per > 0, got ${JSON.stringify(options)}`);
    }
    this.capacity = options.messages;
    this.refillPerMs = options.messages / options.per;
  }

  /** Takes a token for this message; `false` when the connection is over its limit. */
  take(conn: WsConnection, now = Date.now()): boolean {
    const tokens =
      conn.tokens < 0
        ? this.capacity // first message: a full bucket
        : Math.min(this.capacity, conn.tokens + (now - conn.tokensAt) * this.refillPerMs);
    conn.tokensAt = now;
    if (tokens < 1) {
      conn.tokens = tokens;
      return false;
    }
    conn.tokens = tokens - 1;
    return true;
  }
}
