import type { RemoteCount } from '../broadcast/broadcast-transport.interface.js';

interface Pending {
  expected: Set<string>;
  answered: string[];
  count: number;
  done: (answer: RemoteCount) => void;
  timer: NodeJS.Timeout;
}

/** `count()` questions waiting for the other instances' answers. */
export class PendingCounts {
  private readonly pending = new Map<string, Pending>();
  private next = 0;

  constructor(private readonly self: string) {}

  /** A new request id, unique across instances. */
  newRequest(): string {
    return `${this.self}:${++this.next}`;
  }

  /** Waits for the answers of `expected` (instance ids) for at most `timeout` ms. */
  wait(request: string, expected: string[], timeout: number): Promise<RemoteCount> {
    return new Promise((resolve) => {
      const entry: Pending = {
        expected: new Set(expected),
        answered: [],
        count: 0,
        done: resolve,
        timer: setTimeout(() => this.finish(request), timeout),
      };
      entry.timer.unref();
      this.pending.set(request, entry);
      if (entry.expected.size === 0) this.finish(request);
    });
  }

  /** An instance answered. */
  answer(request: string, instance: string, count: number): void {
    const entry = this.pending.get(request);
    if (!entry || entry.answered.includes(instance)) return;
    entry.answered.push(instance);
    entry.count += count;
    entry.expected.delete(instance);
    if (entry.expected.size === 0) this.finish(request);
  }

  /** Answers every question now with what it has (shutdown). */
  finishAll(): void {
    for (const request of [...this.pending.keys()]) this.finish(request);
  }

  private finish(request: string): void {
    const entry = this.pending.get(request);
    if (!entry) return;
    this.pending.delete(request);
    clearTimeout(entry.timer);
    entry.done({ count: entry.count, answered: entry.answered, missing: [...entry.expected] });
  }
}
