import type { BroadcastPacket } from '../broadcast/broadcast-packet.interface.js';

/** The limits of one route's stream (`@WsRoute(path, { recovery })`). */
export interface StreamLimits {
  /** Milliseconds an entry stays replayable. */
  window: number;
  /** Entries kept. */
  maxMessages: number;
}

/** One stored broadcast, as a shared history gives it back. */
export interface HistoryEntry {
  seq: number;
  /** When it was stored (the history's clock, in ms). */
  at: number;
  /** Its targets, and its payload without the id (see `envelopePrefix`). */
  packet: BroadcastPacket;
}

/** A read of a route's stream: where it stands now, and the entries after a position. */
export interface HistoryRead {
  /** The stream's epoch now (created by the read if the history had none). */
  epoch: string;
  /** Its last seq (0: nothing stored in this epoch yet). */
  seq: number;
  /** The history's clock, in ms, at the read. */
  now: number;
  /** The entries after the position asked for, in order (all of them, if the epoch differs). */
  entries: HistoryEntry[];
  /** The read stopped at its byte cap: entries after the last one given exist. */
  truncated: boolean;
}

/** Where a shared history hands what it hears: the recovery hub. */
export interface HistoryFeed {
  /** An entry of the stream as it was stored, from any instance (this one's included). */
  entry(epoch: string, seq: number, packet: BroadcastPacket): void;
  /** The history is reachable again after an outage (or for the first time). */
  ready(): void;
  /** The history became unreachable: what was heard may have holes, or have been undone. */
  down(): void;
}

/**
 * A history that every instance shares: each broadcast to a recovery route is stored once, gets
 * the next seq of the route's stream, and is heard by every instance in that order. A broadcast
 * transport that reaches other instances offers one (`RedisBroadcastTransport` keeps it in Redis
 * Streams); without it, recovery routes keep their history in this process only.
 */
export interface RecoveryHistory {
  /** Starts following a route's stream. Called at start-up, once per recovery route. */
  open(route: string, limits: StreamLimits, feed: HistoryFeed): void;
  /**
   * Stores one broadcast in the route's stream; every instance hears it through its feed.
   * Rejects (or throws) when the history cannot be reached: the entry was not stored, or it is
   * unknown whether it was.
   */
  append(route: string, packet: BroadcastPacket): Promise<unknown>;
  /**
   * The stream's epoch and last seq, and its entries after `after` if `epoch` is still the
   * stream's (`after` < 0: the position only), up to `maxBytes` of payload.
   */
  read(
    route: string,
    epoch: string | undefined,
    after: number,
    maxBytes: number,
  ): Promise<HistoryRead>;
  /**
   * Gives the route's stream a new epoch if it is still `epoch` (the history went back and
   * its seqs are being given again), and answers where the stream stands now.
   */
  renew(route: string, epoch: string): Promise<{ epoch: string; seq: number }>;
  /** Whether the history can be reached now. */
  isReady(): boolean;
}
