/**
 * The `redis-server` processes of the Redis tests and of the bench: starting, killing,
 * restarting and stopping them, clusters, and a few commands without a client library. No
 * test-runner globals, so the bench (compiled by tsconfig.sample.json) imports it too;
 * test/utils/redis-server.ts adds `describeRedis` for the specs.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

/**
 * The Redis tests run real `redis-server` processes (Debian's `redis-server` package, which
 * `.ci/run` installs when it is missing; elsewhere `apt-get install redis-server`, or point
 * REDIS_SERVER_PATH at another build, with its `redis-cli` next to it). Never a mock: what
 * they test is how the transport copes with a real server going away and coming back.
 */
export const redisServerPath = process.env.REDIS_SERVER_PATH || '/usr/bin/redis-server';

/** `redis-cli`, next to {@link redisServerPath}. */
export const redisCliPath = join(dirname(redisServerPath), 'redis-cli');

/** Whether both `redis-server` and `redis-cli` are there. */
export function redisAvailable(): boolean {
  return existsSync(redisServerPath) && existsSync(redisCliPath);
}

/** One `redis-server` process on 127.0.0.1, which a test may kill and restart. */
export interface RedisServer {
  readonly port: number;
  /** `redis://127.0.0.1:PORT`. */
  readonly url: string;
  /** The pid of the current process (a new one after {@link restart}). */
  readonly pid: number;
  /** Whether the process is running. */
  readonly alive: boolean;
  /** Everything the server logged, over all its restarts. */
  readonly logs: readonly string[];
  /** Sends `signal` (SIGKILL unless told; one that ends it) and resolves once it exited. */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts the server again on the same port, with the same data dir; resolves once it answers. */
  restart(): Promise<void>;
  /** Stops the server for good (SIGTERM, then SIGKILL) and deletes its dir; idempotent. */
  stop(): Promise<void>;
  /**
   * Runs `redis-cli -p PORT ...args` and resolves with its stdout, trimmed. Error replies are
   * printed, not thrown (redis-cli exits 0 on them); a failure to connect rejects.
   */
  cli(...args: string[]): Promise<string>;
  /** Sends one command over a fresh connection and resolves with the decoded reply. */
  command(...args: string[]): Promise<RespValue>;
}

/** Options of {@link startRedis}. */
export interface StartRedisOptions {
  /** The port; a free ephemeral port unless told. */
  port?: number;
  /** More `redis-server` arguments, after the defaults (so they override them). */
  args?: string[];
}

/** The servers that are running or may run again (not yet stopped). */
const running = new Set<RedisServer>();

/** The servers started and not yet stopped, as of now. */
export function liveRedisServers(): RedisServer[] {
  return [...running];
}
/**
 * The last resort against leaks, should a spec crash or forget to stop its servers: a
 * watchdog process that holds the pids of the live servers and their dirs, and SIGKILLs and
 * deletes them once its stdin closes, that is when this process has exited, however it ended
 * (even by SIGKILL). Not a `process.on('exit')` handler: under Jest, `process` is a copy whose
 * events never fire. The watchdog and the servers are unref'd, so a leaked server does not
 * keep the test runner alive either; it exits once nothing is left to watch.
 */
const WATCHDOG = `
const { rmSync } = require('node:fs');
const pids = new Set();
const dirs = new Set();
let rest = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  const lines = (rest + chunk).split('\\n');
  rest = lines.pop();
  for (const line of lines) {
    const arg = line.slice(2);
    if (line[0] === '+') pids.add(Number(arg));
    else if (line[0] === '-') pids.delete(Number(arg));
    else if (line[0] === 'd') dirs.add(arg);
    else if (line[0] === 'r') dirs.delete(arg);
  }
});
process.stdin.on('end', () => {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
  }
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});
`;

let watchdog: ChildProcess | undefined;
/** What the watchdog holds: live pids and dirs not yet deleted. */
const watched = { pids: new Set<number>(), dirs: new Set<string>() };

/** Tells the watchdog (started when needed, ended when it holds nothing) about a change. */
function watch(op: '+' | '-' | 'd' | 'r', arg: number | string): void {
  if (op === '+') watched.pids.add(arg as number);
  else if (op === '-') watched.pids.delete(arg as number);
  else if (op === 'd') watched.dirs.add(arg as string);
  else watched.dirs.delete(arg as string);
  if (!watchdog) {
    watchdog = spawn(process.execPath, ['-e', WATCHDOG], { stdio: ['pipe', 'ignore', 'ignore'] });
    watchdog.on('error', () => undefined);
    watchdog.stdin?.on('error', () => undefined);
    watchdog.unref();
    (watchdog.stdin as { unref?(): void } | null)?.unref?.();
    for (const pid of watched.pids) watchdog.stdin?.write(`+ ${pid}\n`);
    for (const dir of watched.dirs) watchdog.stdin?.write(`d ${dir}\n`);
  } else {
    watchdog.stdin?.write(`${op} ${arg}\n`);
  }
  if (watched.pids.size === 0 && watched.dirs.size === 0) {
    watchdog.stdin?.end();
    watchdog = undefined;
  }
}

function track(child: ChildProcess): void {
  const pid = child.pid;
  if (pid === undefined) return; // the spawn failed: there is no process to watch
  watch('+', pid);
  child.once('exit', () => watch('-', pid));
}

/**
 * Starts `redis-server` on 127.0.0.1: no persistence (`--save '' --appendonly no`), its own
 * temporary `--dir`, in the foreground. Resolves once it answers: this process, not another
 * server that holds the port (`INFO server` must report the child's `process_id`).
 */
export function startRedis(options: StartRedisOptions = {}): Promise<RedisServer> {
  const extra = options.args ?? [];
  return launch(options.port, async () => extra);
}

/** The options the servers always get; the caller's arguments come after them. */
function baseArgs(port: number, dir: string): string[] {
  return [
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
}

/**
 * Spawns a server on `port`, or on a free ephemeral port, trying another one when the chosen
 * port was taken meanwhile (another process may bind it between our probe and the server).
 */
async function launch(
  port: number | undefined,
  extraArgs: (port: number) => Promise<string[]>,
): Promise<RedisServer> {
  const dir = await mkdtemp(join(tmpdir(), 'ws-routes-redis-'));
  watch('d', dir);
  try {
    for (let attempt = 1; ; attempt++) {
      const chosen = port ?? (await freePort());
      const server = new Server(chosen, dir, [
        ...baseArgs(chosen, dir),
        ...(await extraArgs(chosen)),
      ]);
      try {
        await server.spawnAndWait();
        running.add(server);
        return server;
      } catch (error) {
        if (port !== undefined || attempt >= 5 || !(error instanceof AddressInUseError))
          throw error;
      }
    }
  } catch (error) {
    watch('r', dir);
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

class AddressInUseError extends Error {}

class Server implements RedisServer {
  readonly url: string;
  readonly logs: string[] = [];
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private stopping: Promise<void> | undefined;

  constructor(
    readonly port: number,
    private readonly dir: string,
    private readonly argv: string[],
  ) {
    this.url = `redis://127.0.0.1:${port}`;
  }

  get pid(): number {
    return this.child?.pid ?? -1;
  }

  get alive(): boolean {
    return this.child !== undefined && this.child.exitCode === null && !this.child.signalCode;
  }

  /**
   * Spawns the process and resolves once it answers, as itself: a PING alone could be answered
   * by another server on the port, while this one is about to exit with EADDRINUSE. Rejects,
   * quoting the server's output, if it exits first.
   */
  async spawnAndWait(timeout = 10_000): Promise<void> {
    const from = this.logs.length;
    const child = spawn(redisServerPath, this.argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    track(child);
    let exit: string | undefined;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        exit = signal ? `signal ${signal}` : `exit code ${code}`;
        resolve();
      });
      // A failed spawn (ENOENT, EACCES) may never emit 'exit'.
      child.once('error', (error) => {
        exit ??= String(error);
        this.logs.push(`spawn failed: ${error.message}`);
        if (child.pid === undefined) resolve();
      });
    });
    for (const stream of [child.stdout, child.stderr]) {
      stream?.setEncoding('utf8');
      stream?.on('data', (chunk: string) => this.logs.push(...chunk.split('\n').filter(Boolean)));
    }
    const deadline = Date.now() + timeout;
    for (;;) {
      if (exit !== undefined || child.pid === undefined) {
        await this.exited;
        const output = this.logs.slice(from).join('\n');
        const text = `redis-server on port ${this.port} exited at start (${exit})\n${output}`;
        throw /Address already in use/.test(output) ? new AddressInUseError(text) : new Error(text);
      }
      const reply = await respCommand(this.port, ['INFO', 'server'], 500).catch(() => undefined);
      if (typeof reply === 'string' && reply.includes(`\nprocess_id:${child.pid}\r`)) break;
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        await this.exited;
        const output = this.logs.slice(from).join('\n');
        throw new Error(
          `redis-server on port ${this.port} did not answer in ${timeout} ms\n${output}`,
        );
      }
      await sleep(20);
    }
    // A server a test forgot to stop must not keep the runner alive: the exit handler kills it.
    child.unref();
    for (const stream of [child.stdout, child.stderr])
      (stream as { unref?(): void } | null)?.unref?.();
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!this.alive) return;
    this.child?.kill(signal);
    await this.exited;
  }

  async restart(): Promise<void> {
    if (this.stopping) throw new Error(`redis-server on port ${this.port} was stopped`);
    if (this.alive) throw new Error(`redis-server on port ${this.port} is still running`);
    await this.spawnAndWait();
  }

  stop(): Promise<void> {
    this.stopping ??= (async () => {
      running.delete(this);
      if (this.alive) {
        const timer = setTimeout(() => this.child?.kill('SIGKILL'), 2000);
        await this.kill('SIGTERM');
        clearTimeout(timer);
      }
      watch('r', this.dir);
      await rm(this.dir, { recursive: true, force: true });
    })();
    return this.stopping;
  }

  cli(...args: string[]): Promise<string> {
    return redisCli(['-p', String(this.port), ...args]);
  }

  command(...args: string[]): Promise<RespValue> {
    return respCommand(this.port, args);
  }
}

/** Runs `redis-cli -h 127.0.0.1 ...args`; resolves with stdout, trimmed. */
function redisCli(args: string[], timeout = 15_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      redisCliPath,
      ['-h', '127.0.0.1', ...args],
      { timeout, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        if (error) {
          const output = `${stdout}${stderr}`.trim();
          reject(new Error(`redis-cli ${args.join(' ')} failed: ${error.message}\n${output}`));
        } else {
          resolve(stdout.trim());
        }
      },
    );
  });
}

/** A free TCP port on 127.0.0.1, as the kernel hands it out for port 0 (free a moment ago). */
export async function freePort(): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await new Promise<number>((resolve, reject) => {
        const probe = createServer();
        probe.unref();
        probe.once('error', reject);
        probe.listen(0, '127.0.0.1', () => {
          const { port } = probe.address() as AddressInfo;
          probe.close(() => resolve(port));
        });
      });
    } catch (error) {
      if (attempt >= 5 || (error as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw error;
    }
  }
}

/** Three or more masters, no replicas: a Redis Cluster on 127.0.0.1. */
export interface RedisCluster {
  readonly nodes: RedisServer[];
  /** For `createCluster({ rootNodes })` of node-redis. */
  readonly rootNodes: { url: string }[];
  /** Runs `redis-cli -p PORT ...args` against one node (no `-c`: no redirects followed). */
  cli(port: number, ...args: string[]): Promise<string>;
  /** Stops every node; idempotent. */
  stop(): Promise<void>;
}

/**
 * Starts `masters` (default 3, the least `redis-cli --cluster create` accepts) cluster-enabled
 * servers, joins them with `redis-cli --cluster create`, and resolves once every node reports
 * `cluster_state:ok` and knows every other node. Each node gets its cluster bus on a free port
 * of its own (`--cluster-port`): the default, port + 10000, may be taken or above 65535.
 */
export async function startRedisCluster(options: { masters?: number } = {}): Promise<RedisCluster> {
  const masters = options.masters ?? 3;
  if (masters < 3) throw new Error(`a Redis Cluster needs at least 3 masters, not ${masters}`);
  const nodes: RedisServer[] = [];
  const stop = async () => {
    await Promise.all(nodes.map((node) => node.stop()));
  };
  try {
    for (let i = 0; i < masters; i++) {
      nodes.push(
        await launch(undefined, async (port) => [
          '--cluster-enabled',
          'yes',
          '--cluster-config-file',
          `nodes-${port}.conf`,
          '--cluster-node-timeout',
          '2000',
          '--cluster-port',
          String(await freePort()),
        ]),
      );
    }
    await redisCli([
      '--cluster',
      'create',
      ...nodes.map((node) => `127.0.0.1:${node.port}`),
      '--cluster-replicas',
      '0',
      '--cluster-yes',
    ]);
    await waitForClusterOk(nodes);
  } catch (error) {
    await stop();
    throw error;
  }
  let stopping: Promise<void> | undefined;
  return {
    nodes,
    rootNodes: nodes.map((node) => ({ url: node.url })),
    cli: (port, ...args) => redisCli(['-p', String(port), ...args]),
    stop: () => (stopping ??= stop()),
  };
}

async function waitForClusterOk(nodes: RedisServer[], timeout = 15_000): Promise<void> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const infos = await Promise.all(
      nodes.map((node) => node.command('CLUSTER', 'INFO').catch((error: Error) => error.message)),
    );
    const ok = infos.every(
      (info) =>
        typeof info === 'string' &&
        /^cluster_state:ok\r?$/m.test(info) &&
        /^cluster_slots_ok:16384\r?$/m.test(info) &&
        new RegExp(`^cluster_known_nodes:${nodes.length}\\r?$`, 'm').test(info),
    );
    if (ok) return;
    if (Date.now() > deadline) {
      const last = infos.map((info, i) => `--- node ${nodes[i].port} ---\n${String(info)}`);
      throw new Error(`the cluster was not ok within ${timeout} ms\n${last.join('\n')}`);
    }
    await sleep(50);
  }
}

/** Subscriber counts of `channels` on `server` (`PUBSUB NUMSUB`: classic channels only). */
export async function pubsubNumsub(
  server: RedisServer,
  channels: string[],
): Promise<Record<string, number>> {
  return pairs(await server.command('PUBSUB', 'NUMSUB', ...channels));
}

/**
 * Shard-channel subscriber counts of `channels` over the whole cluster (`PUBSUB
 * SHARDNUMSUB`). Each node counts only its own subscribers and answers for any channel
 * (no MOVED), so every node is asked and the counts are summed: the owner of the slot holds
 * them all, unless the slots moved.
 */
export async function shardNumsub(
  cluster: RedisCluster,
  channels: string[],
): Promise<Record<string, number>> {
  const counts: Record<string, number> = Object.fromEntries(channels.map((c) => [c, 0]));
  const replies = await Promise.all(
    cluster.nodes.map((node) => node.command('PUBSUB', 'SHARDNUMSUB', ...channels)),
  );
  for (const reply of replies) {
    for (const [channel, count] of Object.entries(pairs(reply))) counts[channel] += count;
  }
  return counts;
}

/** `[name, count, name, count, ...]` as a record. */
function pairs(reply: RespValue): Record<string, number> {
  if (!Array.isArray(reply)) throw new Error(`expected an array reply, got ${String(reply)}`);
  const result: Record<string, number> = {};
  for (let i = 0; i + 1 < reply.length; i += 2) result[String(reply[i])] = Number(reply[i + 1]);
  return result;
}

/** A decoded RESP2 reply: simple and bulk strings, integers, nil, arrays. */
export type RespValue = string | number | null | RespValue[];

/**
 * Sends one command to 127.0.0.1:`port` over a fresh connection and resolves with the reply;
 * an error reply rejects with its text. For the harness's own checks, without a client library.
 */
export function respCommand(port: number, args: string[], timeout = 5000): Promise<RespValue> {
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

/** Parses one reply at `offset`: `[value, next offset]`, or undefined if it is incomplete. */
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

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
