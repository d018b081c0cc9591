import { randomBytes } from 'node:crypto';
import type { RecoveryFailure } from './recovery-options.js';

/** One broadcast as a route's stream keeps it: its targets, to match at replay, and its frame. */
export interface StreamEntry {
  seq: number;
  at: number;
  /** The message as this route's connections get it (with its `id`). */
  payload: Buffer;
  /** `undefined`: everyone. */
  routes?: readonly string[];
  rooms?: readonly string[];
  users?: readonly string[];
  /** Connections named by id (those are matched too, while they are held). */
  connections?: readonly string[];
  /** Connections left out. */
  except?: readonly string[];
}

/** The entries after a position, or why there are none to give. */
export type ReadResult =
  { ok: true; entries: StreamEntry[] } | { ok: false; reason: RecoveryFailure };

/**
 * One route's history in memory: a ring of its last `maxMessages` broadcasts, none older than
 * `window`. `seq` has no gaps; `epoch` is new at every start, so an id of another run is never
 * matched by accident.
 */
export class RecoveryStream {
  readonly epoch = randomBytes(6).toString('base64url');
  private readonly ring: (StreamEntry | undefined)[];
  private head = 0;
  private size = 0;
  /** Last seq given. */
  seq = 0;
  /** Highest seq dropped because the ring was full. */
  private droppedByCount = 0;

  constructor(
    readonly window: number,
    readonly maxMessages: number,
    private readonly now: () => number = Date.now,
  ) {
    this.ring = new Array(maxMessages);
  }

  /** Appends one broadcast; returns its seq. */
  append(entry: Omit<StreamEntry, 'seq' | 'at'>): StreamEntry {
    const stored: StreamEntry = { ...entry, seq: ++this.seq, at: this.now() };
    if (this.size === this.maxMessages) {
      this.droppedByCount = this.ring[this.head]!.seq;
      this.ring[this.head] = stored;
      this.head = (this.head + 1) % this.maxMessages;
    } else {
      this.ring[(this.head + this.size) % this.maxMessages] = stored;
      this.size++;
    }
    return stored;
  }

  /** Every entry after `seq`, in order, if all of them are still here. */
  after(seq: number): ReadResult {
    this.expire();
    if (!Number.isSafeInteger(seq) || seq < 0 || seq > this.seq)
      return { ok: false, reason: 'unknown_position' };
    if (seq === this.seq) return { ok: true, entries: [] };
    const oldest = this.size ? this.ring[this.head]!.seq : this.seq + 1;
    if (seq + 1 < oldest)
      return { ok: false, reason: seq < this.droppedByCount ? 'too_many' : 'too_old' };
    const entries: StreamEntry[] = [];
    for (let i = seq + 1 - oldest; i < this.size; i++)
      entries.push(this.ring[(this.head + i) % this.maxMessages]!);
    return { ok: true, entries };
  }

  /** Bytes of payload held (for the README's memory figures and tests). */
  get bytes(): number {
    let bytes = 0;
    for (let i = 0; i < this.size; i++)
      bytes += this.ring[(this.head + i) % this.maxMessages]!.payload.length;
    return bytes;
  }

  private expire(): void {
    const oldestKept = this.now() - this.window;
    while (this.size && this.ring[this.head]!.at < oldestKept) {
      this.ring[this.head] = undefined;
      this.head = (this.head + 1) % this.maxMessages;
      this.size--;
    }
  }
}
