import { Injectable } from '@nestjs/common';
import type { BroadcastPacket } from '../broadcast/broadcast-packet.interface.js';
import { isForEveryone } from '../broadcast/broadcast-packet.interface.js';
import type { WsConnection } from '../connection/ws-connection.js';
import type { WsConnectionRegistry } from '../connection/ws-connection-registry.js';
import { LAST_EVENT_ID_PARAM, type RecoveryFailure } from './recovery-options.js';
import { RecoveryStream, type StreamEntry } from './recovery-stream.js';
import { formatPosition, parsePosition, type StreamPosition } from './stream-position.js';

/** The event of the message that answers a reconnect on a recovery route. */
export const RECOVERY_EVENT = 'recovery';
/** The event of the first message of a new connection on a recovery route: its position. */
export const POSITION_EVENT = 'position';

/** A connection that presented an id, waiting for `@OnOpen` to finish before its replay. */
type Waiting = StreamPosition | 'invalid';

/**
 * The history of every route opened with `recovery`, on this instance: each broadcast that can
 * reach a recovery route is appended once to the route's stream and gets an id; a connection
 * that comes back with `?lastEventId=` gets what it missed after its `@OnOpen`.
 *
 * The seam between replay and live traffic: from the upgrade until the replay, broadcasts to
 * the connection are not written to it (each of them is in the stream already, with a later
 * id); the replay then sends, in one turn, every entry after the presented id that the
 * connection matches now, and live traffic follows. Nothing falls between, nothing is sent twice.
 */
@Injectable()
export class RecoveryHub {
  private readonly streams = new Map<string, RecoveryStream>();
  private readonly waiting = new WeakMap<WsConnection, Waiting>();
  private held = 0;
  /** @internal The broadcast transport reaches other instances (recovery is one-instance yet). */
  sharedTransport = false;

  /** Whether any route records broadcasts. */
  get active(): boolean {
    return this.streams.size > 0;
  }

  /** @internal A route opened with `recovery`. */
  addRoute(pattern: string, window: number, maxMessages: number): void {
    if (this.sharedTransport)
      throw new Error(
        `@WsRoute('${pattern}'): recovery works on one instance only in this release; ` +
          'it cannot be combined with a broadcast transport that reaches other instances',
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
    let payloads: Map<string, Buffer> | undefined;
    for (const [pattern, stream] of this.streams) {
      if (!anyRoute && !packet.routes?.includes(pattern)) continue;
      if (packet.binary)
        throw new TypeError(
          `A binary broadcast cannot reach the recovery route ${pattern}: its messages are ` +
            'JSON frames that carry their id. Send binary data to other routes, or as JSON.',
        );
      const id = formatPosition(stream.epoch, stream.seq + 1);
      const payload = Buffer.from(envelope(message, id));
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
    if (!stream) return;
    const presented = conn.query[LAST_EVENT_ID_PARAM];
    if (presented === undefined) {
      conn.send(`{"event":"${POSITION_EVENT}","data":null,"id":"${current(stream)}"}`);
      return;
    }
    this.waiting.set(conn, parsePosition(presented) ?? 'invalid');
    this.held++;
  }

  /** @internal The connection closed before its replay. */
  forget(conn: WsConnection): void {
    if (this.waiting.delete(conn)) this.held--;
  }

  /**
   * @internal `@OnOpen` has finished (the rooms it re-joined count): the missed entries the
   * connection matches now, in order, after a `recovery` message; or, if any is missing, only
   * the `recovery` message with `recovered: false` and a reason, never part of them.
   */
  resume(conn: WsConnection, registry: WsConnectionRegistry): void {
    const waiting = this.waiting.get(conn);
    if (waiting === undefined) return;
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
    const replay = result.entries.filter((entry) => matches(entry, conn, user));
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

/** Most bytes a frame header adds to a payload (server frames are not masked). */
const FRAME_HEADER = 10;

function current(stream: RecoveryStream): string {
  return formatPosition(stream.epoch, stream.seq);
}

function recoveryMessage(
  recovered: boolean,
  replayed: number,
  reason: RecoveryFailure | undefined,
  id: string,
): string {
  const data = recovered ? { recovered, replayed } : { recovered, reason };
  return JSON.stringify({ event: RECOVERY_EVENT, data, id });
}

/** Whether a stored broadcast reaches this connection as it is now (its rooms, its user). */
function matches(entry: StreamEntry, conn: WsConnection, user: string | undefined): boolean {
  if (entry.except && conn.assignedId !== undefined && entry.except.includes(conn.assignedId))
    return false;
  if (!entry.routes) return true;
  if (
    entry.connections &&
    conn.assignedId !== undefined &&
    entry.connections.includes(conn.assignedId)
  )
    return true;
  if (entry.routes.includes(conn.route)) return true;
  if (entry.rooms) for (const room of entry.rooms) if (conn.rooms.has(room)) return true;
  if (entry.users && user !== undefined && entry.users.includes(user)) return true;
  return false;
}

/**
 * The message with its id: an object's JSON gets an `"id"` member (so `{event, data}` becomes
 * `{event, data, id}`); anything else is wrapped as `{"event":"message","data":…,"id":…}`.
 */
function envelope(message: unknown, id: string): string {
  const quoted = JSON.stringify(id);
  if (isPlainObject(message)) {
    const json = JSON.stringify(message);
    if (json && json.startsWith('{') && json.endsWith('}'))
      return json.length === 2 ? `{"id":${quoted}}` : `${json.slice(0, -1)},"id":${quoted}}`;
  }
  const data = JSON.stringify(message === undefined ? null : message);
  return `{"event":"message","data":${data ?? 'null'},"id":${quoted}}`;
}

function isPlainObject(value: unknown): value is object {
  return (
    typeof value === 'object' &&
    value !== null &&
    !Array.isArray(value) &&
    !ArrayBuffer.isView(value) &&
    !(value instanceof ArrayBuffer)
  );
}
