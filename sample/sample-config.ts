/**
 * How the sample runs: alone (the default), or as one instance of several that share a Redis
 * (`REDIS_URL`): broadcasts, the board and the board's history (recovery on reconnect) then go
 * through Redis, and pages connected to any instance see the same updates.
 */
export interface SampleConfig {
  /** `redis://…`: scale out through this Redis. */
  redisUrl?: string;
  /** Keys and channels of this deployment in Redis. */
  keyPrefix: string;
}

/** `REDIS_URL` and `SAMPLE_KEY_PREFIX` (default `ws-sample`). */
export function configFromEnv(env: NodeJS.ProcessEnv = process.env): SampleConfig {
  return { redisUrl: env.REDIS_URL || undefined, keyPrefix: env.SAMPLE_KEY_PREFIX || 'ws-sample' };
}
