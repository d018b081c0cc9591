/**
 * `npm run bench -- recovery`: what recovery on reconnect costs (issue 11), on one node (the
 * in-memory history) and on Redis (Redis Streams, one instance on the bench's redis-server).
 *
 * Per mode, a fresh app process (`recovery-app.ts`) with a plain route and a recovery route,
 * and `ws` clients in this process:
 *
 * 1. memory: heap and buffers after `messages` broadcasts of ~`bytes` B to the recovery route, against
 *    before (garbage collected, no connection), per 1,000 messages; on Redis, `MEMORY USAGE`
 *    of the route's stream;
 * 2. broadcast cost: `messages` broadcasts of ~`bytes` B in one synchronous loop to `clients`
 *    connections of the plain route, then of the recovery route, `rounds` rounds each: server
 *    CPU per delivery (app, and Redis's own) and end-to-end time, recovery against plain;
 * 3. replay: `clients` connections of the recovery route note their position, drop, miss
 *    `messages` broadcasts, and reconnect at once with `?lastEventId=`: time until every one
 *    has its `recovered: true` and all `messages`, and the app's CPU meanwhile.
 *
 * Every wait is bounded; a round that times out is reported as such.
 */
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { errorText, median, now, sleep } from './lib/common.js';
import { Child } from './lib/ipc.js';
import { startBenchRedis, type BenchRedis } from './lib/redis-server.js';
import { fmt } from './lib/report.js';

const APP_SCRIPT = fileURLToPath(new URL('./recovery-app.js', import.meta.url));
const ROUND_TIMEOUT_MS = 60_000;

/** The sizes of the run (`--quick` divides the counts by 4). */
export interface RecoveryBenchSizes {
  clients: number;
  messages: number;
  bytes: number;
  rounds: number;
}

interface CostRound {
  cpuMs: number;
  redisCpuMs: number;
  e2eMs: number;
  complete: boolean;
}

interface ModeResult {
  mode: 'one node' | 'redis';
  memoryPer1000: number;
  redisStreamBytes?: number;
  plain: CostRound[];
  recovery: CostRound[];
  replay?: { ms: number; cpuMs: number; complete: number; recovered: number };
  error?: string;
}

type State = {
  cpu: NodeJS.CpuUsage;
  heapUsed: number;
  connections: number;
  ready: boolean;
};

const cpuMs = (a: NodeJS.CpuUsage, b: NodeJS.CpuUsage) =>
  (b.user - a.user + (b.system - a.system)) / 1000;

/** A client that counts the tick messages it receives (`{"t":…`), by their first bytes. */
class Counter {
  ticks = 0;
  first: string | undefined;
  constructor(readonly socket: WebSocket) {
    socket.on('message', (data: Buffer) => {
      if (data[2] === 0x74 && data[1] === 0x22)
        this.ticks++; // {"t"
      else this.first ??= data.toString();
    });
  }
}

async function connect(url: string, count: number, urls?: string[]): Promise<Counter[]> {
  const counters: Counter[] = [];
  for (let i = 0; i < count; i += 100) {
    const batch = Array.from({ length: Math.min(100, count - i) }, (_, j) => {
      const socket = new WebSocket(urls ? urls[i + j] : url);
      const counter = new Counter(socket);
      return new Promise<Counter>((resolve, reject) => {
        socket.once('open', () => resolve(counter));
        socket.once('error', reject);
      });
    });
    counters.push(...(await Promise.all(batch)));
  }
  return counters;
}

async function waitUntil(done: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = now() + timeoutMs;
  while (!done()) {
    if (now() > deadline) return false;
    await sleep(2);
  }
  return true;
}

async function closeAll(app: Child, counters: Counter[]): Promise<void> {
  for (const c of counters) c.socket.terminate();
  const deadline = now() + 10_000;
  while ((await app.call<State>('state')).connections > 0 && now() < deadline) await sleep(20);
}

async function runMode(
  mode: 'one node' | 'redis',
  sizes: RecoveryBenchSizes,
  redis: BenchRedis | undefined,
  log: (line: string) => void,
): Promise<ModeResult> {
  const keyPrefix = `bench-rec-${Date.now()}`;
  const args = redis ? [`--redis-url=${redis.url}`, `--key-prefix=${keyPrefix}`] : [];
  const app = Child.start(APP_SCRIPT, {
    name: `recovery-app (${mode})`,
    args,
    nodeFlags: ['--expose-gc'],
    raiseFdLimit: true,
  });
  const result: ModeResult = { mode, memoryPer1000: NaN, plain: [], recovery: [] };
  try {
    const { port } = await app.next<{ port: number }>('ready', 30_000);
    const base = `ws://127.0.0.1:${port}`;
    const deadline = now() + 20_000;
    while (!(await app.call<State>('state')).ready && now() < deadline) await sleep(50);
    const { clients, messages, bytes, rounds } = sizes;

    // 1. memory of the history
    const before = await app.call<State>('state', { gc: true });
    await app.call('burst', { route: '/rec', count: messages, bytes });
    await sleep(redis ? 500 : 50);
    const after = await app.call<State>('state', { gc: true });
    result.memoryPer1000 = ((after.heapUsed - before.heapUsed) / messages) * 1000;
    if (redis) {
      const usage = await redis.command(
        'MEMORY',
        'USAGE',
        `${keyPrefix}:{s:/rec}:x`,
        'SAMPLES',
        '0',
      );
      result.redisStreamBytes = (Number(usage) / messages) * 1000;
    }
    log(
      `${mode}: ${fmt(result.memoryPer1000 / 1024, 0)} KiB of app memory (heap and buffers) per 1,000 messages`,
    );

    // 2. cost of a broadcast, plain against recovery
    for (const route of ['/plain', '/rec'] as const) {
      const counters = await connect(`${base}${route}`, clients);
      for (let round = 1; round <= rounds; round++) {
        for (const c of counters) c.ticks = 0;
        const redisBefore = redis ? await redis.cpu() : undefined;
        const { cpu, start } = await app.call<{ cpu: NodeJS.CpuUsage; start: number }>('burst', {
          route,
          count: messages,
          bytes,
        });
        const complete = await waitUntil(
          () => counters.every((c) => c.ticks >= messages),
          ROUND_TIMEOUT_MS,
        );
        const e2eMs = now() - start;
        const state = await app.call<State>('state');
        const redisAfter = redis ? await redis.cpu() : undefined;
        const costRound: CostRound = {
          cpuMs: cpuMs(cpu, state.cpu),
          redisCpuMs: redisBefore && redisAfter ? redisAfter.infoMs - redisBefore.infoMs : 0,
          e2eMs,
          complete,
        };
        (route === '/rec' ? result.recovery : result.plain).push(costRound);
        log(
          `${mode} ${route} round ${round}: ${fmt(costRound.e2eMs, 0)} ms, app CPU ${fmt(costRound.cpuMs, 0)} ms` +
            (redis ? `, Redis CPU ${fmt(costRound.redisCpuMs, 0)} ms` : '') +
            (complete ? '' : ' (timed out)'),
        );
        await sleep(200);
      }
      await closeAll(app, counters);
    }

    // 3. replay to every client at once
    const away = await connect(`${base}/rec`, clients);
    await waitUntil(() => away.every((c) => c.first !== undefined), 10_000);
    const positions = away.map((c) => (JSON.parse(c.first!) as { id: string }).id);
    await closeAll(app, away);
    await app.call('burst', { route: '/rec', count: messages, bytes });
    await sleep(redis ? 500 : 100);
    const cpuBefore = (await app.call<State>('state')).cpu;
    const started = now();
    const back = await connect(
      '',
      clients,
      positions.map((id) => `${base}/rec?lastEventId=${encodeURIComponent(id)}`),
    );
    await waitUntil(() => back.every((c) => c.ticks >= messages), ROUND_TIMEOUT_MS);
    const ms = now() - started;
    const cpuAfter = (await app.call<State>('state')).cpu;
    result.replay = {
      ms,
      cpuMs: cpuMs(cpuBefore, cpuAfter),
      complete: back.filter((c) => c.ticks === messages).length,
      recovered: back.filter((c) => c.first?.includes('"recovered":true')).length,
    };
    log(
      `${mode} replay: ${fmt(ms, 0)} ms for ${clients} × ${messages}, ${result.replay.recovered} recovered, ${result.replay.complete} complete`,
    );
    await closeAll(app, back);
  } catch (error) {
    result.error = errorText(error);
    log(`${mode}: ${result.error}`);
  } finally {
    await app.stop();
  }
  return result;
}

function costLine(sizes: RecoveryBenchSizes, r: ModeResult): string[] {
  const deliveries = sizes.clients * sizes.messages;
  const us = (rounds: CostRound[], redis: boolean) =>
    median(rounds.map((x) => ((x.cpuMs + (redis ? x.redisCpuMs : 0)) * 1000) / deliveries));
  const e2e = (rounds: CostRound[]) => median(rounds.map((x) => x.e2eMs));
  const withRedis = r.mode === 'redis';
  const plainUs = us(r.plain, withRedis);
  const recUs = us(r.recovery, withRedis);
  return [
    `| ${r.mode} | ${fmt(plainUs, 3)} | ${fmt(recUs, 3)} | **${fmt(recUs / plainUs, 2)}×** | ${fmt(e2e(r.plain), 0)} | ${fmt(e2e(r.recovery), 0)} | **${fmt(e2e(r.recovery) / e2e(r.plain), 2)}×** |`,
  ];
}

/** Runs both modes and returns the Markdown report. */
export async function runRecoveryBench(
  sizes: RecoveryBenchSizes,
  log: (line: string) => void,
): Promise<{ report: string; results: ModeResult[] }> {
  const results: ModeResult[] = [];
  results.push(await runMode('one node', sizes, undefined, log));
  let redis: BenchRedis | undefined;
  try {
    redis = await startBenchRedis();
    results.push(await runMode('redis', sizes, redis, log));
  } catch (error) {
    log(`redis mode skipped: ${errorText(error)}`);
  } finally {
    await redis?.stop();
  }
  const { clients, messages, bytes } = sizes;
  const lines = [
    `## Recovery on reconnect (${clients} connections, ${messages} broadcasts of ~${bytes} B)`,
    '',
    'Server CPU per delivery (µs; on Redis, the app plus Redis itself) and end-to-end time of a burst, plain route against recovery route (medians of the rounds):',
    '',
    '| mode | plain µs | recovery µs | ratio | plain ms | recovery ms | ratio |',
    '|---|---|---|---|---|---|---|',
    ...results.filter((r) => !r.error).flatMap((r) => costLine(sizes, r)),
    '',
    '| mode | history per 1,000 messages | replay of all missed to every client at once | app CPU of the replay | recovered / complete |',
    '|---|---|---|---|---|',
    ...results
      .filter((r) => !r.error)
      .map(
        (r) =>
          `| ${r.mode} | ${r.redisStreamBytes !== undefined ? `${fmt(r.redisStreamBytes / 1024, 0)} KiB in Redis (none in the app)` : `${fmt(r.memoryPer1000 / 1024, 0)} KiB in the app`} | ${fmt(r.replay?.ms ?? NaN, 0)} ms | ${fmt(r.replay?.cpuMs ?? NaN, 0)} ms | ${r.replay?.recovered}/${r.replay?.complete} of ${clients} |`,
      ),
    ...results.filter((r) => r.error).map((r) => `\n${r.mode}: ${r.error}`),
    '',
  ];
  return { report: lines.join('\n'), results };
}
