// Decorators write metadata when modules load; Nest's own packages load the polyfill first too.
import 'reflect-metadata';

// The public door of the package: everything a user needs, by name. Metadata keys, injection
// tokens and plumbing (the upgrade hub, the executor, the write path) stay inside.

// Module, adapter and gateway
export { WsRoutesModule } from './ws-routes.module.js';
export { WsRoutesAdapter } from './ws-routes.adapter.js';
export { WsRoutesGateway, type WsRoutesPhase, type WsRoutesStatus } from './ws-routes.gateway.js';

// Constants
export {
  CloseCode,
  INTERNAL_ERROR_MESSAGE,
  SHUTDOWN_CLOSE_REASON,
  WS_ROUTES_DEFAULTS,
  type CloseCodeValue,
} from './ws-routes.constants.js';

// Options
export type { WsRoutesModuleOptions } from './interfaces/ws-routes-module-options.interface.js';
export type { WsRouteOptions } from './interfaces/ws-route-options.interface.js';
export type { HeartbeatOptions } from './interfaces/heartbeat-options.interface.js';
export type {
  MetricsRegistry,
  WsRoutesMetricsOptions,
} from './interfaces/metrics-options.interface.js';
export type {
  HandshakeGuard,
  OriginPolicy,
  RateLimitOptions,
  RefusalMode,
} from './interfaces/handshake-options.interface.js';

// Decorators
export { WsRoute } from './decorators/ws-route.decorator.js';
export {
  OnClose,
  OnDrain,
  OnError,
  OnMessage,
  OnOpen,
  OnPing,
  OnPong,
} from './decorators/ws-lifecycle.decorators.js';
export { WsHeaders, WsParam, WsQuery, WsRequest } from './decorators/ws-params.decorators.js';
// Re-exported so a route needs one import: these are the decorators Nest's gateways use.
export { ConnectedSocket, MessageBody, WsException } from '@nestjs/websockets';

// Handshake
export {
  HandshakeResponse,
  isWsHandshake,
  type HandshakeRequest,
} from './handshake/handshake-guards.js';
export { OriginGuard, ORIGIN_REFUSED_MESSAGE, isSameOrigin } from './handshake/origin.guard.js';

// Connections
export {
  WsConnection,
  type WsSendOptions,
  type WsQueryParams,
} from './connection/ws-connection.js';
export { WsConnectionRegistry } from './connection/ws-connection-registry.js';
export type { UserIdOf } from './connection/user-key.js';
export { HEARTBEAT_TIMEOUT_REASON } from './connection/heartbeat.js';

// Handlers
export { WsRoutesExceptionFilter } from './handlers/ws-routes-exception-filter.js';

// Broadcast
export {
  BroadcastService,
  BroadcastOperator,
  type BroadcastCount,
  type BroadcastCountOptions,
} from './broadcast/broadcast.service.js';
export {
  instanceOfConnection,
  type BroadcastAction,
  type BroadcastPacket,
} from './broadcast/broadcast-packet.interface.js';
export type {
  BroadcastTransport,
  MembershipKind,
  RemoteCount,
  TransportBinding,
  TransportStats,
} from './broadcast/broadcast-transport.interface.js';
export {
  decodeFrame,
  encodePacket,
  encodeCountRequest,
  encodeControl,
  isPacketFrom,
  PacketFormatError,
  WIRE_FORMAT_VERSION,
  type WireFrame,
  type ControlMessage,
} from './broadcast/wire-format.js';
export { MemoryBroadcastTransport } from './broadcast/memory-broadcast.transport.js';

// Metrics
export { WsRoutesMetrics } from './metrics/ws-routes-metrics.js';
export { METRICS_DEFAULTS } from './metrics/metrics-config.js';
export type {
  HistogramSnapshot,
  TransportMetricsSnapshot,
  WsRouteMetricsSnapshot,
  WsRoutesMetricsSnapshot,
} from './metrics/metrics-snapshot.interface.js';
