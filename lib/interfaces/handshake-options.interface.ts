import type { CanActivate, Type } from '@nestjs/common';
import type { IncomingMessage } from 'node:http';

/**
 * Which browser origins may open a connection:
 * - omitted: same origin only (the `Origin` header names the request's `Host`);
 * - `'*'`: any origin;
 * - a list of exact origins (`'https://app.example.com'`) and/or RegExps tested on the origin;
 * - a function, which may be async.
 *
 * Requests without an `Origin` header (servers, CLI tools, mobile apps) are always allowed:
 * the check exists to stop other web pages from using a visitor's cookies (cross-site
 * WebSocket hijacking), and only browsers send `Origin`.
 */
export type OriginPolicy =
  | '*'
  | readonly (string | RegExp)[]
  | ((origin: string, request: IncomingMessage) => boolean | Promise<boolean>);

/** A guard that runs at the upgrade: an instance, or a class Nest instantiates with injection. */
export type HandshakeGuard = CanActivate | Type<CanActivate>;

/** Per-connection message rate limit (a token bucket of `messages` tokens refilled over `per` ms). */
export interface RateLimitOptions {
  /** Messages allowed per window; also the burst size. */
  messages: number;
  /** Window in milliseconds. */
  per: number;
  /**
   * What happens to a message over the limit: `'close'` closes the connection with 1008
   * (default); `'drop'` discards the message and counts it in `conn.droppedMessages`.
   */
  action?: 'close' | 'drop';
}

/**
 * How a refused upgrade is answered (`refuse` option):
 * - `'http'` (default): an HTTP status and a JSON body, before any 101. Scripts in a browser
 *   cannot read it: the page gets `onerror` and close 1006, whatever the reason.
 * - `'close'`: the handshake is completed and closed at once with `4000 + status` (4401,
 *   4403, 4429, 4503…) and the refusal's message as the close reason, which a page reads in
 *   `onclose`. Nothing is registered and no `@OnOpen` or `@OnClose` runs. Requests that cannot
 *   get a 101 (malformed, wrong version, unknown path) keep their HTTP status.
 */
export type RefusalMode = 'http' | 'close';
