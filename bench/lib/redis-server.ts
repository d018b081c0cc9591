/**
 * One `redis-server` for a bench run: a free port on 127.0.0.1, no persistence, its own
 * temporary dir, stopped at the end (and killed, by its pid, if the orchestrator exits first).
 * The few lines of test/utils/redis-server.ts the bench needs, plus its CPU readings: `INFO cpu`
 * (getrusage, µs) and /proc/<pid>/stat (clock ticks), both cumulative since its start.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from './common.js';

/** Where the server binary is: `REDIS_SERVER_PATH`, else Debian's. */
export const REDIS_SERVER_PATH = process.env.REDIS_SERVER_PATH || '/usr/bin/redis-server';

/** Redis's CPU time so far, by two clocks. */
export interface RedisCpu {
  /** `used_cpu_user + used_cpu_sys` of `INFO cpu`, in ms. */
  infoMs: number;
  /** utime + stime of /proc/<pid>/stat, in ms (10 ms steps); NaN off Linux. */
  procMs: number;
}

/** A running bench Redis. */
export interface BenchRedis {
  readonly port: number;
  /** `redis://127.0.0.1:PORT`. */
  readonly url: string;
  readonly pid: number;
  readonly version: string;
  /** Sends one command over a fresh connection; resolves with the decoded reply. */
  command(...args: string[]): Promise<RespValue>;
  cpu(): Promise<RedisCpu>;
  /** SIGTERM, SIGKILL after 2 s; deletes its dir. Idempotent. */
  stop(): Promise<void>;
}

/** A decoded RESP2 reply. */
export type RespValue = string | number | null | RespValue[];

/** Starts `redis-server` and resolves once it answers as itself (its own `process_id`). */
export async function startBenchRedis(): Promise<BenchRedis> {
  if (!existsSync(REDIS_SERVER_PATH))
    throw new Error(
      `redis-server not found at ${REDIS_SERVER_PATH}: install it (apt-get install redis-server) or set REDIS_SERVER_PATH`,
    );
  const dir = mkdtempSync(join(tmpdir(), 'ws-routes-bench-redis-'));
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      return await launch(port, dir);
    } catch (error) {
      if (attempt >= 5 || !/Address already in use/.test(String(error))) {
        rmSync(dir, { recursive: true, force: true });
        throw error;
      }
    }
  }
}

async function launch(port: number, dir: string): Promise<BenchRedis> {
  const args = [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    'no',
    '--dir',
    dir,
    '--daemonize',
    'no',
  ];
  const child: ChildProcess = spawn(REDIS_SERVER_PATH, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  for (const stream of [child.stdout, child.stderr]) {
    stream?.setEncoding('utf8');
    stream?.on('data', (chunk: string) => {
      if (output.length < 200) output.push(chunk);
    });
  }
  let exit: string | undefined;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exit = signal ? `signal ${signal}` : `code ${code}`;
      resolve();
    });
    child.once('error', (error) => {
      exit ??= error.message;
      if (child.pid === undefined) resolve();
    });
  });
  // The orchestrator exiting (Ctrl+C ends it with process.exit) takes the server with it.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);

  const deadline = Date.now() + 10_000;
  let version: string;
  for (;;) {
    if (exit !== undefined) {
      process.off('exit', killOnExit);
      throw new Error(`redis-server exited at start (${exit}): ${output.join('').slice(-500)}`);
    }
    const info = await respCommand(port, ['INFO', 'server'], 500).catch(() => undefined);
    if (typeof info === 'string' && info.includes(`\nprocess_id:${child.pid}\r`)) {
      version = /redis_version:([^\r\n]+)/.exec(info)?.[1] ?? '?';
      break;
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await exited;
      process.off('exit', killOnExit);
      throw new Error(`redis-server did not answer within 10 s: ${output.join('').slice(-500)}`);
    }
    await sleep(20);
  }
  const pid = child.pid!;
  let stopping: Promise<void> | undefined;
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    pid,
    version,
    command: (...command) => respCommand(port, command),
    cpu: async () => {
      const info = String(await respCommand(port, ['INFO', 'cpu']));
      const field = (name: string) =>
        Number(new RegExp(`^${name}:([0-9.]+)`, 'm').exec(info)?.[1] ?? NaN);
      return {
        infoMs: (field('used_cpu_user') + field('used_cpu_sys')) * 1000,
        procMs: procCpuMs(pid),
      };
    },
    stop: () =>
      (stopping ??= (async () => {
        if (exit === undefined) {
          const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
          child.kill('SIGTERM');
          await exited;
          clearTimeout(timer);
        }
        process.off('exit', killOnExit);
        rmSync(dir, { recursive: true, force: true });
      })()),
  };
}

/** utime + stime of a process, in ms; NaN when /proc cannot tell. */
export function procCpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Clock ticks of 10 ms (USER_HZ = 100 on Linux).
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return NaN;
  }
}

/** A free TCP port on 127.0.0.1, as the kernel hands it out for port 0. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.unref();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

/** One command over a fresh connection; an error reply rejects with its text. */
function respCommand(port: number, args: string[], timeout = 5000): Promise<RespValue> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1' });
    let buffer = Buffer.alloc(0);
    const done = (error: Error | undefined, value?: RespValue) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(value ?? null);
    };
    const timer = setTimeout(
      () => done(new Error(`no reply to ${args[0]} from port ${port} within ${timeout} ms`)),
      timeout,
    );
    socket.on('error', (error) => done(error));
    socket.on('close', () => done(new Error(`port ${port} closed the connection`)));
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      let parsed: [RespValue, number] | undefined;
      try {
        parsed = parseResp(buffer, 0);
      } catch (error) {
        done(error as Error);
        return;
      }
      if (parsed) done(undefined, parsed[0]);
    });
    const encoded = args.map((arg) => `$${Buffer.byteLength(arg)}\r\n${arg}\r\n`).join('');
    socket.write(`*${args.length}\r\n${encoded}`);
  });
}

/** One reply at `offset`: `[value, next offset]`, or undefined while incomplete. */
function parseResp(buffer: Buffer, offset: number): [RespValue, number] | undefined {
  const end = buffer.indexOf('\r\n', offset);
  if (end === -1) return undefined;
  const line = buffer.toString('utf8', offset + 1, end);
  const next = end + 2;
  switch (String.fromCharCode(buffer[offset])) {
    case '+':
      return [line, next];
    case '-':
      throw new Error(line);
    case ':':
      return [Number(line), next];
    case '$': {
      const length = Number(line);
      if (length < 0) return [null, next];
      if (buffer.length < next + length + 2) return undefined;
      return [buffer.toString('utf8', next, next + length), next + length + 2];
    }
    case '*': {
      const length = Number(line);
      if (length < 0) return [null, next];
      const items: RespValue[] = [];
      let at = next;
      for (let i = 0; i < length; i++) {
        const item = parseResp(buffer, at);
        if (!item) return undefined;
        items.push(item[0]);
        at = item[1];
      }
      return [items, at];
    }
    default:
      throw new Error(`not a RESP2 reply: ${JSON.stringify(buffer.toString('utf8', offset, end))}`);
  }
}
