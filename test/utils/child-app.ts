import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { ChildMessage, ChildRequest } from '../fixtures/serve-child.js';

const root = fileURLToPath(new URL('../../', import.meta.url));
const register = new URL('./ts-register.mjs', import.meta.url).href;

/** How the child ended: Node exits with 1 on an uncaught exception or unhandled rejection. */
export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A Nest application running in its own process (a fixture under test/fixtures/). */
export interface ChildApp {
  readonly pid: number;
  readonly port: number;
  /** Every line the child wrote, stdout (its log lines) and stderr, in arrival order. */
  readonly logs: readonly string[];
  readonly stderr: readonly string[];
  /** Settles when the child has exited, for whatever reason. */
  readonly exited: Promise<ChildExit>;
  /** The exit, once it happened. */
  readonly exit: ChildExit | undefined;
  alive(): boolean;
  url(path: string): string;
  /** Throws, quoting the child's stderr, if the child has exited (the process crashed). */
  assertAlive(): void;
  /**
   * Runs `body` and fails with the child's stderr if the child dies meanwhile, or within
   * `grace` ms of `body` failing (a client error such as ECONNRESET is often the crash seen
   * from outside): so a crash reads as a crash, not as the symptom a client saw.
   */
  whileAlive<T>(body: () => Promise<T>, grace?: number): Promise<T>;
  /** Sends a command over IPC and resolves with the child's result; rejects if it exits. */
  request<T = unknown>(command: string, arg?: unknown, timeout?: number): Promise<T>;
  /** Resolves with the first log line (from now or before) that contains `text`. */
  /** The first log line from index `from` on that matches (logged already, or within `timeout`). */
  waitForLog(text: string | RegExp, timeout?: number, from?: number): Promise<string>;
  /** SIGTERM, then SIGKILL after `timeout` ms; resolves with the exit. */
  stop(timeout?: number): Promise<ChildExit>;
}

/**
 * Starts `fixture` (a path from the repository root) in a child process with the TypeScript
 * loader, and resolves once it reports its port. A crash of the app is then the child's exit,
 * seen by the test as a failed assertion instead of the death of the test runner.
 */
export async function startChildApp(
  fixture: string,
  options: { env?: Record<string, string>; timeout?: number } = {},
): Promise<ChildApp> {
  const timeout = options.timeout ?? 20_000;
  const child = fork(fixture, [], {
    cwd: root,
    // Not the runner's own flags (--experimental-vm-modules): a plain Node process.
    execArgv: ['--enable-source-maps', '--import', register],
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  const app = new Child(child);
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${fixture} did not listen within ${timeout} ms\n${app.output()}`));
    }, timeout);
    child.on('message', (message: ChildMessage) => {
      if (message.type !== 'listening') return;
      clearTimeout(timer);
      resolve(message.port);
    });
    void app.exited.then((exit) => {
      clearTimeout(timer);
      reject(new Error(`${fixture} exited before listening (${describe(exit)})\n${app.output()}`));
    });
  });
  app.port = port;
  return app;
}

class Child implements ChildApp {
  port = 0;
  readonly logs: string[] = [];
  readonly stderr: string[] = [];
  readonly exited: Promise<ChildExit>;
  exit: ChildExit | undefined;
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (value: unknown) => void; reject: (error: Error) => void }
  >();

  constructor(private readonly child: ChildProcess) {
    readLines(child, 'stdout', (line) => this.logs.push(line));
    readLines(child, 'stderr', (line) => {
      this.logs.push(line);
      this.stderr.push(line);
    });
    this.exited = new Promise((resolve) =>
      // 'close' rather than 'exit': by then stdout and stderr are fully read.
      child.once('close', (code, signal) => {
        this.exit = { code, signal };
        for (const { reject } of this.pending.values()) reject(this.crashError());
        this.pending.clear();
        resolve(this.exit);
      }),
    );
    child.on('message', (message: ChildMessage) => {
      if (message.type !== 'reply') return;
      const waiter = this.pending.get(message.id);
      if (!waiter) return;
      this.pending.delete(message.id);
      if (message.error !== undefined) waiter.reject(new Error(message.error));
      else waiter.resolve(message.result);
    });
    // A write to a child that just died; its exit is reported through `exited`.
    child.on('error', () => undefined);
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  alive(): boolean {
    return this.exit === undefined && this.child.exitCode === null && !this.child.signalCode;
  }

  url(path: string): string {
    return `ws://127.0.0.1:${this.port}${path}`;
  }

  assertAlive(): void {
    if (!this.alive()) throw this.crashError();
  }

  async whileAlive<T>(body: () => Promise<T>, grace = 200): Promise<T> {
    this.assertAlive();
    const died = this.exited.then(() => {
      throw this.crashError();
    });
    try {
      return await Promise.race([body(), died]);
    } catch (error) {
      if (this.alive()) {
        await Promise.race([this.exited, new Promise((resolve) => setTimeout(resolve, grace))]);
      }
      if (this.alive()) throw error;
      const crash = this.crashError();
      if (error instanceof Error && !error.message.startsWith(crash.message.split('\n')[0])) {
        crash.message += `\n--- what the test saw ---\n${error.message}`;
      }
      throw crash;
    } finally {
      died.catch(() => undefined);
    }
  }

  request<T>(command: string, arg?: unknown, timeout = 5000): Promise<T> {
    if (!this.alive()) return Promise.reject(this.crashError());
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`child gave no answer to ${command} within ${timeout} ms`));
      }, timeout);
      this.pending.set(id, {
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value as T);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      const request: ChildRequest = { id, command, arg };
      this.child.send(request);
    });
  }

  async waitForLog(text: string | RegExp, timeout = 3000, from = 0): Promise<string> {
    const matches = (line: string, index: number) =>
      index >= from && (typeof text === 'string' ? line.includes(text) : text.test(line));
    const deadline = Date.now() + timeout;
    for (;;) {
      const line = this.logs.find(matches);
      if (line !== undefined) return line;
      if (!this.alive()) throw this.crashError();
      if (Date.now() > deadline) {
        throw new Error(`no log line with ${String(text)} within ${timeout} ms\n${this.output()}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  async stop(timeout = 3000): Promise<ChildExit> {
    if (this.exit) return this.exit;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), timeout);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }

  /** The last lines of output, for failure messages. */
  output(lines = 60): string {
    const tail = this.logs.slice(-lines);
    return tail.length
      ? `--- child output (last ${tail.length} lines) ---\n${tail.join('\n')}`
      : '';
  }

  private crashError(): Error {
    const stderr = this.stderr.slice(-40).join('\n') || '(nothing on stderr)';
    return new Error(
      `the app's process ${this.pid} died (${this.exit ? describe(this.exit) : 'exiting'})\n` +
        `--- child stderr ---\n${stderr}`,
    );
  }
}

function describe(exit: ChildExit): string {
  return exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`;
}

function readLines(
  child: ChildProcess,
  stream: 'stdout' | 'stderr',
  onLine: (line: string) => void,
): void {
  let partial = '';
  const source = child[stream];
  if (!source) return;
  source.setEncoding('utf8');
  source.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) onLine(line);
  });
  source.on('end', () => {
    if (partial) onLine(partial);
  });
}
