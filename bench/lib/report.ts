/** The Markdown report: tables with every figure next to its ratio to raw `ws`'s best loop. */
import type { EchoVariantResult } from '../echo.js';
import type { FanoutSummary, FanoutVariantResult } from '../fanout.js';
import { ROOM_VARIANTS, type Config } from './config.js';
import type { MachineInfo } from './machine.js';

export const REFERENCE = 'ws-best';

export const VARIANT_NOTES: Record<string, string> = {
  'ws-naive':
    'raw `ws` server; broadcast `for (c of wss.clients) c.send(JSON.stringify(obj))`, to a room the same loop over its members (a hand-made `Map<room, Set<ws>>`); echo: parse, `ws.send(JSON.stringify(reply))`',
  'ws-best':
    'raw `ws` server; broadcast serialized and framed once (`WebSocket.Sender.frame`), written to each `ws._socket`, every socket corked once per event-loop turn and uncorked on the next tick; to a room (a hand-made `Map<room, Set<ws>>`) framed once and written to the socket of each member, corked at its first write of the turn; echo as ws-naive (in the echo table it is "raw ws")',
  'nest-gateway':
    '`@WebSocketGateway({ path })` on `@nestjs/platform-ws` `WsAdapter`; broadcast `JSON.stringify` once then `client.send(data)` over `server.clients`; echo `@SubscribeMessage` returning `{ event, data }`',
  'nest-gateway-enhanced':
    'nest-gateway with one pass-through guard, pipe and interceptor on the echo method',
  socketio:
    '`@WebSocketGateway` on `@nestjs/platform-socket.io` (`IoAdapter`), WebSocket transport only, socket.io-client load; broadcast `server.emit("tick", obj)`; echo `@SubscribeMessage` returning `{ event, data }`',
  uws: 'uWebSockets.js: every socket subscribes to one topic, broadcast `app.publish`; rooms are topics (`ws.subscribe(room)`, `app.publish(room, json)`); echo parse + `ws.send`',
  ours: 'nestjs-ws-routes from lib/: `@WsRoute("/bench")`, broadcast `broadcast.toRoute(Route).send(obj)`, to a room `broadcast.to(room).send(obj)` (`@OnMessage("join")` does `conn.join(room)`); echo `@OnMessage("echo")` returning `{ event, data }`; `rateLimit: false`, connection limits 50,000, heartbeat off',
  'ours-metrics':
    'ours with `metrics: { registry }` (a prom-client `Registry`, scraped every 5 s): every count and both histograms on',
  'ours-enhanced':
    'ours with one pass-through guard, pipe and interceptor on the echo method (`@UseGuards`/`@UsePipes`/`@UseInterceptors` on the method: per message)',
};

export function fmt(value: number, digits?: number): string {
  if (!Number.isFinite(value)) return '—';
  const abs = Math.abs(value);
  const d = digits ?? (abs >= 100 ? 0 : abs >= 10 ? 1 : abs >= 1 ? 2 : 3);
  return value.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
}

export function ratio(value: number, reference: number): string {
  if (!Number.isFinite(value) || !Number.isFinite(reference) || reference === 0) return '—';
  return `${(value / reference).toFixed(2)}×`;
}

const cell = (value: number, reference: number, unit = '') =>
  Number.isFinite(value) ? `${fmt(value)}${unit} (${ratio(value, reference)})` : '—';

function table(header: string[], rows: string[][]): string {
  const lines = [
    `| ${header.join(' | ')} |`,
    `| ${header.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`,
    ...rows.map((row) => `| ${row.join(' | ')} |`),
  ];
  return lines.join('\n');
}

function fanoutCells(summary: FanoutSummary | undefined, ref: FanoutSummary | undefined): string[] {
  if (!summary) return ['—', '—', '—', '—'];
  if (summary.status !== 'ok') return [summary.status, '—', '—', '—'];
  return [
    cell(summary.endToEndMs, ref?.endToEndMs ?? NaN, ' ms'),
    cell(summary.deliveriesPerSecond / 1e6, (ref?.deliveriesPerSecond ?? NaN) / 1e6, 'M/s'),
    cell(summary.serverCpuUsPerDelivery, ref?.serverCpuUsPerDelivery ?? NaN, ' µs'),
    `${fmt(summary.p50Ms)} / ${fmt(summary.p99Ms)} ms (${ratio(summary.p50Ms, ref?.p50Ms ?? NaN)} / ${ratio(summary.p99Ms, ref?.p99Ms ?? NaN)})`,
  ];
}

/** The rounds' range of round trips/s, e.g. " [41,000–44,800]". */
function spread(r: EchoVariantResult): string {
  if (!r.rounds || r.rounds.length < 2) return '';
  const values = r.rounds.map((x) => x.roundTripsPerSecond);
  return ` [${fmt(Math.min(...values), 0)}–${fmt(Math.max(...values), 0)}]`;
}

export interface Goal {
  goal: string;
  measured: number;
  target: string;
  pass: boolean | undefined;
}

export function goals(fanout: FanoutVariantResult[], echo: EchoVariantResult[]): Goal[] {
  const f = (v: string) => fanout.find((r) => r.variant === v);
  const e = (v: string) => echo.find((r) => r.variant === v && r.status === 'ok');
  const list: Goal[] = [];
  const add = (goal: string, measured: number, target: string, ok: (x: number) => boolean) =>
    list.push({
      goal,
      measured,
      target,
      pass: Number.isFinite(measured) ? ok(measured) : undefined,
    });
  const burst = (v: string) => f(v)?.burst?.endToEndMs ?? NaN;
  // Issue 13's floors: a burst costs what uWebSockets.js costs, a paced fan-out beats ws.
  add(
    'fan-out burst end-to-end, ours / uws',
    burst('ours') / burst('uws'),
    '≤ 1.1',
    (x) => x <= 1.1,
  );
  const burstCpu = (v: string) => f(v)?.burst?.serverCpuUsPerDelivery ?? NaN;
  add(
    'fan-out burst CPU per delivery, ours / uws',
    burstCpu('ours') / burstCpu('uws'),
    '≤ 1.3',
    (x) => x <= 1.3,
  );
  const roomCpu = (v: string) => f(v)?.rooms?.summary?.serverCpuUsPerDelivery ?? NaN;
  add(
    'room broadcast CPU per delivery, ours / uws',
    roomCpu('ours') / roomCpu('uws'),
    '≤ 1.3',
    (x) => x <= 1.3,
  );
  add(
    'fan-out burst, ws-naive / ours (speed-up)',
    burst('ws-naive') / burst('ours'),
    '≥ 10',
    (x) => x >= 10,
  );
  add(
    'fan-out paced end-to-end, ours / ws-best',
    (f('ours')?.paced?.endToEndMs ?? NaN) / (f(REFERENCE)?.paced?.endToEndMs ?? NaN),
    '≤ 0.9',
    (x) => x <= 0.9,
  );
  const rps = (v: string) => e(v)?.roundTripsPerSecond ?? NaN;
  const cpu = (v: string) => e(v)?.serverCpuUsPerReply ?? NaN;
  add(
    'echo bare, ours / raw ws round trips/s',
    rps('ours') / rps(REFERENCE),
    '≥ 0.85',
    (x) => x >= 0.85,
  );
  add(
    'echo bare, ours / raw ws server CPU per reply',
    cpu('ours') / cpu(REFERENCE),
    '≤ 1.2',
    (x) => x <= 1.2,
  );
  add(
    'echo guard+pipe+interceptor, ours / raw ws round trips/s',
    rps('ours-enhanced') / rps(REFERENCE),
    '≥ 0.7',
    (x) => x >= 0.7,
  );
  add(
    'echo guard+pipe+interceptor, ours / raw ws CPU per reply',
    cpu('ours-enhanced') / cpu(REFERENCE),
    '≤ 1.5',
    (x) => x <= 1.5,
  );
  add(
    'echo bare, ours / nest-gateway round trips/s',
    rps('ours') / rps('nest-gateway'),
    '≥ 1.5',
    (x) => x >= 1.5,
  );
  add(
    'echo enhanced, ours / nest-gateway round trips/s',
    rps('ours-enhanced') / rps('nest-gateway-enhanced'),
    '≥ 1.5',
    (x) => x >= 1.5,
  );
  // Paced, not burst: a burst to a route costs O(1) per socket and per message now (0.07 µs a
  // delivery, ±50 % between rounds), so its ratio is noise; a paced round does one write and
  // one count per delivery, where the metrics' cost would show.
  add(
    'metrics on / off, fan-out paced CPU per delivery',
    (f('ours-metrics')?.paced?.serverCpuUsPerDelivery ?? NaN) /
      (f('ours')?.paced?.serverCpuUsPerDelivery ?? NaN),
    '≤ 1.05',
    (x) => x <= 1.05,
  );
  add(
    'metrics on / off, echo CPU per reply',
    cpu('ours-metrics') / cpu('ours'),
    '≤ 1.05',
    (x) => x <= 1.05,
  );
  const mem = (v: string, key: 'rssPerConnKiB' | 'heapPerConnKiB') => f(v)?.memory?.[key] ?? NaN;
  add(
    'idle RSS per connection, ours / ws',
    mem('ours', 'rssPerConnKiB') / mem(REFERENCE, 'rssPerConnKiB'),
    '≤ 1.15',
    (x) => x <= 1.15,
  );
  add(
    'idle heap per connection, ours / ws',
    mem('ours', 'heapPerConnKiB') / mem(REFERENCE, 'heapPerConnKiB'),
    '≤ 1.15',
    (x) => x <= 1.15,
  );
  return list;
}

const pct = (share: number | undefined) =>
  share !== undefined && Number.isFinite(share) ? `${Math.round(share * 100)} %` : '?';

export function machineLine(machine: MachineInfo): string {
  const p = machine.packages;
  const builds = Object.entries(machine.builds)
    .map(([k, v]) => `${k} ${v}`)
    .join('; ');
  return [
    `- Machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, ${machine.os}; open files limit ${machine.fdLimit}`,
    `- Other load: ${machine.foreignCores !== undefined ? `other processes kept ${fmt(machine.foreignCores, 2)} of the ${machine.cores} cores busy on average during the run; ` : ''}CPU ${pct(machine.busyBefore)} busy just before the run, ${pct(machine.busyAfter)} just after; load average ${machine.loadAverage.join(' ')} at the start${machine.loadAverageEnd ? `, ${machine.loadAverageEnd.join(' ')} at the end` : ''}`,
    `- lib/ (ours) at ${machine.lib}`,
    `- Node ${machine.node}; ws ${p.ws} (platform-ws brings ws ${p['ws (in platform-ws)']}, engine.io ws ${p['ws (in engine.io)']}); bufferutil ${machine.bufferutil}`,
    `- @nestjs/core ${p['@nestjs/core']}, @nestjs/platform-ws ${p['@nestjs/platform-ws']}, @nestjs/platform-socket.io ${p['@nestjs/platform-socket.io']}, socket.io ${p['socket.io']} / socket.io-client ${p['socket.io-client']}`,
    ...(builds ? [`- ${builds}`] : []),
  ].join('\n');
}

export function markdown(
  config: Config,
  machine: MachineInfo,
  fanout: FanoutVariantResult[],
  echo: EchoVariantResult[],
  notes: string[],
  runtimeS: number,
): string {
  const out: string[] = [];
  out.push(`## Broadcast at scale: ${config.quick ? 'quick run' : 'full run'}`, '');
  out.push(machineLine(machine));
  out.push(
    `- Load: ${config.workers} client processes on the same 2 cores as the server (server CPU is \`process.cpuUsage()\` inside the server process); loopback only; run time ${fmt(runtimeS, 0)} s`,
    `- Every figure is followed by its ratio to \`${REFERENCE}\` (raw ws, best loop). "Other load": cores kept busy by processes outside the bench while that variant ran (0 on a quiet machine, 2 = the whole machine); wall-clock figures of a row with other load are pessimistic, its server CPU figures much less so.`,
    '',
  );
  const ref = fanout.find((r) => r.variant === REFERENCE);
  if (fanout.length && config.scenarios.includes('fanout')) {
    const messageBytes = fanout.flatMap((r) => r.rounds).find((r) => r.messageBytes)?.messageBytes;
    out.push(
      `### Fan-out: ${fmt(config.n, 0)} connections × ${config.messages} broadcasts of ${messageBytes ?? config.bytes} B JSON (median of ${config.rounds} round${config.rounds > 1 ? 's' : ''})`,
      '',
      "End-to-end: server's first send → last message at the last client. Throughput: deliveries (connections × broadcasts) per second of end-to-end time. CPU: server CPU time per delivery. Latency: receive time − send time in the message, over all deliveries.",
      '',
    );
    const rows = fanout.map((r) =>
      r.status !== 'ok'
        ? [r.variant, `${r.status}: ${r.error ?? ''}`, '', '', '', '', '', '', '', '']
        : [
            r.variant,
            ...fanoutCells(r.burst, ref?.burst),
            ...fanoutCells(r.paced, ref?.paced),
            fmt(r.foreignCores ?? NaN, 2),
          ],
    );
    out.push(
      table(
        [
          'variant',
          'burst end-to-end',
          'burst throughput',
          'burst CPU/delivery',
          'burst p50 / p99',
          'paced end-to-end',
          'paced throughput',
          'paced CPU/delivery',
          'paced p50 / p99',
          'other load (cores)',
        ],
        rows,
      ),
      '',
    );
  }
  out.push(...roomTable(config, fanout));
  if (fanout.length) {
    out.push(
      `### Connections and idle memory (${fmt(config.n, 0)} connections, after GC, deflate off)`,
      '',
    );
    out.push(
      table(
        [
          'variant',
          'connected',
          'accepted/s',
          'server CPU/accept',
          'RSS/conn idle',
          'heap/conn idle',
          'RSS/conn after fan-out',
          'heap/conn after fan-out',
        ],
        fanout.map((r) => {
          const c = r.connect;
          const m = r.memory;
          const rc = ref?.connect;
          const rm = ref?.memory;
          return [
            r.variant,
            c ? `${fmt(c.serverCounted, 0)}/${fmt(c.requested, 0)}` : r.status,
            c ? cell(c.acceptsPerSecond, rc?.acceptsPerSecond ?? NaN) : '—',
            c
              ? cell(c.serverCpuMsPerAccept * 1000, (rc?.serverCpuMsPerAccept ?? NaN) * 1000, ' µs')
              : '—',
            m ? cell(m.rssPerConnKiB, rm?.rssPerConnKiB ?? NaN, ' KiB') : '—',
            m ? cell(m.heapPerConnKiB, rm?.heapPerConnKiB ?? NaN, ' KiB') : '—',
            m
              ? cell(
                  m.rssPerConnAfterTrafficKiB ?? NaN,
                  rm?.rssPerConnAfterTrafficKiB ?? NaN,
                  ' KiB',
                )
              : '—',
            m
              ? cell(
                  m.heapPerConnAfterTrafficKiB ?? NaN,
                  rm?.heapPerConnAfterTrafficKiB ?? NaN,
                  ' KiB',
                )
              : '—',
          ];
        }),
      ),
      '',
    );
  }
  if (echo.length) {
    const eref = echo.find((r) => r.variant === REFERENCE);
    out.push(
      `### Echo: ${fmt(config.echoConns, 0)} connections, closed loop, ${config.echoBytes}-byte JSON messages (${fmt(config.echoMs / 1000, 1)} s window after ${fmt(config.echoWarmupMs / 1000, 1)} s warm-up${config.rounds > 1 ? `; median of ${config.rounds} rounds, interleaved` : ''})`,
      '',
      `\`${REFERENCE}\` here is the raw ws echo server (the same for ws-naive).`,
      '',
      table(
        [
          'variant',
          'round trips/s',
          'server CPU/reply',
          'server CPU (cores)',
          'RTT p50 / p99',
          'other load (cores)',
        ],
        echo.map((r) =>
          r.status !== 'ok'
            ? [r.variant, `${r.status}: ${r.error ?? ''}`, '', '', '', '']
            : [
                r.variant + (r.badReplies ? ` (${r.badReplies} bad replies!)` : ''),
                cell(r.roundTripsPerSecond, eref?.roundTripsPerSecond ?? NaN) + spread(r),
                cell(r.serverCpuUsPerReply, eref?.serverCpuUsPerReply ?? NaN, ' µs'),
                fmt(r.serverCores, 2),
                `${fmt(r.p50Ms)} / ${fmt(r.p99Ms)} ms (${ratio(r.p50Ms, eref?.p50Ms ?? NaN)} / ${ratio(r.p99Ms, eref?.p99Ms ?? NaN)})`,
                fmt(r.foreignCores ?? NaN, 2),
              ],
        ),
      ),
      '',
    );
  }
  out.push(...metricsCost(fanout, echo));
  const goalList = goals(fanout, echo);
  if (goalList.some((g) => g.pass !== undefined)) {
    out.push('### Goals for ours', '');
    out.push(
      table(
        ['goal', 'measured', 'target', ''],
        goalList.map((g) => [
          g.goal,
          Number.isFinite(g.measured) ? `${g.measured.toFixed(3)}×` : '—',
          g.target,
          g.pass === undefined ? 'not measured' : g.pass ? 'pass' : '**FAIL**',
        ]),
      ),
      '',
    );
  }
  out.push('### Variants', '');
  const shown = new Set([...fanout.map((r) => r.variant), ...echo.map((r) => r.variant)]);
  for (const [variant, note] of Object.entries(VARIANT_NOTES))
    if (shown.has(variant)) out.push(`- \`${variant}\`: ${note}`);
  if (notes.length) out.push('', '### Notes from this run', '', ...notes.map((n) => `- ${n}`));
  return out.join('\n') + '\n';
}

/** The room broadcast: one row per variant that has rooms, ratios to ws-best's rooms. */
function roomTable(config: Config, fanout: FanoutVariantResult[]): string[] {
  const withRooms = fanout.filter((r) => r.rooms);
  if (!withRooms.length) return [];
  const ref = fanout.find((r) => r.variant === REFERENCE)?.rooms?.summary;
  const rounds = withRooms.flatMap((r) => r.rooms!.rounds);
  const messageBytes = rounds.find((r) => r.messageBytes)?.messageBytes ?? config.bytes;
  const deliveries = rounds.find((r) => r.status === 'ok')?.deliveries;
  const members = config.n / config.roomCount;
  const skipped = config.variants.filter((v) => !ROOM_VARIANTS.includes(v));
  return [
    `### Room broadcast: ${fmt(config.roomCount, 0)} rooms of ${fmt(members, members % 1 ? 1 : 0)} members, ${config.roomRepeats} turns × ${config.roomMessages} broadcasts of ${messageBytes} B JSON to random rooms (median of ${config.rounds} round${config.rounds > 1 ? 's' : ''})`,
    '',
    `On each variant's ${fmt(config.n, 0)} connections${config.scenarios.includes('fanout') ? ' (after its fan-out rounds)' : ''}, connection k joins \`room-(k mod ${config.roomCount})\`. Each event-loop turn sends ${config.roomMessages} broadcasts to rooms drawn from a seeded PRNG (the same sequence for every variant) in one synchronous loop${deliveries ? `: ${fmt(deliveries, 0)} deliveries per round` : ''}. End-to-end, CPU and latency as in the fan-out.${skipped.length ? ` Not run (no rooms): ${skipped.join(', ')}.` : ''}`,
    '',
    table(
      [
        'variant',
        'end-to-end',
        'throughput',
        'CPU/delivery',
        'p50 / p99',
        'joins',
        'other load (cores)',
      ],
      withRooms.map((r) => {
        const rooms = r.rooms!;
        if (rooms.status !== 'ok')
          return [r.variant, `${rooms.status}: ${rooms.error ?? ''}`, '', '', '', '', ''];
        return [
          r.variant,
          ...fanoutCells(rooms.summary, ref),
          `${fmt(rooms.joins.counted, 0)}/${fmt(rooms.joins.sent, 0)}`,
          fmt(r.foreignCores ?? NaN, 2),
        ];
      }),
    ),
    '',
  ];
}

/**
 * What the metrics cost: ours-metrics against ours, figure by figure (ratio > 1: slower or
 * dearer with metrics on). Empty unless both ran.
 */
function metricsCost(fanout: FanoutVariantResult[], echo: EchoVariantResult[]): string[] {
  const off = fanout.find((r) => r.variant === 'ours' && r.status === 'ok');
  const on = fanout.find((r) => r.variant === 'ours-metrics' && r.status === 'ok');
  const eOff = echo.find((r) => r.variant === 'ours' && r.status === 'ok');
  const eOn = echo.find((r) => r.variant === 'ours-metrics' && r.status === 'ok');
  const rows: string[][] = [];
  const row = (what: string, offValue: number, onValue: number, unit: string) => {
    if (Number.isFinite(offValue) && Number.isFinite(onValue))
      rows.push([
        what,
        `${fmt(offValue)}${unit}`,
        `${fmt(onValue)}${unit}`,
        ratio(onValue, offValue),
      ]);
  };
  if (off && on) {
    for (const mode of ['burst', 'paced'] as const) {
      row(
        `fan-out ${mode} end-to-end`,
        off[mode]?.endToEndMs ?? NaN,
        on[mode]?.endToEndMs ?? NaN,
        ' ms',
      );
      row(
        `fan-out ${mode} server CPU/delivery`,
        off[mode]?.serverCpuUsPerDelivery ?? NaN,
        on[mode]?.serverCpuUsPerDelivery ?? NaN,
        ' µs',
      );
    }
    row(
      'room broadcast server CPU/delivery',
      off.rooms?.summary?.serverCpuUsPerDelivery ?? NaN,
      on.rooms?.summary?.serverCpuUsPerDelivery ?? NaN,
      ' µs',
    );
    row(
      'heap/conn idle',
      off.memory?.heapPerConnKiB ?? NaN,
      on.memory?.heapPerConnKiB ?? NaN,
      ' KiB',
    );
  }
  if (eOff && eOn) {
    row('echo round trips/s', eOff.roundTripsPerSecond, eOn.roundTripsPerSecond, '');
    row('echo server CPU/reply', eOff.serverCpuUsPerReply, eOn.serverCpuUsPerReply, ' µs');
  }
  if (!rows.length) return [];
  return [
    '### Cost of metrics: ours-metrics against ours',
    '',
    'The same server with `metrics: { registry }` (prom-client, scraped every 5 s) and without; ratio = on / off.',
    '',
    table(['figure', 'metrics off (ours)', 'metrics on (ours-metrics)', 'on / off'], rows),
    '',
  ];
}
