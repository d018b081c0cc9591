/**
 * Per variant, on one fresh server process and the shared load processes:
 * connect N (accept rate, server CPU per accept) → idle memory per connection after GC →
 * `rounds` × (paced fan-out, burst fan-out) (scenario `fanout`) → joins and `rounds` room
 * broadcast rounds on the same connections (scenario `rooms`, bench/rooms.ts) → memory after
 * traffic → disconnect.
 */
import { errorText, sleep } from './lib/common.js';
import { ROOM_VARIANTS, type Config } from './lib/config.js';
import { cpuMonitor, CpuMonitor } from './lib/cpu-monitor.js';
import type { Child } from './lib/ipc.js';
import { shares, startServer, type ProcessOptions, type ServerHandle } from './lib/processes.js';
import {
  cpuMs,
  deliveryRound,
  summarize,
  type DeliveryRound,
  type FanoutSummary,
  type SendResult,
  type ServerStats,
} from './delivery.js';
import { runRooms, type RoomsResult } from './rooms.js';

export { cpuMs, type CpuUsage, type FanoutSummary, type ServerStats } from './delivery.js';

export interface ConnectResult {
  requested: number;
  opened: number;
  failed: number;
  serverCounted: number;
  seconds: number;
  acceptsPerSecond: number;
  serverCpuMsPerAccept: number;
  errors: Record<string, number>;
}

export interface FanoutRound extends DeliveryRound {
  mode: 'paced' | 'burst';
  round: number;
}

export interface FanoutVariantResult {
  variant: string;
  status: 'ok' | 'error' | 'skipped';
  error?: string;
  info: Record<string, string>;
  connect?: ConnectResult;
  memory?: {
    baseline: NodeJS.MemoryUsage;
    idle: NodeJS.MemoryUsage;
    afterTraffic?: NodeJS.MemoryUsage;
    rssPerConnKiB: number;
    heapPerConnKiB: number;
    rssPerConnAfterTrafficKiB?: number;
    heapPerConnAfterTrafficKiB?: number;
  };
  rounds: FanoutRound[];
  paced?: FanoutSummary;
  burst?: FanoutSummary;
  /** The room broadcast scenario, on the same connections after the fan-out rounds. */
  rooms?: RoomsResult;
  logged?: ServerStats['logged'];
  clientErrors?: Record<string, number>;
  stderr: string[];
  /** Cores other processes (not the bench's) kept busy during this variant, on average. */
  foreignCores?: number;
  /** Set when a first try was disturbed by other processes: the cores they took then. */
  retriedAfter?: number;
}

export async function connectAll(
  server: ServerHandle,
  clients: Child[],
  total: number,
  config: Config,
): Promise<ConnectResult> {
  const before = await server.child.call<ServerStats>('stats', { gc: false });
  const results = await Promise.all(
    shares(total, clients.length).map((count, i) =>
      clients[i].call(
        'connect',
        {
          kind: server.client,
          url: server.url,
          count,
          concurrency: config.concurrency,
          timeoutMs: 20_000,
        },
        config.connectTimeoutMs,
      ),
    ),
  );
  const after = await server.child.call<ServerStats>('stats', { gc: false });
  const opened = results.reduce((sum, r) => sum + r.opened, 0);
  const seconds =
    (Math.max(...results.map((r) => r.end)) - Math.min(...results.map((r) => r.start))) / 1000;
  const errors: Record<string, number> = {};
  for (const r of results)
    for (const [text, count] of Object.entries(r.errors as Record<string, number>))
      errors[text] = (errors[text] ?? 0) + count;
  return {
    requested: total,
    opened,
    failed: total - opened,
    serverCounted: after.connections,
    seconds,
    acceptsPerSecond: opened / seconds,
    serverCpuMsPerAccept: opened ? cpuMs(before.cpu, after.cpu) / opened : NaN,
    errors,
  };
}

export async function closeAll(server: ServerHandle | undefined, clients: Child[]) {
  const closed = await Promise.allSettled(clients.map((c) => c.call('close-all', {}, 30_000)));
  await server?.child.stop(5000);
  const errors: Record<string, number> = {};
  for (const result of closed)
    if (result.status === 'fulfilled')
      for (const [text, count] of Object.entries(result.value.errors as Record<string, number>))
        errors[text] = (errors[text] ?? 0) + count;
  return errors;
}

function fanoutRound(
  server: ServerHandle,
  clients: Child[],
  config: Config,
  mode: 'paced' | 'burst',
  round: number,
): Promise<FanoutRound> {
  return deliveryRound(
    server,
    clients,
    config,
    `${mode} fan-out of ${server.variant}`,
    (c) => c.call('fanout-expect', { count: config.messages }),
    () =>
      server.child.call<SendResult>(
        'broadcast',
        { mode, count: config.messages, bytes: config.bytes },
        config.fanoutTimeoutMs,
      ),
  ).then((r) => ({ mode, round, ...r }));
}

const perConnKiB = (from: number, to: number, connections: number) =>
  connections > 0 ? (to - from) / connections / 1024 : NaN;

export async function runFanoutVariant(
  variant: string,
  clients: Child[],
  config: Config,
  processes: ProcessOptions,
  log: (line: string) => void,
): Promise<FanoutVariantResult> {
  const result: FanoutVariantResult = { variant, status: 'ok', info: {}, rounds: [], stderr: [] };
  let server: ServerHandle | undefined;
  const cpuStart = cpuMonitor.snapshot();
  try {
    server = await startServer(variant, processes);
    result.info = server.info;
    const baseline = await server.child.call<ServerStats>('stats', { gc: true });
    result.connect = await connectAll(server, clients, config.n, config);
    const connected = result.connect.serverCounted;
    log(
      `  ${variant}: ${result.connect.opened}/${config.n} connected in ${result.connect.seconds.toFixed(1)} s` +
        (result.connect.failed ? ` (${result.connect.failed} failed)` : ''),
    );
    await sleep(1000);
    const idle = await server.child.call<ServerStats>('stats', { gc: true });
    result.memory = {
      baseline: baseline.memory,
      idle: idle.memory,
      rssPerConnKiB: perConnKiB(baseline.memory.rss, idle.memory.rss, connected),
      heapPerConnKiB: perConnKiB(baseline.memory.heapUsed, idle.memory.heapUsed, connected),
    };
    const fanoutRounds = config.scenarios.includes('fanout') ? config.rounds : 0;
    for (let round = 1; round <= fanoutRounds; round++) {
      for (const mode of ['paced', 'burst'] as const) {
        const r = await fanoutRound(server, clients, config, mode, round);
        result.rounds.push(r);
        log(
          `  ${variant} ${mode} #${round}: ` +
            (r.status === 'ok'
              ? `${r.endToEndMs.toFixed(0)} ms, CPU ${r.serverCpuMs.toFixed(0)} ms, p99 ${r.p99Ms.toFixed(1)} ms`
              : `${r.status}: ${r.detail}`),
        );
        if (r.status !== 'ok') break;
      }
      if (result.rounds.some((r) => r.status !== 'ok')) break;
    }
    if (config.scenarios.includes('rooms') && ROOM_VARIANTS.includes(variant))
      result.rooms = await runRooms(server, clients, config, log);
    const after = await server.child.call<ServerStats>('stats', { gc: true });
    result.memory.afterTraffic = after.memory;
    result.memory.rssPerConnAfterTrafficKiB = perConnKiB(
      baseline.memory.rss,
      after.memory.rss,
      after.connections,
    );
    result.memory.heapPerConnAfterTrafficKiB = perConnKiB(
      baseline.memory.heapUsed,
      after.memory.heapUsed,
      after.connections,
    );
    result.logged = after.logged;
    result.paced = summarize(result.rounds.filter((r) => r.mode === 'paced'));
    result.burst = summarize(result.rounds.filter((r) => r.mode === 'burst'));
  } catch (error) {
    result.status = 'error';
    result.error = errorText(error);
    log(`  ${variant}: error: ${result.error}`);
  } finally {
    result.foreignCores = CpuMonitor.foreignCores(cpuStart, cpuMonitor.snapshot());
    result.clientErrors = await closeAll(server, clients);
    result.stderr = server?.child.stderrLines ?? [];
  }
  return result;
}
