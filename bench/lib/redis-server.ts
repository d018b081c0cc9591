/**
 * One `redis-server` for a bench run: test/utils/redis-process.ts starts it (a free port on
 * 127.0.0.1, no persistence, its own temporary dir, killed by a watchdog if the orchestrator
 * exits first); this adds its version and its CPU readings: `INFO cpu` (getrusage, µs) and
 * /proc/<pid>/stat (clock ticks), both cumulative since its start.
 */
import { existsSync, readFileSync } from 'node:fs';
import { redisServerPath, startRedis, type RespValue } from '../../test/utils/redis-process.js';

export type { RespValue } from '../../test/utils/redis-process.js';

/** Redis's CPU time so far, by two clocks. */
export interface RedisCpu {
  /** `used_cpu_user + used_cpu_sys` of `INFO cpu`, in ms. */
  infoMs: number;
  /** utime + stime of /proc/<pid>/stat, in ms (10 ms steps); NaN off Linux. */
  procMs: number;
}

/** A running bench Redis. */
export interface BenchRedis {
  readonly port: number;
  /** `redis://127.0.0.1:PORT`. */
  readonly url: string;
  readonly pid: number;
  readonly version: string;
  /** Sends one command over a fresh connection; resolves with the decoded reply. */
  command(...args: string[]): Promise<RespValue>;
  cpu(): Promise<RedisCpu>;
  /** SIGTERM, SIGKILL after 2 s; deletes its dir. Idempotent. */
  stop(): Promise<void>;
}

/** Starts `redis-server` and resolves once it answers as itself (its own `process_id`). */
export async function startBenchRedis(): Promise<BenchRedis> {
  if (!existsSync(redisServerPath))
    throw new Error(
      `redis-server not found at ${redisServerPath}: install it (apt-get install redis-server) or set REDIS_SERVER_PATH`,
    );
  const server = await startRedis();
  const info = String(await server.command('INFO', 'server'));
  const pid = server.pid;
  return {
    port: server.port,
    url: server.url,
    pid,
    version: /redis_version:([^\r\n]+)/.exec(info)?.[1] ?? '?',
    command: (...args) => server.command(...args),
    cpu: async () => {
      const cpu = String(await server.command('INFO', 'cpu'));
      const field = (name: string) =>
        Number(new RegExp(`^${name}:([0-9.]+)`, 'm').exec(cpu)?.[1] ?? NaN);
      return {
        infoMs: (field('used_cpu_user') + field('used_cpu_sys')) * 1000,
        procMs: procCpuMs(pid),
      };
    },
    stop: () => server.stop(),
  };
}

/** utime + stime of a process, in ms; NaN when /proc cannot tell. */
export function procCpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Clock ticks of 10 ms (USER_HZ = 100 on Linux).
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return NaN;
  }
}
