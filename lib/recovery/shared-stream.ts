import type { LoggerService } from '@nestjs/common';
import { isForEveryone, type BroadcastPacket } from '../broadcast/broadcast-packet.interface.js';
import { connectionsOf, routeRecipients } from '../broadcast/local-delivery.js';
import { frameMessage } from '../connection/outbound.js';
import type { WsConnection } from '../connection/ws-connection.js';
import type { WsConnectionRegistry } from '../connection/ws-connection-registry.js';
import { reaches } from './entry-targets.js';
import type {
  HistoryFeed,
  HistoryRead,
  RecoveryHistory,
  StreamLimits,
} from './recovery-history.interface.js';
import { LAST_EVENT_ID_PARAM, type RecoveryFailure } from './recovery-options.js';
import { FRAME_HEADER, positionMessage, recoveryMessage, withId } from './recovery-messages.js';
import { formatPosition, parsePosition, type StreamPosition } from './stream-position.js';

const OPEN = 1;
/**
 * Most payload bytes one read of a stream brings back: a replay larger than a connection may
 * queue is refused anyway (`too_many`), this bounds what a read costs Redis and this process.
 */
const MAX_READ_BYTES = 64 * 1024 * 1024;
/** After a failed read of the history (while it is reachable), the next try. */
const RETRY_DELAY = 1_000;
/** How often a run of broadcasts the history could not store is logged (with a count). */
const LOSS_LOG_INTERVAL = 10_000;

/** A live entry as one connection gets it. */
interface Sent {
  epoch: string;
  seq: number;
  payload: Buffer;
}

/** A reconnecting connection, from the end of its `@OnOpen` until it is live. */
interface Replay {
  position: StreamPosition | undefined;
  /** Sent back to the batch once already (its epoch was ahead of this instance's feed). */
  retried: boolean;
  /** Live entries for it while the history is read; `undefined` once the replay was sent. */
  buffer: Sent[] | undefined;
  /** After the replay: live entries up to this seq (of `epoch`) were in it already. */
  upTo: number;
  epoch: string;
  /** A gap opened in the live feed meanwhile: the replay cannot be whole. */
  gapped: boolean;
}

interface Heard {
  epoch: string;
  seq: number;
  packet: BroadcastPacket;
}

/**
 * One recovery route's stream when the history is shared by several instances (Redis Streams).
 * Every instance hears every entry through the history's feed and delivers it to its own
 * connections of the route, in `seq` order: a hole in the feed (an entry missed while the
 * subscriber reconnected) is filled from the history before anything after it is delivered,
 * and one that cannot be filled is told to the route's connections (`recovered: false`).
 *
 * A reconnecting connection is held from the upgrade to the end of `@OnOpen`; then its live
 * entries are buffered, the history is read (one read for all reconnects of the same turn),
 * and the connection gets what it missed, then the buffered entries the read did not have,
 * then live traffic: no gap and no duplicate at the seam.
 */
export class SharedStream implements HistoryFeed {
  private epoch = '';
  private seq = 0;
  /** The stream's position is known (read once the history is reachable). */
  private known = false;
  private syncing = false;
  private syncAgain = false;
  /** Entries heard while the position was unknown or a hole was being filled. */
  private pending: Heard[] = [];
  /** New connections waiting for their position (the history was not reached yet). */
  private readonly unplaced = new Set<WsConnection>();
  /** Reconnecting connections whose `@OnOpen` has not finished. */
  private readonly held = new Map<WsConnection, StreamPosition | undefined>();
  private readonly replaying = new Map<WsConnection, Replay>();
  /** Reconnects whose `@OnOpen` finished, waiting for the next read. */
  private readonly batch = new Set<WsConnection>();
  private batchScheduled = false;
  /** The epoch of the last gap told, until the next entry: the same gap is not told again. */
  private gapTold: string | undefined;
  /**
   * The transport lost Redis since the last read: before the feed goes on, the stream is read
   * again and the last entry delivered is compared with the one the history has under its seq
   * (a Redis restarted from an older snapshot gives the same seqs to other broadcasts).
   */
  private unsure = false;
  /** Who sent the last entry delivered, and its serial: what `unsure` compares. */
  private lastOrigin = '';
  private lastSerial = 0;
  private lost = 0;
  private lostLogged = 0;
  private lostLoggedAt = -Infinity;

  constructor(
    readonly route: string,
    private readonly limits: StreamLimits,
    private readonly history: RecoveryHistory,
    private readonly registry: WsConnectionRegistry,
    private readonly logger: LoggerService,
  ) {
    history.open(route, limits, this);
  }

  /**
   * Stores a broadcast; this instance's connections get it from the feed, like every other
   * instance's. `prefix` is the message without its id (`envelopePrefix`).
   */
  append(packet: BroadcastPacket, prefix: string): void {
    const entry: BroadcastPacket = {
      origin: packet.origin,
      serial: packet.serial,
      payload: prefix,
      binary: false,
    };
    if (!isForEveryone(packet)) {
      entry.routes = packet.routes ?? [];
      if (packet.rooms) entry.rooms = packet.rooms;
      if (packet.users) entry.users = packet.users;
      if (packet.connections) entry.connections = packet.connections;
    }
    if (packet.except?.length) entry.except = packet.except;
    if (!this.history.isReady()) {
      this.notStored(new Error('the history is unreachable'));
      return;
    }
    try {
      this.history.append(this.route, entry).then(undefined, this.notStored);
    } catch (error) {
      this.notStored(error);
    }
  }

  /** The upgrade completed, `@OnOpen` is about to run. */
  attach(conn: WsConnection): void {
    const presented = conn.query[LAST_EVENT_ID_PARAM];
    if (presented !== undefined) {
      this.held.set(conn, parsePosition(presented));
      return;
    }
    if (this.known) conn.send(positionMessage(this.position()));
    else this.unplaced.add(conn);
  }

  /** `@OnOpen` has finished: the connection's replay is read with the others of this turn. */
  resume(conn: WsConnection): void {
    if (!this.held.has(conn)) return;
    const position = this.held.get(conn);
    this.held.delete(conn);
    const replay = { position, retried: false, buffer: [], upTo: 0, epoch: '', gapped: false };
    this.replaying.set(conn, replay);
    this.batch.add(conn);
    this.scheduleBatch();
  }

  /** The connection closed. */
  forget(conn: WsConnection): void {
    this.unplaced.delete(conn);
    this.held.delete(conn);
    this.replaying.delete(conn);
    this.batch.delete(conn);
  }

  /** `HistoryFeed`: an entry, as every instance hears it. */
  entry(epoch: string, seq: number, packet: BroadcastPacket): void {
    const heard = { epoch, seq, packet };
    if (!this.known || this.syncing || this.unsure || !this.accept(heard)) {
      this.pending.push(heard);
      this.sync();
    }
  }

  /** `HistoryFeed`: reachable again; what the feed missed meanwhile is read. */
  ready(): void {
    this.sync();
  }

  /** `HistoryFeed`: unreachable; the feed waits for a read when it is back. */
  down(): void {
    if (this.known) this.unsure = true;
  }

  private position(): string {
    return formatPosition(this.epoch, this.seq);
  }

  /** Delivers the next entry or drops a duplicate; `false`: a hole is before it. */
  private accept(heard: Heard): boolean {
    if (heard.epoch === this.epoch) {
      if (heard.seq === this.seq + 1) this.deliver(heard);
      return heard.seq <= this.seq + 1;
    }
    if (heard.seq !== 1) return false;
    // A new history (Redis lost its data, or the stream expired): it starts here.
    this.epoch = heard.epoch;
    this.seq = 0;
    this.deliver(heard);
    return true;
  }

  /** Reads where the stream stands (and what the feed missed), then goes on with the feed. */
  private sync(): void {
    if (this.syncing) {
      this.syncAgain = true;
      return;
    }
    this.syncing = true;
    const known = this.known;
    // After an outage, the read starts at the last entry delivered, to compare it.
    const verify = known && this.unsure && this.seq > 0;
    this.unsure = false;
    const after = !known ? -1 : verify ? this.seq - 1 : this.seq;
    this.history.read(this.route, known ? this.epoch : undefined, after, MAX_READ_BYTES).then(
      (read) =>
        this.guard(() => {
          this.syncing = false;
          const again = this.caughtUp(read, known, verify);
          if (this.syncing) return; // renewing the epoch: it goes on from there
          this.drain();
          if (again || this.syncAgain) {
            this.syncAgain = false;
            this.sync();
          }
          this.scheduleBatch();
        }),
      (error: unknown) => {
        this.syncing = false;
        this.syncAgain = false;
        if (verify) this.unsure = true;
        this.failed('read', error);
      },
    );
  }

  /** A read (or renewal) failed: `ready()` reads again; while reachable, once a second. */
  private failed(what: string, error: unknown): void {
    this.logger.warn?.(
      `Recovery ${this.route}: the history could not be ${what} (${describe(error)}); trying again`,
    );
    if (!this.history.isReady()) return;
    setTimeout(() => {
      if (this.syncing) return;
      if (!this.known || this.unsure || this.pending.length || this.batch.size) this.sync();
    }, RETRY_DELAY).unref();
  }

  /**
   * The history went back: Redis restarted from an older snapshot (or a replica took over
   * without the last writes), so this epoch's seqs are being given to other broadcasts. A new
   * epoch (made once, by whichever instance sees it first) keeps any id from being reused.
   */
  private renew(): void {
    this.syncing = true;
    const stale = this.epoch;
    this.history.renew(this.route, stale).then(
      (fresh) =>
        this.guard(() => {
          this.syncing = false;
          this.logger.warn?.(
            `Recovery ${this.route}: the history went back (epoch ${stale}); ` +
              `its pages here are told history_lost, the stream goes on in epoch ${fresh.epoch}`,
          );
          this.tellGap('history_lost', fresh.epoch, fresh.seq);
          this.drain();
          this.scheduleBatch();
        }),
      (error: unknown) => {
        this.syncing = false;
        this.unsure = true;
        this.failed('renewed', error);
      },
    );
  }

  /** A step of the feed that must never throw into a promise nobody awaits. */
  private guard(step: () => void): void {
    try {
      step();
    } catch (error) {
      this.logger.error(`Recovery ${this.route}: ${describe(error)}`);
    }
  }

  /** Applies a read to the feed; `true`: read on (a hole larger than one read). */
  private caughtUp(read: HistoryRead, known: boolean, verify: boolean): boolean {
    if (!known) {
      this.epoch = read.epoch;
      this.seq = read.seq;
      this.known = true;
      for (const conn of this.unplaced)
        if (conn.readyState === OPEN) conn.send(positionMessage(this.position()));
      this.unplaced.clear();
      return false;
    }
    if (read.epoch !== this.epoch) {
      // The history this instance followed is gone, with whatever it held after our position.
      this.tellGap('history_lost', read.epoch, read.seq);
      return false;
    }
    if (read.seq < this.seq || (verify && !this.stillLast(read))) {
      this.renew();
      return false;
    }
    let expected = this.seq + 1;
    for (const entry of read.entries) {
      if (entry.seq < expected) continue;
      if (entry.seq > expected) break;
      this.deliver({ epoch: read.epoch, seq: entry.seq, packet: entry.packet });
      expected++;
    }
    if (read.truncated && expected > this.seq && this.seq < read.seq) return true;
    if (this.seq < read.seq) this.tellGap('history_lost', read.epoch, read.seq);
    return false;
  }

  /** Whether the history still has, under the last seq delivered, the entry delivered. */
  private stillLast(read: HistoryRead): boolean {
    const last = read.entries.find((entry) => entry.seq === this.seq);
    // Gone (trimmed, expired), or never delivered here: nothing to compare; a hole after it
    // is told as such.
    if (!last || !this.lastOrigin) return true;
    return last.packet.origin === this.lastOrigin && (last.packet.serial ?? 0) === this.lastSerial;
  }

  /**
   * The entries heard meanwhile, in order, until one needs another read. Right after a read,
   * an entry of another epoch than the stream's is stale (heard before the history changed).
   */
  private drain(): void {
    while (this.pending.length && !this.syncing) {
      const next = this.pending[0];
      if (!this.accept(next) && next.epoch === this.epoch) {
        this.sync();
        return;
      }
      this.pending.shift();
    }
  }

  /** One live entry to this instance's connections of the route. */
  private deliver(heard: Heard): void {
    const { epoch, seq, packet } = heard;
    this.seq = seq;
    this.lastOrigin = packet.origin;
    this.lastSerial = packet.serial ?? 0;
    this.gapTold = undefined;
    const except = packet.except?.length ? connectionsOf(this.registry, packet.except) : undefined;
    let payload: Buffer | undefined;
    let frame: Buffer | undefined;
    for (const conn of routeRecipients(this.registry, packet, this.route)) {
      if (conn.readyState !== OPEN || except?.has(conn)) continue;
      if (this.unplaced.size && this.unplaced.has(conn)) continue;
      // Held: its replay, read after its @OnOpen, has this entry.
      if (this.held.size && this.held.has(conn)) continue;
      payload ??= withId(packet.payload, formatPosition(epoch, seq));
      if (this.replaying.size) {
        const replay = this.replaying.get(conn);
        if (replay) {
          if (replay.buffer) {
            replay.buffer.push({ epoch, seq, payload });
            continue;
          }
          if (replay.epoch === epoch && seq <= replay.upTo) continue;
          this.replaying.delete(conn);
        }
      }
      frame ??= frameMessage(payload, false);
      conn.deliver(payload, false, frame, false);
    }
  }

  /**
   * Entries are missing that nobody can give any more: every live connection of the route is
   * told (once, until the next entry), with the position live traffic goes on from.
   */
  private tellGap(reason: RecoveryFailure, epoch: string, seq: number): void {
    const left = this.epoch;
    if (epoch !== this.epoch || seq !== this.seq) {
      // The entry under the new position was never delivered here: nothing to compare.
      this.lastOrigin = '';
      this.lastSerial = 0;
    }
    this.epoch = epoch;
    this.seq = seq;
    if (this.gapTold === epoch) return;
    this.gapTold = epoch;
    const message = recoveryMessage(false, 0, reason, this.position());
    for (const conn of this.registry.byRoute(this.route)) {
      if (conn.readyState !== OPEN || this.unplaced.has(conn) || this.held.has(conn)) continue;
      const replay = this.replaying.get(conn);
      if (replay?.buffer) {
        // Only a replay from the history that lost entries is no longer whole.
        if (replay.position?.epoch === left) replay.gapped = true;
        continue;
      }
      if (replay) this.replaying.delete(conn);
      conn.send(message);
    }
  }

  private readonly notStored = (error: unknown): void => {
    this.lost++;
    if (this.known) this.tellGap('history_lost', this.epoch, this.seq);
    const now = Date.now();
    if (now - this.lostLoggedAt < LOSS_LOG_INTERVAL) return;
    const since = this.lost - this.lostLogged;
    this.lostLoggedAt = now;
    this.lostLogged = this.lost;
    this.logger.error(
      `Recovery ${this.route}: ${since} broadcast(s) could not be stored (${this.lost} since ` +
        `start-up), so no instance delivered them to this route; its connections here were ` +
        `told recovered:false: ${describe(error)}`,
    );
  };

  private scheduleBatch(): void {
    if (this.batchScheduled || !this.batch.size || this.syncing) return;
    this.batchScheduled = true;
    // The reconnects of this turn (a server restart brings many at once) share one read.
    setImmediate(() => {
      this.runBatch().catch((error: unknown) =>
        this.logger.error(`Recovery ${this.route}: a replay failed: ${describe(error)}`),
      );
    });
  }

  private async runBatch(): Promise<void> {
    this.batchScheduled = false;
    if (this.syncing) return; // the read's end schedules the batch again
    if (!this.known) {
      if (this.history.isReady()) this.sync();
      else this.answerUnplaced();
      return;
    }
    const conns = [...this.batch].filter((conn) => this.replaying.has(conn));
    this.batch.clear();
    if (!conns.length) return;
    // An id of another epoch than this instance's feed may be of a newer history that the
    // feed has not heard of yet: the feed reads first, and the connection goes in the next batch.
    const ahead = conns.filter((conn) => {
      const replay = this.replaying.get(conn)!;
      if (!replay.position || replay.position.epoch === this.epoch || replay.retried) return false;
      replay.retried = true;
      return true;
    });
    if (ahead.length) {
      for (const conn of ahead) this.batch.add(conn);
      this.sync();
    }
    const now = conns.filter((conn) => !ahead.includes(conn));
    let after = Infinity;
    for (const conn of now) {
      const { position } = this.replaying.get(conn)!;
      if (position && position.epoch === this.epoch) after = Math.min(after, position.seq);
    }
    let read: HistoryRead | undefined;
    if (after !== Infinity) {
      try {
        read = await this.history.read(this.route, this.epoch, after, MAX_READ_BYTES);
      } catch (error) {
        this.logger.warn?.(
          `Recovery ${this.route}: ${now.length} replay(s) could not be read: ${describe(error)}`,
        );
      }
    }
    const payloads = new Map<number, Buffer>();
    for (const conn of now) {
      const replay = this.replaying.get(conn);
      // A read cut at its byte cap: the connections whose range starts after its start get a
      // read of their own (starting further on, so this ends).
      if (read?.truncated && replay?.position && replay.position.seq > after) {
        this.batch.add(conn);
        continue;
      }
      try {
        this.finish(conn, read, payloads);
      } catch (error) {
        // Never left buffering: the connection goes on live, without its replay.
        this.replaying.delete(conn);
        this.logger.error(`Recovery ${this.route}: a replay failed: ${describe(error)}`);
      }
    }
    this.scheduleBatch();
  }

  /**
   * Reconnects while the history was never reached (this instance booted while Redis was
   * down): there is no position to give, so they are told at once, without an id, and get
   * their position like new connections once Redis is reached.
   */
  private answerUnplaced(): void {
    const message = recoveryMessage(false, 0, 'history_lost', null);
    for (const conn of this.batch) {
      if (!this.replaying.delete(conn) || conn.readyState !== OPEN) continue;
      conn.send(message);
      this.unplaced.add(conn);
    }
    this.batch.clear();
  }

  /** Sends one reconnecting connection its replay and its buffered entries, or the refusal. */
  private finish(
    conn: WsConnection,
    read: HistoryRead | undefined,
    payloads: Map<number, Buffer>,
  ): void {
    const replay = this.replaying.get(conn);
    if (!replay || !replay.buffer) return;
    if (conn.readyState !== OPEN) {
      this.replaying.delete(conn);
      return;
    }
    const refuse = (reason: RecoveryFailure): void => {
      this.replaying.delete(conn);
      conn.send(recoveryMessage(false, 0, reason, this.position()));
    };
    const { position, buffer } = replay;
    if (!position) return refuse('unknown_position');
    if (position.epoch !== this.epoch || replay.gapped) return refuse('history_lost');
    // The read failed (Redis went away meanwhile): nothing is known to be whole.
    if (!read) return refuse('history_lost');
    if (read.epoch !== position.epoch) return refuse('history_lost');
    if (position.seq > read.seq) return refuse('unknown_position');
    const missed: Sent[] = [];
    let upTo = position.seq;
    if (position.seq < read.seq) {
      if (read.seq - position.seq > this.limits.maxMessages) return refuse('too_many');
      const entries = read.entries.filter((entry) => entry.seq > position.seq);
      const first = entries[0];
      if (!first || first.seq !== position.seq + 1) return refuse('too_old');
      if (first.at < read.now - this.limits.window) return refuse('too_old');
      const last = entries[entries.length - 1];
      if (read.truncated && last.seq < read.seq) return refuse('too_many');
      upTo = last.seq;
      const user = this.registry.userOf(conn);
      for (const entry of entries) {
        if (!reaches(entry.packet, isForEveryone(entry.packet), conn, user)) continue;
        let payload = payloads.get(entry.seq);
        if (!payload) {
          payload = withId(entry.packet.payload, formatPosition(read.epoch, entry.seq));
          payloads.set(entry.seq, payload);
        }
        missed.push({ epoch: read.epoch, seq: entry.seq, payload });
      }
    }
    // Live entries buffered meanwhile that the read did not have (it may have had them all).
    for (const sent of buffer) {
      // Entries of the history before this one were heard before the page's id: passed.
      if (sent.epoch === position.epoch && sent.seq > upTo) missed.push(sent);
    }
    // All of it fits in what the connection may queue, or none of it is sent: a replay cut by
    // the slow-consumer policy would be a gap (or a close) after recovered:true.
    let bytes = conn.bufferedAmount;
    for (const sent of missed) bytes += sent.payload.length + FRAME_HEADER;
    if (bytes > conn.maxBufferedAmount) return refuse('too_many');
    conn.send(
      recoveryMessage(true, missed.length, undefined, formatPosition(position.epoch, position.seq)),
    );
    for (const sent of missed) conn.send(sent.payload, { binary: false });
    const lastSent = Math.max(upTo, missed.length ? missed[missed.length - 1].seq : 0);
    if (this.epoch === position.epoch && this.seq >= lastSent) this.replaying.delete(conn);
    else {
      // The read (or the id the page presented) is ahead of this instance's feed: the feed
      // brings those entries again, and they are skipped for this connection.
      replay.buffer = undefined;
      replay.upTo = lastSent;
      replay.epoch = position.epoch;
    }
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
