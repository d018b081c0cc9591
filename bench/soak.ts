/**
 * `npm run bench -- soak`: our library under churn. `soakConns` connections (load in other
 * processes) come and go for `soakMs`: each connects, joins rooms, receives the room and route
 * broadcasts of a ticker, and leaves after a random lifetime (most with a close handshake, some
 * by dropping the TCP connection), replaced at once by a new one. Then everything disconnects
 * and the checks are: registry and rooms back to zero, heap after GC within 10 % of the start,
 * no error logged by the server, no unexpected close or error at the clients.
 *
 * The start heap is taken after a short warm-up churn (5 s, a tenth of the connections) and
 * GC, so that what is compiled and allocated once per process is not mistaken for a leak; the
 * heap right after boot is reported too.
 */
import { errorText, median, now, sleep } from './lib/common.js';
import type { Config } from './lib/config.js';
import type { Child } from './lib/ipc.js';
import type { MachineInfo } from './lib/machine.js';
import { shares, startClients, startServer, type ProcessOptions } from './lib/processes.js';
import { fmt, machineLine } from './lib/report.js';

interface SoakStats {
  time: number;
  cpu: { user: number; system: number };
  connections: number;
  rooms: number;
  memory: NodeJS.MemoryUsage;
  logged: { error: number; warn: number; first: string[] };
}

const MiB = 2 ** 20;
const DRAIN_MS = 15_000;

async function churn(clients: Child[], config: Config, url: string, total: number, ms: number) {
  const results = await Promise.all(
    shares(total, clients.length).map((target, i) =>
      clients[i].call(
        'soak',
        {
          url,
          target,
          durationMs: ms,
          lifeMinMs: config.soakLifeMinMs,
          lifeMaxMs: config.soakLifeMaxMs,
          rooms: config.soakRooms,
          roomsPerConn: config.soakRoomsPerConn,
          terminateRatio: config.soakTerminateRatio,
          concurrency: config.soakConcurrency,
          timeoutMs: 20_000,
          drainMs: DRAIN_MS,
        },
        ms + DRAIN_MS + 30_000,
      ),
    ),
  );
  const sum = (key: string) => results.reduce((s, r) => s + (r[key] as number), 0);
  const errors: Record<string, number> = {};
  const closeCodes: Record<string, number> = {};
  for (const r of results) {
    for (const [k, v] of Object.entries(r.errors as Record<string, number>))
      errors[k] = (errors[k] ?? 0) + v;
    for (const [k, v] of Object.entries(r.closeCodes as Record<string, number>))
      closeCodes[k] = (closeCodes[k] ?? 0) + v;
  }
  return {
    opened: sum('opened'),
    failed: sum('failed'),
    closedClean: sum('closedClean'),
    terminated: sum('terminated'),
    unexpectedCloses: sum('unexpectedCloses'),
    messages: sum('messages'),
    leftOpen: sum('left'),
    clientDrainMs: Math.max(...results.map((r) => r.drainMs as number)),
    closeCodes,
    errors,
  };
}

async function waitEmpty(server: Child, timeoutMs: number): Promise<SoakStats> {
  const until = now() + timeoutMs;
  for (;;) {
    const stats = await server.call<SoakStats>('soak-stats', { gc: false });
    if ((stats.connections === 0 && stats.rooms === 0) || now() > until) return stats;
    await sleep(200);
  }
}

export async function runSoak(
  config: Config,
  processes: ProcessOptions,
  machine: MachineInfo,
  log: (line: string) => void,
  beforeReport: () => Promise<void>,
) {
  const started = now();
  log(
    `soak: ${config.soakConns} connections of our library for ${config.soakMs / 1000} s, ` +
      `lifetimes ${config.soakLifeMinMs}–${config.soakLifeMaxMs} ms, ${config.workers} load processes`,
  );
  const clients = await startClients(config.workers, processes);
  const server = await startServer('ours', processes, ['--soak', '--heartbeat']);
  const samples: {
    t: number;
    connections: number;
    rooms: number;
    heapMiB: number;
    rssMiB: number;
    /** Server CPU since the previous sample, in % of one core. */
    cpuPct: number;
  }[] = [];
  let previous: SoakStats | undefined;
  let error: string | undefined;
  let boot: SoakStats | undefined;
  let start: SoakStats | undefined;
  let end: SoakStats | undefined;
  let drained: SoakStats | undefined;
  let serverDrainMs = NaN;
  let warm: Awaited<ReturnType<typeof churn>> | undefined;
  let load: Awaited<ReturnType<typeof churn>> | undefined;
  try {
    boot = await server.child.call<SoakStats>('soak-stats', { gc: true });
    const tick = {
      tickMs: config.soakTickMs,
      rooms: config.soakRooms,
      roomsPerTick: config.soakRoomsPerTick,
      routeEvery: 10,
    };
    log('  warm-up: 5 s with a tenth of the connections');
    await server.child.call('soak-start', tick);
    warm = await churn(clients, config, server.url, Math.ceil(config.soakConns / 10), 5000);
    await server.child.call('soak-stop');
    await waitEmpty(server.child, DRAIN_MS);
    start = await server.child.call<SoakStats>('soak-stats', { gc: true });

    log(`  churn: ${config.soakMs / 1000} s`);
    await server.child.call('soak-start', tick);
    const t0 = now();
    const sampler = setInterval(() => {
      server.child
        .call<SoakStats>('soak-stats', { gc: false }, 5000)
        .then((s) => {
          const cpuPct = previous
            ? ((s.cpu.user - previous.cpu.user + s.cpu.system - previous.cpu.system) /
                1000 /
                (s.time - previous.time)) *
              100
            : NaN;
          previous = s;
          samples.push({
            cpuPct,
            t: (now() - t0) / 1000,
            connections: s.connections,
            rooms: s.rooms,
            heapMiB: s.memory.heapUsed / MiB,
            rssMiB: s.memory.rss / MiB,
          });
          if (samples.length % 5 === 0)
            log(
              `  ${fmt(samples.at(-1)!.t, 0)} s: ${s.connections} open, ${s.rooms} rooms, server CPU ${fmt(cpuPct, 0)} %, heap ${fmt(s.memory.heapUsed / MiB, 0)} MiB, RSS ${fmt(s.memory.rss / MiB, 0)} MiB`,
            );
        })
        .catch(() => undefined);
    }, 1000);
    try {
      load = await churn(clients, config, server.url, config.soakConns, config.soakMs);
    } finally {
      clearInterval(sampler);
      await server.child.call('soak-stop').catch(() => undefined);
    }
    const drainStart = now();
    drained = await waitEmpty(server.child, DRAIN_MS);
    serverDrainMs = now() - drainStart;
    end = await server.child.call<SoakStats>('soak-stats', { gc: true });
  } catch (e) {
    error = errorText(e);
    log(`  soak error: ${error}`);
  } finally {
    await Promise.all(clients.map((c) => c.call('close-all', {}, 10_000).catch(() => undefined)));
    await server.child.stop(5000);
    await Promise.all(clients.map((c) => c.stop(3000)));
  }

  const peak = Math.max(0, ...samples.map((s) => s.connections));
  const peakAt = samples.findIndex((s) => s.connections === peak);
  // From the peak to the end of the churn (later samples are the final disconnect).
  const afterPeak = samples
    .slice(peakAt)
    .filter((s) => s.t <= config.soakMs / 1000)
    .map((s) => s.connections);
  const sustained = {
    min: Math.min(...afterPeak),
    median: median(afterPeak),
    serverCpuPct: median(samples.map((s) => s.cpuPct)),
  };
  const heapGrowth = start && end ? end.memory.heapUsed / start.memory.heapUsed - 1 : NaN;
  const checks: { check: string; value: string; target: string; pass: boolean }[] = [];
  const add = (check: string, value: string, target: string, pass: boolean) =>
    checks.push({ check, value, target, pass });
  if (load && drained && end && start) {
    add(
      'peak open connections (server registry, 1 s samples)',
      fmt(peak, 0),
      `≥ 95 % of ${fmt(config.soakConns, 0)}`,
      peak >= 0.95 * config.soakConns,
    );
    add(
      'registry after everyone left',
      String(drained.connections),
      '0',
      drained.connections === 0,
    );
    add('rooms after everyone left', String(drained.rooms), '0', drained.rooms === 0);
    add(
      'heap after GC, start → end',
      `${fmt(start.memory.heapUsed / MiB, 1)} → ${fmt(end.memory.heapUsed / MiB, 1)} MiB (${heapGrowth >= 0 ? '+' : ''}${fmt(heapGrowth * 100, 1)} %)`,
      '≤ +10 %',
      heapGrowth <= 0.1,
    );
    add('errors logged by the server', String(end.logged.error), '0', end.logged.error === 0);
    add(
      'client errors and unexpected closes',
      `${Object.values(load.errors).reduce((a, b) => a + b, 0)} errors, ${load.unexpectedCloses} unexpected closes, ${load.failed} failed connects`,
      '0',
      Object.keys(load.errors).length === 0 && load.unexpectedCloses === 0 && load.failed === 0,
    );
  }
  const pass = !error && checks.length > 0 && checks.every((c) => c.pass);
  await beforeReport();
  const runtimeS = (now() - started) / 1000;
  const lines = [
    `## Soak: ${fmt(config.soakConns, 0)} connections, ${fmt(config.soakMs / 1000, 0)} s of churn: ${pass ? 'PASS' : 'FAIL'}`,
    '',
    machineLine(machine),
    `- Our library (lib/) with rate limit off, connection limits 50,000, heartbeat every 10 s; ${config.workers} load processes; lifetimes ${config.soakLifeMinMs}–${config.soakLifeMaxMs} ms, ${fmt(config.soakTerminateRatio * 100, 0)} % of leavers drop the TCP connection without a close handshake; ${config.soakRoomsPerConn} of ${config.soakRooms} rooms per connection; ${config.soakRoomsPerTick} room broadcasts every ${config.soakTickMs} ms and one to the route every ${config.soakTickMs * 10} ms`,
    '',
  ];
  if (error) lines.push(`**error**: ${error}`, '');
  if (checks.length) {
    lines.push('| check | measured | target | |', '| --- | ---: | ---: | --- |');
    for (const c of checks)
      lines.push(`| ${c.check} | ${c.value} | ${c.target} | ${c.pass ? 'pass' : '**FAIL**'} |`);
    lines.push('');
  }
  if (load && boot && start && end) {
    lines.push(
      `- Connections opened ${fmt(load.opened, 0)} (${fmt(load.opened / (config.soakMs / 1000), 0)}/s), closed with a handshake ${fmt(load.closedClean, 0)}, dropped ${fmt(load.terminated, 0)}, failed ${load.failed}; messages received ${fmt(load.messages, 0)}`,
      `- Open connections from the peak (${fmt(samples[peakAt]?.t ?? NaN, 0)} s) to the end of the churn: median ${fmt(sustained.median, 0)}, lowest ${fmt(sustained.min, 0)}; server CPU median ${fmt(sustained.serverCpuPct, 0)} % of a core`,
      `- After the churn: clients closed their last connections within ${fmt(load.clientDrainMs / 1000, 1)} s; the server registry reached 0 ${fmt(serverDrainMs / 1000, 1)} s after that`,
      `- Heap after GC: at boot ${fmt(boot.memory.heapUsed / MiB, 1)} MiB, after warm-up (start) ${fmt(start.memory.heapUsed / MiB, 1)} MiB, end ${fmt(end.memory.heapUsed / MiB, 1)} MiB; RSS ${fmt(start.memory.rss / MiB, 0)} → ${fmt(end.memory.rss / MiB, 0)} MiB (peak sample ${fmt(Math.max(0, ...samples.map((s) => s.rssMiB)), 0)} MiB)`,
      `- Server log: ${end.logged.error} errors, ${end.logged.warn} warnings${end.logged.first.length ? `: ${end.logged.first.slice(0, 3).join(' | ')}` : ''}`,
    );
    if (Object.keys(load.errors).length)
      lines.push(
        `- Client errors: ${Object.entries(load.errors)
          .map(([k, v]) => `${v}× ${k}`)
          .join('; ')}`,
      );
    if (Object.keys(load.closeCodes).length)
      lines.push(`- Unexpected close codes: ${JSON.stringify(load.closeCodes)}`);
  }
  if (server.child.stderrLines.length)
    lines.push(`- Server stderr: ${server.child.stderrLines.slice(0, 3).join(' | ')}`);
  lines.push(`- Run time ${fmt(runtimeS, 0)} s`);
  return {
    pass,
    runtimeS,
    error,
    checks,
    peak,
    sustained,
    boot,
    start,
    end,
    drained,
    serverDrainMs,
    warm,
    load,
    samples,
    report: lines.join('\n') + '\n',
  };
}
