import type { IncomingMessage } from 'node:http';
import type { WsRouteOptions } from '../interfaces/ws-route-options.interface.js';

/** A route's subprotocol choice among those offered, in the client's order; `false`: none. */
export type ProtocolSelector = (
  offered: readonly string[],
  request: IncomingMessage,
) => string | false;

/** An RFC 7230 token, which RFC 6455 §4.1 requires of every subprotocol name. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * Builds a route's subprotocol choice. With `subprotocols`, the server's most preferred
 * protocol among those offered wins (RFC 6455 §4.2.2 leaves the choice to the server); none
 * acceptable means no protocol, which the client may then refuse. `undefined` when the route
 * names no subprotocol, so `ws` answers with the client's first offer, as it does by default.
 */
export function createProtocolSelector(options: WsRouteOptions): ProtocolSelector | undefined {
  const { selectProtocol, subprotocols } = options;
  if (selectProtocol) return selectProtocol;
  if (!subprotocols?.length) return undefined;
  return (offered) => subprotocols.find((protocol) => offered.includes(protocol)) ?? false;
}

/**
 * The subprotocols a client offered in `Sec-WebSocket-Protocol` (none: `[]`), or `undefined`
 * when the header is malformed (not a comma-separated list of distinct tokens), which `ws`
 * would answer with 400 as well.
 */
export function offeredProtocols(request: IncomingMessage): string[] | undefined {
  const header = request.headers['sec-websocket-protocol'];
  if (header === undefined) return [];
  const offered = header.split(',').map((protocol) => protocol.trim());
  if (offered.some((protocol) => !TOKEN.test(protocol))) return undefined;
  return new Set(offered).size === offered.length ? offered : undefined;
}

/**
 * Runs the route's choice (a user callback) and checks its answer: a protocol the client did
 * not offer (or anything that is not a string) would make every client fail the connection,
 * and could carry `\r\n` into the 101, so it throws, for a logged 500.
 */
export function chooseProtocol(
  select: ProtocolSelector,
  offered: readonly string[],
  request: IncomingMessage,
): string | false {
  if (offered.length === 0) return false;
  const chosen = select(offered, request);
  if (chosen === false) return false;
  if (typeof chosen !== 'string' || !offered.includes(chosen)) {
    throw new TypeError(
      `selectProtocol returned ${typeof chosen === 'string' ? JSON.stringify(chosen) : typeof chosen}, which the client did not offer`,
    );
  }
  return chosen;
}
