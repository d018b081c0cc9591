/**
 * Per variant, on one fresh server process and the shared load processes:
 * connect N (accept rate, server CPU per accept) → idle memory per connection after GC →
 * `rounds` × (paced fan-out, burst fan-out) → memory after traffic → disconnect.
 */
import { errorText, Histogram, median, sleep, withTimeout } from './lib/common.js';
import type { Config } from './lib/config.js';
import { cpuMonitor, CpuMonitor } from './lib/cpu-monitor.js';
import type { Child } from './lib/ipc.js';
import { shares, startServer, type ProcessOptions, type ServerHandle } from './lib/processes.js';

export interface CpuUsage {
  user: number;
  system: number;
}

export interface ServerStats {
  time: number;
  cpu: CpuUsage;
  memory: NodeJS.MemoryUsage;
  gc: boolean;
  connections: number;
  logged: { error: number; warn: number; first: string[] };
}

export const cpuMs = (from: CpuUsage, to: CpuUsage) =>
  (to.user - from.user + to.system - from.system) / 1000;

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

export interface FanoutRound {
  mode: 'paced' | 'burst';
  round: number;
  status: 'ok' | 'timeout' | 'error';
  detail?: string;
  connections: number;
  deliveries: number;
  delivered: number;
  messageBytes: number;
  /** Server's first send → last receive of the last client. */
  endToEndMs: number;
  /** Time the server spent in its send loop(s). */
  sendLoopMs: number;
  serverCpuMs: number;
  serverCpuUsPerDelivery: number;
  deliveriesPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  negativeLatencies: number;
}

export interface FanoutSummary {
  status: 'ok' | 'timeout' | 'error';
  endToEndMs: number;
  serverCpuUsPerDelivery: number;
  deliveriesPerSecond: number;
  p50Ms: number;
  p99Ms: number;
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

async function fanoutRound(
  server: ServerHandle,
  clients: Child[],
  config: Config,
  mode: 'paced' | 'burst',
  round: number,
): Promise<FanoutRound> {
  // A clean heap for every round, the same for every variant.
  await server.child.call('stats', { gc: true });
  const armed = await Promise.all(
    clients.map((c) => c.call('fanout-expect', { count: config.messages })),
  );
  const waiting = clients
    .filter((_, i) => armed[i].expected > 0)
    .map((c) => c.next('fanout-done', config.fanoutTimeoutMs));
  const deliveries = armed.reduce((sum, a) => sum + a.expected, 0);
  const base: FanoutRound = {
    mode,
    round,
    status: 'ok',
    connections: 0,
    deliveries,
    delivered: 0,
    messageBytes: 0,
    endToEndMs: NaN,
    sendLoopMs: NaN,
    serverCpuMs: NaN,
    serverCpuUsPerDelivery: NaN,
    deliveriesPerSecond: NaN,
    p50Ms: NaN,
    p99Ms: NaN,
    maxMs: NaN,
    negativeLatencies: 0,
  };
  let sent: any;
  try {
    sent = await server.child.call(
      'broadcast',
      { mode, count: config.messages, bytes: config.bytes },
      config.fanoutTimeoutMs,
    );
    base.connections = sent.connections;
    base.messageBytes = sent.size;
    base.sendLoopMs = sent.lastSend - sent.firstSend;
    const done = await withTimeout(
      Promise.all(waiting),
      config.fanoutTimeoutMs,
      `${mode} fan-out of ${server.variant}`,
    );
    const end = await server.child.call<ServerStats>('stats', { gc: false });
    const histogram = Histogram.from(done.map((d) => d.histogram));
    const endToEndMs = Math.max(...done.map((d) => d.lastRecv)) - sent.firstSend;
    const serverCpuMs = cpuMs(sent.cpuStart, end.cpu);
    return {
      ...base,
      delivered: done.reduce((sum, d) => sum + d.received, 0),
      endToEndMs,
      serverCpuMs,
      serverCpuUsPerDelivery: (serverCpuMs * 1000) / deliveries,
      deliveriesPerSecond: deliveries / (endToEndMs / 1000),
      p50Ms: histogram.percentile(0.5),
      p99Ms: histogram.percentile(0.99),
      maxMs: histogram.max,
      negativeLatencies: histogram.negative,
    };
  } catch (error) {
    waiting.forEach((w) => w.catch(() => undefined));
    const status = await Promise.all(
      clients.map((c) => c.call('fanout-status', {}, 5000).catch(() => undefined)),
    );
    await Promise.all(clients.map((c) => c.call('fanout-disarm', {}, 5000).catch(() => 0)));
    const delivered = status.reduce((sum, s) => sum + (s?.received ?? 0), 0);
    const minPerConn = Math.min(...status.map((s) => s?.perConnMin ?? 0));
    return {
      ...base,
      status: /timeout/.test(errorText(error)) ? 'timeout' : 'error',
      detail: `${errorText(error)}; delivered ${delivered}/${deliveries}, fewest per connection ${minPerConn}/${config.messages}`,
      delivered,
    };
  }
}

function summarize(rounds: FanoutRound[]): FanoutSummary | undefined {
  if (rounds.length === 0) return undefined;
  const ok = rounds.filter((r) => r.status === 'ok');
  if (ok.length < rounds.length) {
    const bad = rounds.find((r) => r.status !== 'ok')!;
    return {
      status: bad.status,
      endToEndMs: NaN,
      serverCpuUsPerDelivery: NaN,
      deliveriesPerSecond: NaN,
      p50Ms: NaN,
      p99Ms: NaN,
    };
  }
  // The median round by end-to-end time gives the latencies; CPU is the median of all rounds.
  const byTime = [...ok].sort((a, b) => a.endToEndMs - b.endToEndMs);
  const mid = byTime[(byTime.length - 1) >> 1];
  return {
    status: 'ok',
    endToEndMs: median(ok.map((r) => r.endToEndMs)),
    serverCpuUsPerDelivery: median(ok.map((r) => r.serverCpuUsPerDelivery)),
    deliveriesPerSecond: median(ok.map((r) => r.deliveriesPerSecond)),
    p50Ms: mid.p50Ms,
    p99Ms: mid.p99Ms,
  };
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
    for (let round = 1; round <= config.rounds; round++) {
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
