/**
 * The control channel between the orchestrator and its child processes: requests carry an id
 * and get exactly one answer; children also push events (`{ event: … }`) on their own.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { createWriteStream, type WriteStream } from 'node:fs';
import { errorText, TimeoutError } from './common.js';

export interface Request {
  id: number;
  cmd: string;
  [key: string]: unknown;
}

type Handler = (request: any) => unknown;

/** Child side: answers requests with the handler of their `cmd`. */
export function serveRequests(handlers: Record<string, Handler>): void {
  process.on('message', async (message: Request) => {
    if (typeof message?.id !== 'number') return;
    const handler = handlers[message.cmd];
    try {
      if (!handler) throw new Error(`unknown command ${message.cmd}`);
      const result = await handler(message);
      process.send!({ id: message.id, ok: true, result });
    } catch (error) {
      process.send!({ id: message.id, ok: false, error: errorText(error) });
    }
  });
  // The orchestrator went away: nothing is left to measure.
  process.on('disconnect', () => process.exit(0));
}

/** Child side: pushes an event to the orchestrator. */
export function emitEvent(event: string, payload: Record<string, unknown> = {}): void {
  process.send?.({ event, ...payload });
}

export interface ForkOptions {
  /** Name in logs and error messages. */
  name: string;
  args?: string[];
  nodeFlags?: string[];
  env?: NodeJS.ProcessEnv;
  /** Raise the soft file-descriptor limit to the hard one before node starts. */
  raiseFdLimit?: boolean;
  /** Where the child's stdout and stderr go, each line prefixed with its name. */
  log?: WriteStream;
}

/** Parent side: a forked child with request/answer calls and events, all bounded in time. */
export class Child extends EventEmitter {
  /** Every child still running, so that an interrupted run can end them (by pid). */
  static readonly running = new Set<Child>();

  static killAll(): void {
    for (const child of Child.running) child.proc.kill('SIGKILL');
  }

  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (v: any) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }
  >();
  exited = false;
  exitInfo = '';
  /** Lines the child wrote to stderr (kept for the report). */
  readonly stderrLines: string[] = [];

  private constructor(
    readonly name: string,
    readonly proc: ChildProcess,
  ) {
    super();
    proc.on('message', (message: any) => {
      if (typeof message?.id === 'number') {
        const call = this.pending.get(message.id);
        if (!call) return;
        this.pending.delete(message.id);
        clearTimeout(call.timer);
        if (message.ok) call.resolve(message.result);
        else call.reject(new Error(`${name}: ${message.error}`));
      } else if (typeof message?.event === 'string') {
        this.emit(message.event, message);
      }
    });
    Child.running.add(this);
    proc.on('exit', (code, signal) => {
      Child.running.delete(this);
      this.exited = true;
      this.exitInfo = signal ? `signal ${signal}` : `code ${code}`;
      for (const [id, call] of this.pending) {
        clearTimeout(call.timer);
        call.reject(new Error(`${name} exited (${this.exitInfo})`));
        this.pending.delete(id);
      }
      this.emit('exited', this.exitInfo);
    });
  }

  static start(script: string, options: ForkOptions): Child {
    const nodeFlags = options.nodeFlags ?? [];
    // fork() runs execPath with [...execArgv, script, ...args]: through `sh -c` the limit is
    // raised and then `exec` replaces the shell by node, keeping the IPC channel.
    const viaShell = options.raiseFdLimit
      ? {
          execPath: '/bin/sh',
          execArgv: [
            '-c',
            'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"',
            process.execPath,
            ...nodeFlags,
          ],
        }
      : { execArgv: nodeFlags };
    const proc = fork(script, options.args ?? [], {
      ...viaShell,
      env: { ...process.env, ...options.env },
      serialization: 'advanced',
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    const child = new Child(options.name, proc);
    const forward = (stream: NodeJS.ReadableStream | null, tag: string) => {
      let rest = '';
      stream?.setEncoding('utf8');
      stream?.on('data', (chunk: string) => {
        const lines = (rest + chunk).split('\n');
        rest = lines.pop() ?? '';
        for (const line of lines) {
          options.log?.write(`[${options.name} ${tag}] ${line}\n`);
          if (tag === 'err' && child.stderrLines.length < 50) child.stderrLines.push(line);
        }
      });
    };
    forward(proc.stdout, 'out');
    forward(proc.stderr, 'err');
    return child;
  }

  /** Sends a request; rejects on the child's error, its exit, or after `timeoutMs`. */
  call<T = any>(cmd: string, params: Record<string, unknown> = {}, timeoutMs = 30_000): Promise<T> {
    if (this.exited) return Promise.reject(new Error(`${this.name} exited (${this.exitInfo})`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new TimeoutError(`${this.name} ${cmd}`, timeoutMs));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.proc.send({ id, cmd, ...params });
    });
  }

  /** The next event of this name, or a rejection after `timeoutMs` or at the child's exit. */
  next<T = any>(event: string, timeoutMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        this.off(event, onEvent);
        this.off('exited', onExit);
      };
      const onEvent = (message: T) => {
        cleanup();
        resolve(message);
      };
      const onExit = (info: string) => {
        cleanup();
        reject(new Error(`${this.name} exited (${info})`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new TimeoutError(`${this.name} ${event}`, timeoutMs));
      }, timeoutMs);
      this.on(event, onEvent);
      this.on('exited', onExit);
      if (this.exited) onExit(this.exitInfo);
    });
  }

  /** Asks the child to exit, and kills it (by its pid) if it has not after `graceMs`. */
  async stop(graceMs = 5000): Promise<void> {
    if (this.exited) return;
    const exited = new Promise<void>((resolve) => this.proc.once('exit', () => resolve()));
    this.call('shutdown', {}, graceMs).catch(() => undefined);
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }
}

export function openLog(path: string): WriteStream {
  return createWriteStream(path, { flags: 'a' });
}
