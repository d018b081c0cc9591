/**
 * The app of the recovery bench (bench/recovery.ts), one process:
 * `node --expose-gc recovery-app.js [--redis-url=URL --key-prefix=P]`. Routes `/plain` (no
 * recovery) and `/rec` (`recovery: { window: 600000, maxMessages: 2000 }`), the bench options
 * of ours.ts; on `RedisBroadcastTransport` when a URL is given. Reports `{ event: 'ready', port }`,
 * then answers:
 *
 * - `burst { route, count, bytes }` → `count` broadcasts of ~`bytes` B to the route in one
 *   synchronous loop; answers with the CPU time at its start;
 * - `state { gc }` → CPU time, heap, connections, transport readiness;
 * - `shutdown` → exits.
 */
import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { AddressInfo } from 'node:net';
import { BroadcastService, WsConnectionRegistry, WsRoute, WsRoutesModule } from '../lib/index.js';
import { RedisBroadcastTransport } from '../lib/redis/index.js';
import { now, tickMessage, tickPad } from './lib/common.js';
import { emitEvent, serveRequests } from './lib/ipc.js';
import { BENCH_OPTIONS } from './servers/ours.js';

@WsRoute('/plain')
class PlainRoute {}

@WsRoute('/rec', { recovery: { window: 600_000, maxMessages: 2_000 } })
class RecoveryRoute {}

function flag(name: string): string | undefined {
  return process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) || undefined;
}

async function main(): Promise<void> {
  const redisUrl = flag('redis-url');
  const transport = redisUrl
    ? new RedisBroadcastTransport({ url: redisUrl, keyPrefix: flag('key-prefix') ?? 'bench-rec' })
    : undefined;

  @Module({
    imports: [
      WsRoutesModule.forRoot({
        ...BENCH_OPTIONS,
        ...(transport ? { broadcastTransport: transport } : {}),
      }),
    ],
    providers: [PlainRoute, RecoveryRoute],
  })
  class RecoveryBenchModule {}

  const app = await NestFactory.create(RecoveryBenchModule, { logger: ['error', 'warn'] });
  await app.listen(0, '127.0.0.1');
  const broadcast = app.get(BroadcastService);
  const registry = app.get(WsConnectionRegistry);
  serveRequests({
    burst: ({ route, count, bytes }: { route: string; count: number; bytes: number }) => {
      const pad = tickPad(bytes);
      const cpu = process.cpuUsage();
      const start = now();
      const to = broadcast.toRoute(route);
      for (let seq = 1; seq <= count; seq++) to.send(tickMessage(now(), seq, pad));
      return { cpu, start };
    },
    // Exits on its own (so that a `--cpu-prof` profile is written), after answering.
    shutdown: () => {
      setImmediate(() => process.exit(0));
      return 'bye';
    },
    state: ({ gc }: { gc?: boolean }) => {
      const collect = (globalThis as { gc?: () => void }).gc;
      if (gc && collect) {
        collect();
        collect();
      }
      return {
        cpu: process.cpuUsage(),
        // The frames are Buffers: their bytes are counted in arrayBuffers, not in the heap.
        heapUsed: process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers,
        connections: registry.size,
        ready: broadcast.transportReady,
      };
    },
  });
  const { port } = app.getHttpServer().address() as AddressInfo;
  emitEvent('ready', { port });
}

void main();
