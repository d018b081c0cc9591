import { Injectable, Logger } from '@nestjs/common';
import type { BroadcastPacket } from '../broadcast/broadcast-packet.interface.js';
import { isForEveryone } from '../broadcast/broadcast-packet.interface.js';
import type { WsConnection } from '../connection/ws-connection.js';
import type { WsConnectionRegistry } from '../connection/ws-connection-registry.js';
import { reaches } from './entry-targets.js';
import type { RecoveryHistory } from './recovery-history.interface.js';
import {
  envelopePrefix,
  FRAME_HEADER,
  positionMessage,
  recoveryMessage,
  withId,
} from './recovery-messages.js';
import { LAST_EVENT_ID_PARAM } from './recovery-options.js';
import { RecoveryStream } from './recovery-stream.js';
import { SharedStream } from './shared-stream.js';
import { formatPosition, parsePosition, type StreamPosition } from './stream-position.js';

export { POSITION_EVENT, RECOVERY_EVENT } from './recovery-messages.js';

/** A connection that presented an id, waiting for `@OnOpen` to finish before its replay. */
type Waiting = StreamPosition | 'invalid';

/**
 * The history of every route opened with `recovery`: each broadcast that can reach a recovery
 * route is appended once to the route's stream and gets an id; a connection that comes back
 * with `?lastEventId=` gets what it missed after its `@OnOpen`. With a broadcast transport that
 * shares a history (Redis), the streams live there ({@link SharedStream}); otherwise in this
 * process, as below.
 *
 * The seam between replay and live traffic, in process: from the upgrade until the replay, broadcasts to
 * the connection are not written to it (each of them is in the stream already, with a later
 * id); the replay then sends, in one turn, every entry after the presented id that the
 * connection matches now, and live traffic follows. Nothing falls between, nothing is sent twice.
 */
@Injectable()
export class RecoveryHub {
  private readonly streams = new Map<string, RecoveryStream>();
  private readonly shared = new Map<string, SharedStream>();
  private readonly waiting = new WeakMap<WsConnection, Waiting>();
  private held = 0;
  private history: RecoveryHistory | undefined;
  private registry: WsConnectionRegistry | undefined;
  private readonly logger = new Logger('WsRoutes:Recovery');
  /**
   * @internal Routes whose history is shared: their connections get broadcasts from the
   * history's feed only, so local delivery and the transport leave them out.
   */
  readonly sharedRoutes = new Set<string>();
  /** @internal The broadcast transport reaches other instances and offers no history. */
  sharedTransport = false;

  /** Whether any route records broadcasts. */
  get active(): boolean {
    return this.streams.size > 0 || this.shared.size > 0;
  }

  /** @internal The transport's shared history (set before the routes are added). */
  useHistory(history: RecoveryHistory, registry: WsConnectionRegistry): void {
    this.history = history;
    this.registry = registry;
  }

  /** @internal A route opened with `recovery`. */
  addRoute(pattern: string, window: number, maxMessages: number): void {
    if (this.history) {
      const limits = { window, maxMessages };
      this.shared.set(
        pattern,
        new SharedStream(pattern, limits, this.history, this.registry!, this.logger),
      );
      this.sharedRoutes.add(pattern);
      return;
    }
    if (this.sharedTransport)
      throw new Error(
        `@WsRoute('${pattern}'): recovery needs a history every instance shares; the broadcast ` +
          'transport reaches other instances but offers none (RedisBroadcastTransport does)',
      );
    this.streams.set(pattern, new RecoveryStream(window, maxMessages));
  }

  /**
   * Appends a broadcast to every recovery stream it can reach and returns each route's payload
   * (with its id). Throws, before anything is sent, for a binary message that would reach a
   * recovery route: its frames are JSON, with the id in them.
   */
  record(packet: BroadcastPacket, message: unknown): Map<string, Buffer> | undefined {
    if (packet.volatile || packet.action) return undefined;
    const everyone = isForEveryone(packet);
    const anyRoute = everyone || !!packet.rooms?.length || !!packet.users?.length;
    const reached = (pattern: string): boolean => {
      if (!anyRoute && !packet.routes?.includes(pattern)) return false;
      if (packet.binary)
        throw new TypeError(
          `A binary broadcast cannot reach the recovery route ${pattern}: its messages are ` +
            'JSON frames that carry their id. Send binary data to other routes, or as JSON.',
        );
      return true;
    };
    if (this.shared.size) {
      const reaching = [...this.shared.values()].filter((stream) => reached(stream.route));
      if (reaching.length) {
        const prefix = envelopePrefix(message);
        for (const stream of reaching) stream.append(packet, prefix);
        // Every instance where these routes keep a history delivers it from the history.
        packet.kept = reaching.map((stream) => stream.route);
      }
      return undefined;
    }
    let payloads: Map<string, Buffer> | undefined;
    let prefix: string | undefined;
    for (const [pattern, stream] of this.streams) {
      if (!reached(pattern)) continue;
      const id = formatPosition(stream.epoch, stream.seq + 1);
      const payload = withId((prefix ??= envelopePrefix(message)), id);
      stream.append({
        payload,
        routes: everyone ? undefined : (packet.routes ?? []),
        rooms: everyone ? undefined : packet.rooms,
        users: everyone ? undefined : packet.users,
        connections: packet.connections,
        except: packet.except?.length ? packet.except : undefined,
      });
      (payloads ??= new Map()).set(pattern, payload);
    }
    return payloads;
  }

  /** Whether live broadcasts skip this connection (it waits for its replay). */
  isHeld(conn: WsConnection): boolean {
    return this.held > 0 && this.waiting.has(conn);
  }

  /**
   * @internal The upgrade completed, `@OnOpen` is about to run. A new connection is told its
   * position at once; one that presented an id is held until its replay.
   */
  attach(conn: WsConnection): void {
    const stream = this.streams.get(conn.route);
    if (!stream) {
      this.shared.get(conn.route)?.attach(conn);
      return;
    }
    const presented = conn.query[LAST_EVENT_ID_PARAM];
    if (presented === undefined) {
      conn.send(positionMessage(current(stream)));
      return;
    }
    this.waiting.set(conn, parsePosition(presented) ?? 'invalid');
    this.held++;
  }

  /** @internal The connection closed before its replay. */
  forget(conn: WsConnection): void {
    if (this.waiting.delete(conn)) this.held--;
    else this.shared.get(conn.route)?.forget(conn);
  }

  /**
   * @internal `@OnOpen` has finished (the rooms it re-joined count): the missed entries the
   * connection matches now, in order, after a `recovery` message; or, if any is missing, only
   * the `recovery` message with `recovered: false` and a reason, never part of them.
   */
  resume(conn: WsConnection, registry: WsConnectionRegistry): void {
    const waiting = this.waiting.get(conn);
    if (waiting === undefined) {
      this.shared.get(conn.route)?.resume(conn);
      return;
    }
    this.waiting.delete(conn);
    this.held--;
    const stream = this.streams.get(conn.route)!;
    if (waiting === 'invalid') {
      conn.send(recoveryMessage(false, 0, 'unknown_position', current(stream)));
      return;
    }
    const result =
      waiting.epoch !== stream.epoch
        ? ({ ok: false, reason: 'history_lost' } as const)
        : stream.after(waiting.seq);
    if (!result.ok) {
      conn.send(recoveryMessage(false, 0, result.reason, current(stream)));
      return;
    }
    const user = registry.userOf(conn);
    const replay = result.entries.filter((entry) => reaches(entry, !entry.routes, conn, user));
    // All of it fits in what one turn may queue for the connection, or none of it is sent: a
    // replay cut by the slow-consumer policy would be a gap (or a close) after recovered:true.
    let bytes = conn.bufferedAmount;
    for (const entry of replay) bytes += entry.payload.length + FRAME_HEADER;
    if (bytes > conn.maxBufferedAmount) {
      conn.send(recoveryMessage(false, 0, 'too_many', current(stream)));
      return;
    }
    conn.send(
      recoveryMessage(true, replay.length, undefined, formatPosition(stream.epoch, waiting.seq)),
    );
    for (const entry of replay) conn.send(entry.payload, { binary: false });
  }
}

function current(stream: RecoveryStream): string {
  return formatPosition(stream.epoch, stream.seq);
}
