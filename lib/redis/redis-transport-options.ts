import type { LoggerService } from '@nestjs/common';
import type { IoRedisClient } from './ioredis-driver.js';
import type { NodeRedisClient, NodeRedisCluster } from './node-redis-driver.js';

/** Options every way of connecting shares. */
export interface RedisTransportTuning {
  /**
   * First part of every channel name, so several applications can share one Redis. Default
   * `'ws-routes'`. No braces: the name's hash tag follows it.
   */
  keyPrefix?: string;
  /**
   * Milliseconds a room or user channel stays subscribed after this instance lost its last
   * member, so a page reload costs no UNSUBSCRIBE/SUBSCRIBE. Default 2000; `0` unsubscribes at once.
   */
  linger?: number;
  /** Milliseconds between this instance's presence messages on the control channel. Default 2000. */
  heartbeatInterval?: number;
  /**
   * Milliseconds between probes of the subscriber connection while it is quiet: a message to
   * this instance's own channel that must come back within `probeTimeout`, or the subscriber
   * is reconnected and the transport reports down. Default 5000.
   */
  probeInterval?: number;
  /** Milliseconds a probe may take. Default 2000. */
  probeTimeout?: number;
  /**
   * A broadcast to more target channels than this (rooms + users + routes + instances) goes
   * to the everyone channel once, with its target list, instead. Default 32.
   */
  maxChannelsPerPacket?: number;
  /**
   * Bytes of publishes that may await Redis's answer; beyond it publishes are refused (and
   * counted) rather than held, so a Redis that stops answering cannot grow this process's
   * memory. Default 64 MiB.
   */
  maxPublishBacklog?: number;
  /** Longest wait between two reconnect attempts, in ms (before jitter). Default 5000. */
  maxReconnectDelay?: number;
  /**
   * Sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7+) on one Redis too. Always on with a
   * cluster. Default `false` on one Redis.
   */
  sharded?: boolean;
  /** Where the transport logs (Nest's `Logger` with context `WsRoutes:Redis` by default). */
  logger?: LoggerService;
}

/** Connect to one Redis by URL: the transport makes and closes its connections. */
export interface RedisUrlOptions extends RedisTransportTuning {
  /** `redis://[user:password@]host:port[/db]` or `rediss://` for TLS. */
  url: string;
}

/**
 * Use a node-redis client or cluster the application already has (`createClient()` or
 * `createCluster()`, connected or not). The transport adds its own subscriber connection and
 * leaves the client open at shutdown.
 */
export interface RedisClientOptions extends RedisTransportTuning {
  client: NodeRedisClient | NodeRedisCluster;
}

/**
 * Use an ioredis client the application already has (`new Redis(…)`, e.g. a Nest
 * microservice's): the transport publishes on it, subscribes on a duplicate, and leaves it open
 * at shutdown. One Redis only; for a cluster, use node-redis.
 */
export interface RedisIoRedisOptions extends RedisTransportTuning {
  ioredis: IoRedisClient;
}

/** Connect to a Redis Cluster by its root nodes: sharded pub/sub, one channel per shard. */
export interface RedisClusterOptions extends RedisTransportTuning {
  cluster: { rootNodes: { url: string }[] };
}

/** Options of `RedisBroadcastTransport`. */
export type RedisBroadcastTransportOptions =
  RedisUrlOptions | RedisClientOptions | RedisClusterOptions | RedisIoRedisOptions;

/** The defaults of {@link RedisTransportTuning} (the README's defaults table has them too). */
export const REDIS_TRANSPORT_DEFAULTS = {
  keyPrefix: 'ws-routes',
  linger: 2_000,
  heartbeatInterval: 2_000,
  probeInterval: 5_000,
  probeTimeout: 2_000,
  maxChannelsPerPacket: 32,
  maxPublishBacklog: 64 * 1024 * 1024,
  maxReconnectDelay: 5_000,
} as const;

/**
 * Reconnect for ever: exponential from 100 ms up to `max`, each wait scaled by a random factor
 * in [0.5, 1.5) so a fleet of instances does not come back in step. Never gives up.
 */
export function reconnectDelay(max: number): (retries: number) => number {
  return (retries) =>
    Math.round(Math.min(100 * 2 ** Math.min(retries, 16), max) * (0.5 + Math.random()));
}
