// nestjs-ws-routes/redis: the Redis transport. Only this subpath loads `redis` (node-redis),
// an optional peer dependency, so single-node applications install nothing extra.
export { RedisBroadcastTransport, type RedisTransportStats } from './redis-broadcast.transport.js';
export {
  REDIS_TRANSPORT_DEFAULTS,
  type RedisBroadcastTransportOptions,
  type RedisClientOptions,
  type RedisClusterOptions,
  type RedisIoRedisOptions,
  type RedisTransportTuning,
  type RedisUrlOptions,
} from './redis-transport-options.js';
export { ChannelNames } from './channel-names.js';
export type { NodeRedisClient, NodeRedisCluster } from './node-redis-driver.js';
export type { IoRedisClient } from './ioredis-driver.js';
