/**
 * How much CPU other processes took while the bench ran. The 2 cores are shared with the load
 * processes by design, but anything else running on the machine (another test suite, a build)
 * changes the wall-clock figures: this tells, per variant, how many cores went elsewhere.
 *
 * Machine busy time comes from /proc/stat, ours from /proc/<pid>/stat of the orchestrator and
 * every child it started (read at each snapshot and every 500 ms, so that a child's time is
 * known up to its exit). Linux only; elsewhere the figures are NaN.
 */
import { readFileSync } from 'node:fs';

const TICKS_PER_SECOND = 100;

function machineBusyTicks(): number {
  const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1);
  const values = fields.map(Number);
  const total = values.slice(0, 8).reduce((a, b) => a + b, 0);
  return total - values[3] - (values[4] ?? 0);
}

function processTicks(pid: number | 'self'): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return undefined;
  }
}

export interface CpuSnapshot {
  time: number;
  machineTicks: number;
  oursTicks: number;
}

export class CpuMonitor {
  private readonly ours = new Map<number, number>();
  private readonly timer: NodeJS.Timeout;

  constructor() {
    this.timer = setInterval(() => this.sample(), 500);
    this.timer.unref();
  }

  track(pid: number | undefined): void {
    if (pid) this.ours.set(pid, processTicks(pid) ?? 0);
  }

  snapshot(): CpuSnapshot {
    try {
      this.sample();
      let oursTicks = processTicks('self') ?? 0;
      for (const ticks of this.ours.values()) oursTicks += ticks;
      return { time: Date.now(), machineTicks: machineBusyTicks(), oursTicks };
    } catch {
      return { time: Date.now(), machineTicks: NaN, oursTicks: NaN };
    }
  }

  /** Cores that processes other than the bench's kept busy, on average, between two snapshots. */
  static foreignCores(from: CpuSnapshot, to: CpuSnapshot): number {
    const seconds = (to.time - from.time) / 1000;
    const foreign = to.machineTicks - from.machineTicks - (to.oursTicks - from.oursTicks);
    return seconds > 0 ? Math.max(0, foreign / TICKS_PER_SECOND / seconds) : NaN;
  }

  private sample(): void {
    for (const [pid, last] of this.ours) {
      const ticks = processTicks(pid);
      // An exited child keeps its last reading; one whose pid was reused is not re-read.
      if (ticks !== undefined && ticks >= last) this.ours.set(pid, ticks);
    }
  }
}

/** One monitor for the whole run: every process the bench starts is tracked by it. */
export const cpuMonitor = new CpuMonitor();
