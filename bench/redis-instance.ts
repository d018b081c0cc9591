/**
 * One app instance of the Redis bench in its own process (bench/redis.ts starts one to three):
 * `node --expose-gc redis-instance.js <ours | socketio> [--redis-url=URL --key-prefix=P]`.
 * Without `--redis-url` (ours only) it runs alone, on the in-memory transport. It listens on
 * 127.0.0.1:0, reports `{ event: 'ready', port, … }`, then answers the orchestrator:
 *
 * - `plan { rooms }` → the k-th connection to open from now on joins `rooms[k]` (a list);
 * - `state { gc }` → CPU time (`process.cpuUsage()`), connections (all, and those that joined
 *   their planned rooms), the transport's readiness and frames received from Redis, what was logged;
 * - `send { steps, intervalMs }` → one tick message per step, to everyone (`room` absent) or to
 *   the step's room: all in one synchronous loop (`intervalMs` 0), or one every `intervalMs`;
 *   answers with the time of the first and last send, the CPU time at the first, the size;
 * - `shutdown` → exits at once.
 */
import { now, tickMessage, tickPad } from './lib/common.js';
import { emitEvent, serveRequests } from './lib/ipc.js';

/** What a variant gives this process. */
export interface RedisBenchServer {
  port: number;
  /** Which client library the load processes must use, and the path (ws) they connect to. */
  client: 'ws' | 'socketio';
  path: string;
  info: Record<string, string>;
  /** Open connections, as the server counts them. */
  connections(): number;
  /** Rooms of the connections that open from now on, in their order of arrival. */
  plan(rooms: string[][]): void;
  /** Connections that arrived since the last plan (and joined their rooms). */
  planned(): number;
  /** One broadcast to every connection of every instance. */
  everyone(message: object): void;
  /** One broadcast to the members of a room, on every instance. */
  room(room: string, message: object): void;
  /**
   * Whether the instance reaches the others, the frames it got from Redis so far, and how many
   * of them were its own publishes coming back (when the library tells).
   */
  transport(): {
    ready: boolean;
    received: number;
    echoes?: number;
    details?: Record<string, unknown>;
  };
  logged(): { error: number; warn: number; first: string[] };
  close(): Promise<void>;
}

/** The command line of an instance. */
export interface InstanceArgs {
  redisUrl?: string;
  keyPrefix: string;
}

/** One step of a `send`: a room, or everyone. */
export interface SendStep {
  room?: string;
}

async function startVariant(variant: string, args: InstanceArgs): Promise<RedisBenchServer> {
  switch (variant) {
    case 'ours':
      return (await import('./servers/ours-redis.js')).startOursRedis(args);
    case 'socketio':
      return (await import('./servers/socketio-redis.js')).startSocketIoRedis(args);
    default:
      throw new Error(`unknown variant ${variant}`);
  }
}

function fullGc(): boolean {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) return false;
  gc();
  gc();
  return true;
}

function parseArgs(argv: string[]): { variant: string; args: InstanceArgs } {
  const [variant, ...rest] = argv;
  const flag = (name: string) =>
    rest.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) || undefined;
  return {
    variant,
    args: { redisUrl: flag('redis-url'), keyPrefix: flag('key-prefix') ?? 'bench' },
  };
}

async function main(): Promise<void> {
  const { variant, args } = parseArgs(process.argv.slice(2));
  const server = await startVariant(variant, args);
  serveRequests({
    plan: ({ rooms }: { rooms: string[][] }) => {
      server.plan(rooms);
      return { planned: rooms.length };
    },
    state: ({ gc }: { gc?: boolean }) => {
      const collected = gc ? fullGc() : false;
      return {
        time: now(),
        cpu: process.cpuUsage(),
        memory: process.memoryUsage(),
        gc: collected,
        connections: server.connections(),
        planned: server.planned(),
        transport: server.transport(),
        logged: server.logged(),
      };
    },
    send: ({
      steps,
      intervalMs,
      bytes,
    }: {
      steps: SendStep[];
      intervalMs: number;
      bytes: number;
    }) => {
      const pad = tickPad(bytes);
      const cpuStart = process.cpuUsage();
      const firstSend = now();
      const size = Buffer.byteLength(JSON.stringify(tickMessage(firstSend, 0, pad)));
      const sendOne = (seq: number, t: number) => {
        const step = steps[seq];
        const message = tickMessage(t, seq, pad);
        if (step.room === undefined) server.everyone(message);
        else server.room(step.room, message);
      };
      if (steps.length === 0) return { firstSend, lastSend: firstSend, cpuStart, size };
      if (intervalMs <= 0) {
        sendOne(0, firstSend);
        for (let seq = 1; seq < steps.length; seq++) sendOne(seq, now());
        return { firstSend, lastSend: now(), cpuStart, size };
      }
      return new Promise((resolve) => {
        let seq = 0;
        const step = () => {
          sendOne(seq, seq === 0 ? firstSend : now());
          if (++seq < steps.length) setTimeout(step, intervalMs);
          else resolve({ firstSend, lastSend: now(), cpuStart, size });
        };
        step();
      });
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
  });
}

main().catch((error) => {
  process.stderr.write(`instance failed to start: ${error?.stack ?? error}\n`);
  process.exit(1);
});
