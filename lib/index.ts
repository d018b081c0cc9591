// Decorators write metadata when modules load; Nest's own packages load the polyfill first too.
import 'reflect-metadata';
export * from './ws-routes.constants.js';
export * from './interfaces/index.js';
export * from './decorators/index.js';
export { UpgradeHub, type UpgradeHandler } from './handshake/upgrade-hub.js';
export {
  HandshakeResponse,
  isWsHandshake,
  type HandshakeRequest,
} from './handshake/handshake-guards.js';
export { OriginGuard, ORIGIN_REFUSED_MESSAGE, isSameOrigin } from './handshake/origin.guard.js';
export {
  WsConnection,
  type WsSendOptions,
  type WsQueryParams,
} from './connection/ws-connection.js';
export { WsConnectionRegistry } from './connection/ws-connection-registry.js';
export { HEARTBEAT_TIMEOUT_REASON } from './connection/heartbeat.js';
export type { OutboundPolicy } from './connection/outbound.js';
export { WsRoutesExceptionFilter } from './handlers/ws-routes-exception-filter.js';
export * from './broadcast/index.js';
export { WsRoutesGateway } from './ws-routes.gateway.js';
export { WsRoutesAdapter } from './ws-routes.adapter.js';
export { WsRoutesModule } from './ws-routes.module.js';
export { WS_ROUTES_OPTIONS } from './ws-routes.module-definition.js';
// Re-exported so a route needs one import: these are the decorators Nest's gateways use.
export { ConnectedSocket, MessageBody, WsException } from '@nestjs/websockets';
