import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { cpus, loadavg, release, totalmem, type } from 'node:os';
import { packageVersion } from '../servers/versions.js';

export interface MachineInfo {
  cpu: string;
  cores: number;
  memoryGiB: number;
  os: string;
  node: string;
  loadAverage: number[];
  /** Machine CPU busy (all processes) over 2 s before the run, and at its end: 0–1. */
  busyBefore?: number;
  busyAfter?: number;
  loadAverageEnd?: number[];
  /** Cores other processes kept busy on average during the run. */
  foreignCores?: number;
  packages: Record<string, string>;
  /** Filled in from the servers: which uWS build loaded, … */
  builds: Record<string, string>;
  bufferutil: string;
  fdLimit: string;
  /** The commit lib/ was compiled from, `+ changes` when lib/ had uncommitted ones. */
  lib: string;
}

function libRevision(): string {
  try {
    // dist-sample/bench/lib/machine.js → the repository root.
    const root = fileURLToPath(new URL('../../../', import.meta.url));
    const git = (...args: string[]) =>
      execFileSync('git', ['-C', root, ...args], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).trim();
    const head = git('log', '-1', '--format=%h %cI', '--', 'lib');
    const dirty = git('status', '--porcelain', '--', 'lib') ? ' + uncommitted changes' : '';
    return `${head}${dirty}`;
  } catch {
    return 'unknown (no git)';
  }
}

export function machineInfo(bufferutil: boolean, fdLimit: string): MachineInfo {
  const cpu = cpus();
  return {
    cpu: cpu[0]?.model.trim() ?? 'unknown',
    cores: cpu.length,
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    os: `${type()} ${release()}`,
    node: process.version,
    loadAverage: loadavg().map((v) => Math.round(v * 100) / 100),
    packages: {
      ws: packageVersion('ws'),
      '@nestjs/core': packageVersion('@nestjs/core'),
      '@nestjs/platform-ws': packageVersion('@nestjs/platform-ws'),
      'ws (in platform-ws)': packageVersion('ws', '@nestjs/platform-ws'),
      '@nestjs/platform-socket.io': packageVersion('@nestjs/platform-socket.io'),
      'socket.io': packageVersion('socket.io'),
      'socket.io-client': packageVersion('socket.io-client'),
      'ws (in engine.io)': packageVersion('ws', 'engine.io'),
      '@trufflesuite/uws-js-unofficial': packageVersion('@trufflesuite/uws-js-unofficial'),
    },
    builds: {},
    bufferutil: bufferutil
      ? `allowed (bufferutil ${packageVersion('bufferutil')} if installed)`
      : 'off (WS_NO_BUFFER_UTIL=1: pure-JS masking, as a plain `npm i ws`)',
    fdLimit,
    lib: libRevision(),
  };
}

function cpuTimes(): { busy: number; total: number } | undefined {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0];
    const fields = line.trim().split(/\s+/).slice(1).map(Number);
    const idle = fields[3] + (fields[4] ?? 0);
    const total = fields.reduce((a, b) => a + b, 0);
    return { busy: total - idle, total };
  } catch {
    return undefined;
  }
}

/** Share of the machine's CPU time (all cores) that was busy over the next `ms`, 0–1. */
export async function cpuBusy(ms: number): Promise<number> {
  const before = cpuTimes();
  await new Promise((resolve) => setTimeout(resolve, ms));
  const after = cpuTimes();
  if (!before || !after || after.total === before.total) return NaN;
  return (after.busy - before.busy) / (after.total - before.total);
}

/**
 * Waits, up to `maxMs`, for the machine to be quiet (under 15 % busy over 2 s): other
 * processes on the same 2 cores change every figure. Returns the last busy share seen.
 */
export async function waitQuiet(maxMs: number, log: (line: string) => void): Promise<number> {
  const until = Date.now() + maxMs;
  let busy = await cpuBusy(2000);
  for (let check = 0; busy > 0.15 && Date.now() < until; check++) {
    if (check % 6 === 0)
      log(
        `  machine ${Math.round(busy * 100)} % busy with other processes; waiting for it to calm down`,
      );
    busy = await cpuBusy(5000);
  }
  return busy;
}
