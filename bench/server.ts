/**
 * One server variant in its own process: `node --expose-gc server.js <variant> [--enhanced]
 * [--metrics] [--soak] [--heartbeat]`. It listens on 127.0.0.1:0, reports `{ event: 'ready', port, … }`,
 * then answers the orchestrator:
 *
 * - `stats { gc }` → CPU time (`process.cpuUsage()`), memory (after two full GCs when `gc`),
 *   open connections, what was logged;
 * - `broadcast { mode: 'paced' | 'burst', count, bytes }` → sends `count` tick messages to
 *   every connection, one per event-loop turn (`setImmediate`) or all in one synchronous loop;
 *   answers with the time of the first send and the CPU time at that moment;
 * - `joins` → how many `join` messages the server handled (variants with rooms);
 * - `room-broadcast { rooms, perTurn, roomCount, bytes }` → one tick message to each room of
 *   `rooms` (indices into `room-0` … `room-(roomCount-1)`), `perTurn` of them in one
 *   synchronous loop per event-loop turn, turns separated by `setImmediate`; answers as
 *   `broadcast` does;
 * - `soak-start`, `soak-stop`, `soak-stats` (our library only);
 * - `shutdown` → exits at once (the measurements are over; clients are gone or going).
 */
import { emitEvent, serveRequests } from './lib/ipc.js';
import { now, tickMessage, tickPad } from './lib/common.js';
import type { BenchServer, ServerArgs, SoakTickOptions } from './servers/types.js';

async function startVariant(variant: string, args: ServerArgs): Promise<BenchServer> {
  switch (variant) {
    case 'ws-naive':
    case 'ws-best':
      return (await import('./servers/ws-raw.js')).startRawWs(
        variant === 'ws-naive' ? 'naive' : 'best',
      );
    case 'nest-gateway':
      return (await import('./servers/nest-gateway.js')).startNestGateway(args.enhanced);
    case 'socketio':
      return (await import('./servers/socketio.js')).startSocketIo();
    case 'uws':
      return (await import('./servers/uws.js')).startUws();
    case 'ours':
      return (await import('./servers/ours.js')).startOurs(args);
    default:
      throw new Error(`unknown variant ${variant}`);
  }
}

function roomsOf(variant: string, server: BenchServer): NonNullable<BenchServer['rooms']> {
  if (!server.rooms) throw new Error(`${variant} has no rooms`);
  return server.rooms;
}

function fullGc(): boolean {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) return false;
  gc();
  gc();
  return true;
}

async function main(): Promise<void> {
  const [variant, ...flags] = process.argv.slice(2);
  const args: ServerArgs = {
    enhanced: flags.includes('--enhanced'),
    metrics: flags.includes('--metrics'),
    soak: flags.includes('--soak'),
    heartbeat: flags.includes('--heartbeat'),
  };
  const server = await startVariant(variant, args);

  serveRequests({
    stats: ({ gc }: { gc?: boolean }) => {
      const collected = gc ? fullGc() : false;
      return {
        time: now(),
        cpu: process.cpuUsage(),
        memory: process.memoryUsage(),
        gc: collected,
        connections: server.connections(),
        logged: server.logged(),
      };
    },
    broadcast: ({
      mode,
      count,
      bytes,
    }: {
      mode: 'paced' | 'burst';
      count: number;
      bytes: number;
    }) => {
      const pad = tickPad(bytes);
      const cpuStart = process.cpuUsage();
      const firstSend = now();
      const size = Buffer.byteLength(JSON.stringify(tickMessage(firstSend, 0, pad)));
      const connections = server.connections();
      if (mode === 'burst') {
        server.broadcast(tickMessage(firstSend, 0, pad));
        for (let seq = 1; seq < count; seq++) server.broadcast(tickMessage(now(), seq, pad));
        return { firstSend, lastSend: now(), cpuStart, size, connections };
      }
      return new Promise((resolve) => {
        let seq = 0;
        const step = () => {
          server.broadcast(tickMessage(seq === 0 ? firstSend : now(), seq, pad));
          if (++seq < count) setImmediate(step);
          else resolve({ firstSend, lastSend: now(), cpuStart, size, connections });
        };
        step();
      });
    },
    joins: () => ({ joins: roomsOf(variant, server).joins() }),
    'room-broadcast': ({
      rooms,
      perTurn,
      roomCount,
      bytes,
    }: {
      rooms: Int32Array;
      perTurn: number;
      roomCount: number;
      bytes: number;
    }) => {
      const target = roomsOf(variant, server);
      const names = Array.from({ length: roomCount }, (_, k) => `room-${k}`);
      const pad = tickPad(bytes);
      const cpuStart = process.cpuUsage();
      const firstSend = now();
      const size = Buffer.byteLength(JSON.stringify(tickMessage(firstSend, 0, pad)));
      const connections = server.connections();
      return new Promise((resolve) => {
        let seq = 0;
        const turn = () => {
          const end = Math.min(rooms.length, seq + perTurn);
          for (; seq < end; seq++)
            target.broadcast(
              names[rooms[seq]],
              tickMessage(seq === 0 ? firstSend : now(), seq, pad),
            );
          if (seq < rooms.length) setImmediate(turn);
          else resolve({ firstSend, lastSend: now(), cpuStart, size, connections });
        };
        turn();
      });
    },
    'soak-start': (options: SoakTickOptions) => server.soak!.start(options),
    'soak-stop': () => server.soak!.stop(),
    'soak-stats': ({ gc }: { gc?: boolean }) => {
      if (gc) fullGc();
      return {
        ...server.soak!.stats(),
        time: now(),
        cpu: process.cpuUsage(),
        memory: process.memoryUsage(),
        logged: server.logged(),
      };
    },
    shutdown: () => {
      setImmediate(() => process.exit(0));
    },
  });
  process.on('uncaughtException', (error) => {
    process.stderr.write(`uncaughtException: ${error.stack ?? error}\n`);
    process.exit(70);
  });
  emitEvent('ready', {
    port: server.port,
    path: server.path,
    client: server.client,
    info: server.info,
    pid: process.pid,
    gc: typeof (globalThis as { gc?: unknown }).gc === 'function',
  });
}

main().catch((error) => {
  process.stderr.write(`server failed to start: ${error?.stack ?? error}\n`);
  process.exit(1);
});
