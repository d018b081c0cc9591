import { writeOut } from './direct-write.js';
import { afterThisCode, type Batched } from './outbound.js';
import type { ConnectionRoute, WsConnection } from './ws-connection.js';
import type { RoutesWebSocket } from './routes-websocket.js';

const OPEN = 1;

/**
 * One route's broadcasts of this event-loop turn, kept once for all its connections: a
 * broadcast to the route (or to everyone) costs one append here, whatever the number of
 * connections, and at the end of the turn every connection whose only traffic in the turn was
 * this log gets the log's bytes, concatenated once for all of them, in one write of that shared
 * buffer. Route sets are disjoint, so a connection follows one log at most.
 *
 * Every connection keeps how much of the log it has taken already (`logFrom` of its socket).
 * Whatever else writes to the connection in the turn (a reply, a direct send, a room
 * broadcast, a ping, a close, reading `bufferedAmount`, the connection leaving `OPEN`) first
 * *folds* the rest of the log into the connection's own batch, message by message through
 * `WsConnection.deliver()`, exactly as if each had been delivered when it was broadcast: so the
 * order, the backpressure verdicts (`maxBufferedAmount`, `slowConsumer`), `@OnDrain` and
 * per-message deflate are what they were before logs existed. Those verdicts can be given at
 * the end of the turn because nothing but the connection's own writes changes its buffer
 * within a turn: the kernel's progress is reported in later event-loop phases.
 *
 * Broadcasts that judge each connection (`volatile`, `except`) or reach connections of
 * several kinds (rooms, users, ids) are delivered connection by connection; they fold first.
 */
export class RouteLog implements Batched {
  /** Frames of this turn, in broadcast order. */
  private readonly frames: Buffer[] = [];
  /** The message of each frame, for the connections that take it through `deliver()`. */
  private readonly payloads: Buffer[] = [];
  private readonly binaries: boolean[] = [];
  /** Frame bytes and payload bytes of the whole log. */
  private frameBytes = 0;
  private payloadBytes = 0;
  private scheduled = false;
  /**
   * The sockets of the route's registered connections, packed (each knows its `logSlot`): the
   * end of the turn walks this array, not the registry's set of connections, so it touches
   * the socket objects only.
   */
  private readonly sockets: RoutesWebSocket[] = [];
  /** Admitted connections whose socket is `OPEN`: what a broadcast to the route reaches. */
  open = 0;
  /** `false` once a socket could not be admitted (see `admit`): broadcasts go around the log. */
  usable = true;

  constructor(private readonly route: ConnectionRoute) {}

  /** Frames in the log: a socket with `logFrom` below this has some to take. */
  get length(): number {
    return this.frames.length;
  }

  /**
   * Adds one broadcast for every open connection of the route; returns how many it reaches
   * (those a `'drop'` slow-consumer verdict skips at the end of the turn included).
   */
  append(frame: Buffer, payload: Buffer, binary: boolean): number {
    if (this.open === 0) return 0;
    this.frames.push(frame);
    this.payloads.push(payload);
    this.binaries.push(binary);
    this.frameBytes += frame.length;
    this.payloadBytes += payload.length;
    if (!this.scheduled) {
      this.scheduled = true;
      afterThisCode.add(this);
    }
    return this.open;
  }

  /** @internal The connection just joined the route: it gets what is broadcast from now on. */
  admit(socket: RoutesWebSocket): void {
    if (socket.log !== undefined) return;
    if (Object.hasOwn(socket, '_readyState')) {
      // A `ws` that keeps its state in a field of its own hides the accessor that folds and
      // counts: this route's broadcasts go connection by connection.
      this.usable = false;
      return;
    }
    socket.log = this;
    socket.logFrom = this.frames.length;
    socket.logSlot = this.sockets.length;
    this.sockets.push(socket);
    if (socket.readyState === OPEN) this.open++;
  }

  /** @internal The connection left the registry. */
  release(socket: RoutesWebSocket): void {
    if (socket.log !== this) return;
    if (socket.readyState === OPEN) this.open--;
    const { sockets } = this;
    const last = sockets.pop()!;
    if (last !== socket) {
      sockets[socket.logSlot] = last;
      last.logSlot = socket.logSlot;
    }
    socket.log = undefined;
    socket.logFrom = 0;
  }

  /** @internal The socket is leaving `OPEN` (it folded first). */
  leftOpen(): void {
    this.open--;
  }

  /**
   * Hands the socket the frames it has not taken, one `deliver()` each, into its own batch:
   * before anything else is written to it, or at the end of the turn for a socket that the
   * shared write does not suit.
   */
  fold(socket: RoutesWebSocket): void {
    const from = socket.logFrom;
    const to = this.frames.length;
    socket.logFrom = to;
    const conn = socket.owner as WsConnection | undefined;
    if (conn === undefined) return;
    const { frames, payloads, binaries } = this;
    for (let i = from; i < to && socket.readyState === OPEN; i++)
      conn.deliver(payloads[i], binaries[i], frames[i], false);
  }

  /** @internal The end of the turn (the `afterThisCode` schedule). */
  flushBatch(): void {
    this.scheduled = false;
    const { frames } = this;
    const count = frames.length;
    if (count === 0) return;
    const total = this.frameBytes;
    // Made for the first connection that takes it: a log larger than the cap has none.
    let shared: Buffer | undefined;
    const { outbound, events, metrics } = this.route;
    const watchesDrain = events?.watchesDrain ?? false;
    // A connection that keeps up takes the whole log in one write of the shared buffer; one
    // the log would take over its low watermark (when `@OnDrain` is watched) or over its cap
    // is judged message by message, as a delivery each.
    const limit = (watchesDrain ? outbound.lowWatermark : outbound.maxBufferedAmount) - total;
    const { sockets } = this;
    let whole = 0;
    // A fold can close a socket, never remove it from this array (that waits for its `close`
    // event): the array does not change under the loop.
    for (let i = 0; i < sockets.length; i++) {
      const socket = sockets[i];
      const from = socket.logFrom;
      socket.logFrom = 0;
      if (from >= count || socket.readyState !== OPEN) continue;
      const raw = from === 0 && limit >= 0 ? socket.sharedWriteTarget(limit) : null;
      if (raw !== null) {
        const drainWatch = watchesDrain ? socket.owner?.drainWatch : undefined;
        shared ??= count === 1 ? frames[0] : Buffer.concat(frames, total);
        writeOut(raw, shared, socket.fd, drainWatch);
        whole++;
        continue;
      }
      socket.logFrom = from;
      this.fold(socket);
      // Its flush folds first: `logFrom` must still say the log is taken.
      socket.flushBatch(false);
      socket.logFrom = 0;
    }
    if (metrics !== undefined && whole > 0) {
      metrics.messagesSent += whole * count;
      metrics.bytesSent += whole * this.payloadBytes;
    }
    frames.length = 0;
    this.payloads.length = 0;
    this.binaries.length = 0;
    this.frameBytes = 0;
    this.payloadBytes = 0;
  }
}
