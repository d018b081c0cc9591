/**
 * A measured round of deliveries, shared by the fan-out and the room broadcast: the server
 * sends tick messages, the load processes count them per connection and time them; server CPU
 * per delivery, end-to-end time and latencies come out; several rounds make one median.
 */
import { errorText, Histogram, median, withTimeout } from './lib/common.js';
import type { Config } from './lib/config.js';
import type { Child } from './lib/ipc.js';
import type { ServerHandle } from './lib/processes.js';

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

/** What every round of deliveries measures (fan-out, rooms). */
export interface DeliveryRound {
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

/** What the server answers to a send command (`broadcast`, `room-broadcast`). */
export interface SendResult {
  firstSend: number;
  lastSend: number;
  cpuStart: CpuUsage;
  size: number;
  connections: number;
}

/**
 * One measured round of deliveries: a clean heap, every load process armed by `arm` (it
 * answers how many tick messages it expects), the server sends (`send`), then the wait for
 * every load process's `fanout-done`. CPU: the server's `process.cpuUsage()` from its first
 * send to the `stats` call after the last client got its last message.
 */
export async function deliveryRound(
  server: ServerHandle,
  clients: Child[],
  config: Config,
  what: string,
  arm: (client: Child) => Promise<{ expected: number }>,
  send: () => Promise<SendResult>,
): Promise<DeliveryRound> {
  // A clean heap for every round, the same for every variant.
  await server.child.call('stats', { gc: true });
  const armed = await Promise.all(clients.map(arm));
  const waiting = clients
    .filter((_, i) => armed[i].expected > 0)
    .map((c) => c.next('fanout-done', config.fanoutTimeoutMs));
  const deliveries = armed.reduce((sum, a) => sum + a.expected, 0);
  const base: DeliveryRound = {
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
  try {
    const sent = await send();
    base.connections = sent.connections;
    base.messageBytes = sent.size;
    base.sendLoopMs = sent.lastSend - sent.firstSend;
    const done = await withTimeout(Promise.all(waiting), config.fanoutTimeoutMs, what);
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
    const short = status.reduce((sum, s) => sum + (s?.short ?? 0), 0);
    const minPerConn = Math.min(...status.map((s) => s?.perConnMin ?? 0));
    return {
      ...base,
      status: /timeout/.test(errorText(error)) ? 'timeout' : 'error',
      detail: `${errorText(error)}; delivered ${delivered}/${deliveries}, ${short} connections short of their messages, fewest per connection ${minPerConn}`,
      delivered,
    };
  }
}

/** The median of the rounds; undefined without rounds, the first failure's status if any. */
export function summarize(rounds: DeliveryRound[]): FanoutSummary | undefined {
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
