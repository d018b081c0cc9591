/**
 * Per variant: a fresh server, `echoConns` connections, each with one request in flight
 * (closed loop): send `{"event":"echo","data":"xx…"}` (echoBytes long), wait for the same JSON
 * back, send again. After a warm-up, round trips and the server's CPU time are counted over a
 * fixed window.
 */
import { echoRequest, errorText, Histogram, median, sleep } from './lib/common.js';
import type { Config } from './lib/config.js';
import { cpuMonitor, CpuMonitor } from './lib/cpu-monitor.js';
import type { Child } from './lib/ipc.js';
import { startServer, type ProcessOptions, type ServerHandle } from './lib/processes.js';
import { closeAll, connectAll, cpuMs, type ServerStats } from './fanout.js';

export interface EchoVariantResult {
  variant: string;
  status: 'ok' | 'error' | 'skipped';
  error?: string;
  info: Record<string, string>;
  connections: number;
  windowMs: number;
  roundTrips: number;
  roundTripsPerSecond: number;
  badReplies: number;
  serverCpuMs: number;
  serverCpuUsPerReply: number;
  /** Server CPU time / window: 1.0 is one core busy all the time. */
  serverCores: number;
  p50Ms: number;
  p99Ms: number;
  logged?: ServerStats['logged'];
  clientErrors?: Record<string, number>;
  stderr: string[];
  /** Cores other processes (not the bench's) kept busy during this variant, on average. */
  foreignCores?: number;
  /** Set when a first try was disturbed by other processes: the cores they took then. */
  retriedAfter?: number;
  /** With several rounds: each of them (the fields above are their medians). */
  rounds?: EchoVariantResult[];
}

export async function runEchoVariant(
  variant: string,
  clients: Child[],
  config: Config,
  processes: ProcessOptions,
  log: (line: string) => void,
): Promise<EchoVariantResult> {
  const result: EchoVariantResult = {
    variant,
    status: 'ok',
    info: {},
    connections: 0,
    windowMs: NaN,
    roundTrips: 0,
    roundTripsPerSecond: NaN,
    badReplies: 0,
    serverCpuMs: NaN,
    serverCpuUsPerReply: NaN,
    serverCores: NaN,
    p50Ms: NaN,
    p99Ms: NaN,
    stderr: [],
  };
  let server: ServerHandle | undefined;
  const cpuStart = cpuMonitor.snapshot();
  try {
    server = await startServer(variant, processes);
    result.info = server.info;
    const connect = await connectAll(server, clients, config.echoConns, config);
    result.connections = connect.serverCounted;
    if (connect.failed) log(`  ${variant}: ${connect.failed} connections failed`);
    const { text, data } = echoRequest(config.echoBytes);
    await Promise.all(clients.map((c) => c.call('echo-start', { text, data })));
    await sleep(config.echoWarmupMs);
    const [start, startMarks] = await Promise.all([
      server.child.call<ServerStats>('stats', { gc: false }),
      Promise.all(clients.map((c) => c.call('echo-mark', { reset: true }))),
    ]);
    await sleep(config.echoMs);
    const [end, endMarks] = await Promise.all([
      server.child.call<ServerStats>('stats', { gc: false }),
      Promise.all(clients.map((c) => c.call('echo-mark', { reset: false }))),
    ]);
    await Promise.all(clients.map((c) => c.call('echo-stop', { timeoutMs: 5000 }, 10_000)));
    const roundTrips = endMarks.reduce((sum, m, i) => sum + m.count - startMarks[i].count, 0);
    const histogram = Histogram.from(endMarks.map((m) => m.histogram));
    result.windowMs = end.time - start.time;
    result.roundTrips = roundTrips;
    result.roundTripsPerSecond = roundTrips / (result.windowMs / 1000);
    result.badReplies = endMarks.reduce((sum, m) => sum + m.bad, 0);
    result.serverCpuMs = cpuMs(start.cpu, end.cpu);
    result.serverCpuUsPerReply = roundTrips ? (result.serverCpuMs * 1000) / roundTrips : NaN;
    result.serverCores = result.serverCpuMs / result.windowMs;
    result.p50Ms = histogram.percentile(0.5);
    result.p99Ms = histogram.percentile(0.99);
    result.logged = end.logged;
    if (roundTrips === 0) throw new Error('no round trip completed');
    log(
      `  ${variant}: ${result.roundTripsPerSecond.toFixed(0)} round trips/s, ` +
        `${result.serverCpuUsPerReply.toFixed(1)} µs server CPU per reply` +
        (result.badReplies ? `, ${result.badReplies} BAD replies` : ''),
    );
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

/**
 * One row from several rounds: medians of throughput and CPU, latencies of the median round by
 * throughput, the highest other load; an error in any round makes the row an error.
 */
export function combineEcho(variant: string, runs: EchoVariantResult[] = []): EchoVariantResult {
  if (runs.length === 0)
    return {
      variant,
      status: 'skipped',
      error: 'deadline',
      info: {},
      connections: 0,
      windowMs: NaN,
      roundTrips: 0,
      roundTripsPerSecond: NaN,
      badReplies: 0,
      serverCpuMs: NaN,
      serverCpuUsPerReply: NaN,
      serverCores: NaN,
      p50Ms: NaN,
      p99Ms: NaN,
      stderr: [],
    };
  if (runs.length === 1) return runs[0];
  const failed = runs.find((r) => r.status !== 'ok');
  const byThroughput = [...runs].sort((a, b) => a.roundTripsPerSecond - b.roundTripsPerSecond);
  const mid = byThroughput[(byThroughput.length - 1) >> 1];
  return {
    ...mid,
    status: failed ? failed.status : 'ok',
    error: failed?.error,
    roundTripsPerSecond: median(runs.map((r) => r.roundTripsPerSecond)),
    serverCpuUsPerReply: median(runs.map((r) => r.serverCpuUsPerReply)),
    serverCores: median(runs.map((r) => r.serverCores)),
    badReplies: runs.reduce((sum, r) => sum + r.badReplies, 0),
    foreignCores: Math.max(...runs.map((r) => r.foreignCores ?? 0)),
    stderr: runs.flatMap((r) => r.stderr),
    rounds: runs,
  };
}
