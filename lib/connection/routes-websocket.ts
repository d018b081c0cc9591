import type { Socket } from 'node:net';
import { WebSocket } from 'ws';
import { afterPoll, afterThisCode, PING_FRAME, writeFrames, type Batched } from './outbound.js';
import { directFd } from './direct-write.js';
import type { RouteLog } from './route-log.js';
import { peerCloseReceived, probeWsInternals, senderIdle, tcpSocketOf } from './ws-internals.js';

type WriteCallback = (error?: Error | null) => void;

/** `ws`'s `setSocket`, which our servers' handshakes call once per connection. */
interface SetSocket {
  setSocket(socket: Socket, head: Buffer, options: object): void;
}

/**
 * Who a socket reports to: its `WsConnection`, which passes the close question on to the
 * route's handlers (the connection layer never imports them).
 */
export interface SocketOwner {
  /** While set, the last write of every flush calls it back (the `@OnDrain` watch). */
  readonly drainWatch: WriteCallback | undefined;
  /**
   * `ws` is about to answer the peer's close frame; `true` postpones the answer until
   * {@link RoutesWebSocket.closeNow} (messages the peer sent before it are still being handled).
   */
  deferPeerClose(code: number | undefined, reason: Buffer | string | undefined): boolean;
}

/** `bits`: a batch is scheduled for the end of this turn. */
const SCHEDULED = 1;
/** `bits`: a fragmented message sent through the escape hatch is open. */
const FRAGMENTING = 2;
/** `bits`: `ws`'s internals could be read (see `ws-internals.ts`). */
const PROBED = 4;
/** `bits`: frames may go straight to the socket: probed, and no per-message deflate. */
const DIRECT = 8;
/** `bits`: a Blob went through the escape hatch: `ws`'s sender may be busy reading one. */
const BLOB_SENT = 16;

const OPEN = 1;

/**
 * The `WebSocket` class of our `ws` servers (`new WebSocketServer({ WebSocket })`). It owns this
 * connection's write batch: the frames sent to it in one event-loop turn (replies, broadcasts,
 * heartbeat pings), written at the end of the turn in one `write`.
 *
 * Whoever writes through `ws` itself (`ws` answering the peer's close or closing after a
 * protocol error, `conn.socket.close()`, `send()`, `ping()`, `pong()`) goes through the methods
 * below, and each writes the batch first: no frame that was accepted can be overtaken or lost
 * behind a close frame, and `terminate()` hands it to the kernel before destroying the socket.
 *
 * The escape hatch `socket.send(data, { fin: false })` opens a fragmented message; batched
 * frames wait until its last fragment has been sent, since a data frame inside a fragmented
 * message breaks the protocol (RFC 6455 §5.4).
 */
export class RoutesWebSocket extends WebSocket implements Batched {
  // Every open connection has one of these, so its own state is a few small fields: the batch,
  // its byte count, the flags above in one number, the owner, its place in the route's log,
  // the descriptor, and ws's state behind the accessor.
  /** Frames of this turn not written yet: one Buffer (the common case), several, or none. */
  private pending: Buffer | Buffer[] | null = null;
  /** Bytes in `pending`: a running count, so `bufferedAmount` stays O(1). */
  pendingBytes = 0;
  private bits = 0;
  /** The connection this socket belongs to, once the handshake made one. */
  owner: SocketOwner | undefined = undefined;
  /** @internal The log of its route's broadcasts, from the moment the connection is registered. */
  log: RouteLog | undefined = undefined;
  /** @internal How many frames of `log` this socket has taken (or must skip) in this turn. */
  logFrom = 0;
  /** @internal Where the log keeps this socket. */
  logSlot = 0;
  /** @internal The descriptor batches may be written to with `write(2)` (see `direct-write.ts`). */
  fd = -1;
  /** `ws`'s `_readyState`, behind the accessor below. */
  private state = 0;

  /**
   * `ws` keeps the state in `_readyState` and changes it in a dozen places (the peer's FIN, a
   * reset, its own `close()`); this accessor sees every change. A socket that leaves `OPEN`
   * first takes the rest of its route's log, as it would have had it been delivered at once,
   * and its route counts one open connection less.
   */
  get _readyState(): number {
    return this.state;
  }
  set _readyState(next: number) {
    if (this.state === OPEN && next !== OPEN) {
      const log = this.log;
      if (log !== undefined) {
        if (this.logFrom < log.length) {
          log.fold(this);
          this.flushBatch(false);
        }
        // A fold that closed the socket (slow consumer) has already counted it.
        if (this.state === OPEN) log.leftOpen();
      }
    }
    this.state = next;
  }

  /** Takes what the route's log holds for this socket into its own batch (see `RouteLog`). */
  fold(): void {
    const log = this.log;
    if (log !== undefined && this.logFrom < log.length) log.fold(this);
  }

  /**
   * @internal The TCP socket, if the route log's shared buffer may be written to it as it is:
   * nothing else pending in this turn, no deflate, nothing held by `ws`'s sender (which, without
   * deflate, only a Blob sent through the escape hatch can keep busy), writable, and no more
   * than `limit` bytes buffered already.
   */
  sharedWriteTarget(limit: number): Socket | null {
    const bits = this.bits;
    if (this.pending !== null || (bits & (DIRECT | FRAGMENTING)) !== DIRECT) return null;
    if ((bits & BLOB_SENT) !== 0 && !senderIdle(this)) return null;
    const raw = tcpSocketOf(this);
    if (raw === null || !raw.writable || raw.writableLength > limit) return null;
    return raw;
  }

  /** @internal Called by `ws`'s server once the 101 is written. */
  setSocket(socket: Socket, head: Buffer, options: object): void {
    (WebSocket.prototype as unknown as SetSocket).setSocket.call(this, socket, head, options);
    if (probeWsInternals(this))
      this.bits |= this.extensions.includes('permessage-deflate') ? PROBED : PROBED | DIRECT;
    if ((this.bits & DIRECT) !== 0) this.fd = directFd(socket);
  }

  private get fragmenting(): boolean {
    return (this.bits & FRAGMENTING) !== 0;
  }
  private set fragmenting(value: boolean) {
    this.bits = value ? this.bits | FRAGMENTING : this.bits & ~FRAGMENTING;
  }

  /**
   * Whether a pre-built frame may join the batch now. Otherwise `ws.send()` must frame it
   * (per-message deflate compresses per socket; a busy sender must keep its order).
   */
  get takesFrames(): boolean {
    const { bits } = this;
    if ((bits & FRAGMENTING) !== 0) return (bits & PROBED) !== 0;
    // Without deflate only a Blob keeps `ws`'s sender busy.
    return (bits & DIRECT) !== 0 && ((bits & BLOB_SENT) === 0 || senderIdle(this));
  }

  /**
   * `bufferedAmount` as `ws` counts it (the TCP socket's stream plus what its sender holds),
   * without reading the sender where nothing can be in it (no deflate, no Blob).
   */
  get queuedBytes(): number {
    const raw = (this.bits & (DIRECT | BLOB_SENT)) === DIRECT ? tcpSocketOf(this) : null;
    return raw !== null ? raw.writableLength : this.bufferedAmount;
  }

  /** Adds a frame to this turn's batch; `broadcast` picks the end-of-turn schedule. */
  queueFrame(frame: Buffer, broadcast: boolean): void {
    const parts = this.pending;
    if (parts === null) this.pending = frame;
    else if (Array.isArray(parts)) parts.push(frame);
    else this.pending = [parts, frame];
    this.pendingBytes += frame.length;
    if ((this.bits & SCHEDULED) === 0) {
      this.bits |= SCHEDULED;
      (broadcast ? afterThisCode : afterPoll).add(this);
    }
  }

  /** The heartbeat's ping: it joins the batch when frames may, so a round costs no extra write. */
  queuePing(): void {
    this.fold();
    if (this.takesFrames && !this.fragmenting) this.queueFrame(PING_FRAME, true);
    else super.ping();
  }

  /**
   * @internal Writes the batch now (`endOfTurn`: the schedule's call); `fd` -1 keeps it in the
   * stream (corked with what follows).
   */
  flushBatch(endOfTurn: boolean, fd: number = this.fd): void {
    if (endOfTurn) this.bits &= ~SCHEDULED;
    this.fold();
    const parts = this.pending;
    if (parts === null || this.fragmenting) return;
    const total = this.pendingBytes;
    this.pending = null;
    this.pendingBytes = 0;
    const raw = tcpSocketOf(this);
    if (raw && raw.writable) writeFrames(raw, parts, total, fd, this.owner?.drainWatch);
  }

  /** `ws.send()` after the batch: for what `ws` must frame itself. */
  sendAfterBatch(data: Buffer | string, binary: boolean): void {
    this.flushBatch(false);
    super.send(data, { binary }, this.owner?.drainWatch);
  }

  override send(data: unknown, options?: unknown, callback?: unknown): void {
    if (typeof options === 'function') [options, callback] = [{}, options];
    const send = super.send as (data: unknown, options: unknown, callback: unknown) => void;
    const fin = (options as { fin?: boolean } | undefined)?.fin !== false;
    if (data instanceof Blob) this.bits |= BLOB_SENT;
    const wasFragmenting = this.fragmenting;
    if (!wasFragmenting) this.flushBatch(false);
    if (wasFragmenting && fin && (this.bits & DIRECT) === 0) {
      // ws frames (and compresses) the last fragment itself, maybe later: the batch waits
      // until that frame is written.
      const done = callback as WriteCallback | undefined;
      send.call(this, data, options, (error?: Error | null) => {
        this.fragmenting = false;
        if (!error) this.flushBatch(false);
        done?.(error);
      });
      return;
    }
    send.call(this, data, options, callback);
    if (this.readyState !== WebSocket.OPEN) return;
    this.fragmenting = !fin;
    if (wasFragmenting && fin) this.flushBatch(false);
  }

  override ping(data?: unknown, mask?: boolean, callback?: (error: Error) => void): void {
    if (data instanceof Blob) this.bits |= BLOB_SENT;
    this.afterBatch(() => super.ping(data, mask, callback));
  }

  /** `ws` answers the peer's pings through this too (`autoPong`). */
  override pong(data?: unknown, mask?: boolean, callback?: (error: Error) => void): void {
    if (data instanceof Blob) this.bits |= BLOB_SENT;
    this.afterBatch(() => super.pong(data, mask, callback));
  }

  /**
   * Runs `write` (`ws` writing a control frame itself) right after the batch, both in one
   * corked write: a ping, a pong or a close costs no write of its own when a batch is
   * pending. Inside a fragmented message the batch waits and the control frame goes alone.
   */
  private afterBatch(write: () => void): void {
    this.fold();
    const raw = tcpSocketOf(this);
    if (this.pending === null || this.fragmenting || raw === null || !raw.writable) {
      write();
      return;
    }
    raw.cork();
    try {
      this.flushBatch(false, -1);
      write();
    } finally {
      raw.uncork();
    }
  }

  override close(code?: number, reason?: string | Buffer): void {
    if (
      this.readyState === WebSocket.OPEN &&
      peerCloseReceived(this) &&
      this.owner?.deferPeerClose(code, reason)
    ) {
      return;
    }
    this.closeNow(code, reason);
  }

  /** Writes the batch, then starts (or answers) the closing handshake. */
  closeNow(code?: number, reason?: string | Buffer): void {
    if (this.fragmenting) {
      this.lastWrite();
      super.close(code, reason);
    } else {
      this.afterBatch(() => super.close(code, reason));
    }
  }

  /**
   * Writes the batch before the connection ends. Inside an unfinished fragmented message it
   * cannot go (control frames may, data frames may not), and the message will never be
   * finished now: the batch is dropped.
   */
  private lastWrite(): void {
    if (this.fragmenting) {
      this.fragmenting = false;
      this.pending = null;
      this.pendingBytes = 0;
      if (this.log !== undefined) this.logFrom = this.log.length;
    } else {
      this.flushBatch(false);
    }
  }

  /** Hands what the batch holds to the socket, then destroys it (the kernel may still send it). */
  override terminate(): void {
    this.lastWrite();
    super.terminate();
  }
}
