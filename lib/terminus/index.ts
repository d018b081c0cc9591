// nestjs-ws-routes/terminus: the health indicator. Only this subpath loads @nestjs/terminus,
// an optional peer dependency, so applications without it install nothing extra.
export {
  WsRoutesHealthIndicator,
  type WsRoutesHealthDetails,
  type WsRoutesHealthOptions,
} from './ws-routes-health.indicator.js';
