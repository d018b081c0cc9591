import type { IncomingMessage } from 'node:http';
import type { WsRouteOptions } from '../interfaces/ws-route-options.interface.js';

/** `ws`'s `handleProtocols` callback. */
export type ProtocolSelector = (offered: Set<string>, request: IncomingMessage) => string | false;

/**
 * Builds a route's subprotocol choice. With `subprotocols`, the server's most preferred
 * protocol among those offered wins (RFC 6455 §4.2.2 leaves the choice to the server); none
 * acceptable means no protocol, which the client may then refuse. `undefined` when the route
 * speaks no subprotocol, so `ws` answers without one.
 */
export function createProtocolSelector(options: WsRouteOptions): ProtocolSelector | undefined {
  const { selectProtocol, subprotocols } = options;
  if (selectProtocol) return (offered, request) => selectProtocol([...offered], request);
  if (!subprotocols?.length) return undefined;
  return (offered) => subprotocols.find((protocol) => offered.has(protocol)) ?? false;
}
