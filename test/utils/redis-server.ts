import {
  liveRedisServers,
  redisAvailable,
  redisServerPath,
  type RedisServer,
} from './redis-process.js';

export * from './redis-process.js';

/**
 * `describe` for specs that need redis-server. Without it the specs are skipped with a loud
 * message, except in CI (`CI=true`), where a missing server fails the run instead: a green CI
 * must mean the Redis tests ran. Servers the body started and did not stop are stopped after
 * its tests (a failed `beforeAll` or test leaks none).
 */
export function describeRedis(name: string, body: () => void): void {
  if (redisAvailable()) {
    describe(name, () => {
      let before = new Set<RedisServer>();
      beforeAll(() => {
        before = new Set(liveRedisServers());
      });
      body();
      // Registered after the body's hooks, so it runs after them: their clients close first.
      afterAll(async () => {
        await Promise.all(
          liveRedisServers()
            .filter((s) => !before.has(s))
            .map((s) => s.stop()),
        );
      });
    });
    return;
  }
  const message =
    `redis-server not found at ${redisServerPath} (or no redis-cli next to it): install it ` +
    'with `apt-get install redis-server` (or set REDIS_SERVER_PATH)';
  if (process.env.CI === 'true') {
    describe(name, () => {
      it('needs redis-server (CI=true: a missing server fails the run)', () => {
        throw new Error(message);
      });
    });
    return;
  }
  const bar = '!'.repeat(78);
  console.warn(`\n${bar}\n!! SKIPPED Redis tests "${name}"\n!! ${message}\n${bar}\n`);
  describe.skip(name, body);
}
