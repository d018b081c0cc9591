/** Starting the server and load processes, all of them bounded in time. */
import { execFileSync } from 'node:child_process';
import type { WriteStream } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { cpuMonitor } from './cpu-monitor.js';
import { Child } from './ipc.js';

const SERVER_SCRIPT = fileURLToPath(new URL('../server.js', import.meta.url));
const CLIENT_SCRIPT = fileURLToPath(new URL('../client.js', import.meta.url));

export interface ProcessOptions {
  log: WriteStream;
  env: NodeJS.ProcessEnv;
  raiseFdLimit: boolean;
  /** Extra node flags for the servers (profiling). */
  serverNodeFlags?: string[];
}

export interface ServerHandle {
  child: Child;
  variant: string;
  port: number;
  path: string;
  client: 'ws' | 'socketio';
  info: Record<string, string>;
  url: string;
}

/**
 * Variants with `-enhanced` run the base variant with one guard, pipe and interceptor; with
 * `-metrics`, with metrics on.
 */
export async function startServer(
  variant: string,
  options: ProcessOptions,
  extraFlags: string[] = [],
): Promise<ServerHandle> {
  const suffix = /-(enhanced|metrics)$/.exec(variant);
  const base = suffix ? variant.slice(0, suffix.index) : variant;
  const flags = suffix ? [`--${suffix[1]}`, ...extraFlags] : extraFlags;
  const child = Child.start(SERVER_SCRIPT, {
    name: `server:${variant}`,
    args: [base, ...flags],
    nodeFlags: ['--expose-gc', ...(options.serverNodeFlags ?? [])],
    env: options.env,
    raiseFdLimit: options.raiseFdLimit,
    log: options.log,
  });
  cpuMonitor.track(child.proc.pid);
  try {
    const ready = await child.next('ready', 30_000);
    const url =
      ready.client === 'socketio'
        ? `http://127.0.0.1:${ready.port}`
        : `ws://127.0.0.1:${ready.port}${ready.path}`;
    return {
      child,
      variant,
      port: ready.port,
      path: ready.path,
      client: ready.client,
      info: ready.info,
      url,
    };
  } catch (error) {
    await child.stop(1000);
    const stderr = child.stderrLines.slice(0, 5).join(' | ');
    throw new Error(`${variant} did not start: ${(error as Error).message} ${stderr}`, {
      cause: error,
    });
  }
}

export async function startClients(count: number, options: ProcessOptions): Promise<Child[]> {
  const clients = Array.from({ length: count }, (_, i) =>
    Child.start(CLIENT_SCRIPT, {
      name: `client${i}`,
      env: options.env,
      raiseFdLimit: options.raiseFdLimit,
      log: options.log,
    }),
  );
  for (const client of clients) cpuMonitor.track(client.proc.pid);
  await Promise.all(clients.map((client) => client.next('ready', 30_000)));
  return clients;
}

/** Splits `total` into `parts` shares that differ by one at most. */
export function shares(total: number, parts: number): number[] {
  return Array.from(
    { length: parts },
    (_, i) => Math.floor(total / parts) + (i < total % parts ? 1 : 0),
  );
}

/** The soft and hard limits on open files of processes started from here. */
export function fdLimits(): { soft: number; hard: number } {
  const out = execFileSync('/bin/sh', ['-c', 'ulimit -Sn; ulimit -Hn'], { encoding: 'utf8' });
  const [soft, hard] = out
    .trim()
    .split('\n')
    .map((line) => (line.trim() === 'unlimited' ? Infinity : Number(line)));
  return { soft, hard };
}
