import { randomBytes } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { WebSocket } from 'ws';
import { CloseCode } from '../ws-routes.constants.js';
import { encodeMessage } from './encode-message.js';
import { frameParts, type OutboundPolicy } from './outbound.js';
import type { RoutesWebSocket, SocketOwner } from './routes-websocket.js';
import type { RouteMetrics } from '../metrics/route-metrics.js';
import { truncateCloseReason } from './truncate-utf8.js';

/**
 * @internal Where a connection's id, room and user changes are recorded: the
 * `WsConnectionRegistry`.
 */
export interface ConnectionIndex {
  /** The id of this process among the instances: the first part of every connection id. */
  readonly instanceId: string;
  indexId(conn: WsConnection, id: string): void;
  /** Reads the connection's user id again. */
  identify(conn: WsConnection): void;
  joinRoom(conn: WsConnection, room: string): void;
  leaveRoom(conn: WsConnection, room: string): void;
}

/** Options of {@link WsConnection.send}. */
export interface WsSendOptions {
  /** Force the frame type: `true` binary, `false` text. Default: by the value's type. */
  binary?: boolean;
  /**
   * Skip connections whose outgoing buffer is above the low watermark instead of queueing
   * more for them: for messages a newer one replaces anyway (prices, positions, cursors).
   */
  volatile?: boolean;
}

/** Outgoing-buffer events of a connection, for the route that handles them. */
export interface OutboundEvents {
  /** Whether `onDrain` is wanted (arming it costs a callback on the writes). */
  readonly watchesDrain: boolean;
  onOverflow(conn: WsConnection, policy: OutboundPolicy): void;
  onDrain(conn: WsConnection): void;
  /** The peer closed: whether `ws`'s answer waits for messages still being handled. */
  deferPeerClose(
    conn: WsConnection,
    code: number | undefined,
    reason: Buffer | string | undefined,
  ): boolean;
}

/**
 * @internal What every connection of one route shares, held once per route rather than once
 * per connection.
 */
export interface ConnectionRoute {
  /** The `@WsRoute` pattern. */
  readonly pattern: string;
  /** Where ids and room changes are recorded. */
  readonly rooms: ConnectionIndex;
  readonly outbound: OutboundPolicy;
  /** Told about outgoing-buffer events: the route's dispatcher. */
  readonly events: OutboundEvents | undefined;
  /** The route's counts; `undefined` when metrics are off. */
  readonly metrics?: RouteMetrics | undefined;
}

/** Query-string values; a repeated key gives an array. */
export type WsQueryParams = Record<string, string | string[]>;

const NO_ROOMS: ReadonlySet<string> = new Set();
/** The `params` and `query` of every connection that has none: one object, not one each. */
const NOTHING: Readonly<Record<string, never>> = Object.freeze({});

function isEmpty(object: object): boolean {
  return Object.keys(object).length === 0;
}

/** Headers that only served the handshake; the rest are kept for the connection's life. */
const HANDSHAKE_HEADERS = new Set([
  'connection',
  'upgrade',
  'sec-websocket-key',
  'sec-websocket-version',
  'sec-websocket-extensions',
]);

function withoutHandshakeHeaders(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const kept: IncomingHttpHeaders = {};
  for (const name in headers) {
    if (!HANDSHAKE_HEADERS.has(name)) kept[name] = headers[name];
  }
  return kept;
}

/**
 * `<instanceId>.<16 random URL-safe characters>` (96 bits), as one flat string: the instance
 * part lets a transport send a message for one connection to its instance only.
 */
function newConnectionId(instanceId: string): string {
  return Buffer.from(`${instanceId}.${randomBytes(12).toString('base64url')}`, 'latin1').toString(
    'latin1',
  );
}

/**
 * One open WebSocket, seen from the server. It mirrors the browser's `WebSocket` (`readyState`,
 * `protocol`, `bufferedAmount`, `send`, `close(code, reason)`) and adds what a server needs:
 * the route it came in on, its path parameters, the upgrade request, rooms and a `data` bag.
 *
 * @typeParam TData - shape of the per-connection {@link WsConnection.data} bag.
 */
export class WsConnection<TData extends object = Record<string, any>> implements SocketOwner {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSING = 2;
  static readonly CLOSED = 3;
  get CONNECTING(): 0 {
    return 0;
  }
  get OPEN(): 1 {
    return 1;
  }
  get CLOSING(): 2 {
    return 2;
  }
  get CLOSED(): 3 {
    return 3;
  }

  private id_: string | undefined = undefined;
  /** Close code once closed: what the peer sent, 1005 if none, 1006 if the link dropped. */
  closeCode: number | undefined = undefined;
  /** Close reason once closed (`''` if none). */
  closeReason: string | undefined = undefined;

  /** @internal Set on any sign of life; the heartbeat clears it when it pings. */
  alive = true;
  /**
   * Messages not delivered on purpose: incoming ones over a `rateLimit` with `action: 'drop'`,
   * outgoing ones skipped as `volatile` or by the `'drop'` slow-consumer policy.
   */
  droppedMessages = 0;
  /** @internal Set while `@OnDrain` waits: the socket's flushes call it back. */
  drainWatch: ((error?: Error | null) => void) | undefined = undefined;
  /**
   * @internal Rate-limit bucket: tokens left (`-1`: not used yet, full) and when they were
   * counted. Not `Infinity`: a non-integer field costs every connection a boxed number.
   */
  tokens = -1;
  /** @internal */
  tokensAt = 0;

  /** @internal Why the server terminated the connection, reported as the close reason. */
  terminationReason: string | undefined = undefined;

  private joined: Set<string> | undefined = undefined;
  private data_: TData | undefined = undefined;
  private request_: IncomingMessage | undefined;

  /**
   * Headers of the upgrade request (lower-case names), without those that only served the
   * handshake (`connection`, `upgrade`, `sec-websocket-key`, `-version`, `-extensions`).
   */
  readonly headers: IncomingHttpHeaders;
  /** Query-string parameters of the upgrade URL; a repeated key gives an array. */
  readonly query: Readonly<WsQueryParams>;
  /** Path parameters of the route pattern, decoded. */
  readonly params: Readonly<Record<string, string>>;

  /** @internal Connections are created by the gateway after a successful handshake. */
  constructor(
    /**
     * The raw `ws` WebSocket: an escape hatch for what this class does not cover. Messages
     * sent through it skip this connection's batching (and its backpressure), so they can
     * overtake what `send()` and broadcasts queued in the same event-loop turn.
     */
    readonly socket: WebSocket,
    request: IncomingMessage,
    private readonly shared: ConnectionRoute,
    /** The request path without the query string, e.g. `/rooms/lobby`. */
    readonly path: string,
    params: Readonly<Record<string, string>>,
    query: WsQueryParams,
    /** The client's IP: the TCP peer, or the forwarded address with `trustProxy`. */
    readonly remoteAddress: string = request.socket.remoteAddress ?? '',
  ) {
    this.request_ = request;
    (socket as RoutesWebSocket).owner = this;
    this.headers = withoutHandshakeHeaders(request.headers);
    this.query = isEmpty(query) ? NOTHING : query;
    this.params = isEmpty(params) ? NOTHING : params;
  }

  /**
   * Unique id for `BroadcastService.toConnection(id)`, `except(id)` and `registry.get(id)`:
   * `<instanceId>.<random>` (29 URL-safe characters, unguessable), valid on every instance
   * that shares the broadcast transport. Made the first time it is read: connections nobody
   * asks about cost no id (about 90 bytes each with its index entry).
   */
  get id(): string {
    if (this.id_ === undefined) {
      this.id_ = newConnectionId(this.shared.rooms.instanceId);
      this.shared.rooms.indexId(this, this.id_);
    }
    return this.id_;
  }

  /** @internal The id, if it has been made. */
  get assignedId(): string | undefined {
    return this.id_;
  }

  /** The `@WsRoute` pattern this connection matched, e.g. `/rooms/:room`. */
  get route(): string {
    return this.shared.pattern;
  }

  /**
   * The HTTP upgrade request (`IncomingMessage`), during `@OnOpen`; `undefined` once it has
   * finished, unless the route sets `keepUpgradeRequest`. A request holds about 1 KB of heap
   * per connection (more with cookies), so what a connection needs later is kept by itself:
   * `headers`, `query`, `params`, `remoteAddress`, `protocol`, and whatever `@OnOpen` or a
   * handshake guard (`request.user`) put in `data`.
   */
  get request(): IncomingMessage | undefined {
    return this.request_;
  }

  /** @internal `@OnOpen` has finished: the request is no longer needed. */
  releaseRequest(): void {
    this.request_ = undefined;
  }

  /** @internal `@OnOpen` has finished: what it put in `data.user` now counts. */
  opened(): void {
    this.shared.rooms.identify(this);
  }

  /** Per-connection state of the application (the authenticated user, preferences, …). */
  get data(): TData {
    return (this.data_ ??= {} as TData);
  }
  set data(value: TData) {
    this.data_ = value;
  }

  /**
   * The authenticated user, kept in `data.user`: what a handshake guard put in
   * `request.user`, or what a guard assigns here per message (`getClient().user = …`, or
   * `switchToHttp().getRequest().user = …` as `@nestjs/passport`'s `AuthGuard` does).
   *
   * It makes the connection one of that user's (`BroadcastService.toUser(id)`,
   * `registry.byUser(id)`): the user id is read when the connection opens, after `@OnOpen`, and
   * whenever this property is assigned (assign it, rather than `data.user`, after `@OnOpen`).
   */
  get user(): unknown {
    return (this.data_ as { user?: unknown } | undefined)?.user;
  }
  set user(value: unknown) {
    (this.data as { user?: unknown }).user = value;
    this.shared.rooms.identify(this);
  }

  /** The negotiated subprotocol, or `''`. */
  get protocol(): string {
    return this.socket.protocol;
  }

  /** `CONNECTING` (0), `OPEN` (1), `CLOSING` (2) or `CLOSED` (3), as in the browser. */
  get readyState(): number {
    return this.socket.readyState;
  }

  /** Bytes queued for this connection that the kernel has not accepted yet. */
  get bufferedAmount(): number {
    const socket = this.socket as RoutesWebSocket;
    socket.fold();
    return socket.queuedBytes + socket.pendingBytes;
  }

  /** @internal The route's `maxBufferedAmount`: what one turn may queue for this connection. */
  get maxBufferedAmount(): number {
    return this.shared.outbound.maxBufferedAmount;
  }

  /** Rooms this connection has joined. */
  get rooms(): ReadonlySet<string> {
    return this.joined ?? NO_ROOMS;
  }

  /** Joins one or more rooms; `BroadcastService.to(room)` reaches every member. */
  join(...rooms: string[]): void {
    if (this.readyState >= WsConnection.CLOSING) return;
    for (const room of rooms) {
      this.joined ??= new Set();
      if (this.joined.has(room)) continue;
      this.joined.add(room);
      this.shared.rooms.joinRoom(this, room);
    }
  }

  /** Leaves one or more rooms; without arguments, leaves every room. */
  leave(...rooms: string[]): void {
    if (!this.joined) return;
    for (const room of rooms.length ? rooms : [...this.joined]) {
      if (this.joined.delete(room)) this.shared.rooms.leaveRoom(this, room);
    }
  }

  /**
   * Sends one message: a string as text, bytes as binary, anything else as JSON text.
   * Returns `false` (and sends nothing) when the connection is not open.
   */
  send(message: unknown, options?: WsSendOptions): boolean {
    if (this.socket.readyState !== WsConnection.OPEN) return false;
    const { payload, binary } = encodeMessage(message, options?.binary);
    return this.deliver(payload, binary, undefined, options?.volatile ?? false);
  }

  /**
   * @internal The one write path of every outgoing message: backpressure first, then the
   * frame (built once by a broadcast, or here for a reply) joins this turn's batch for the
   * socket, written at the end of the turn; with per-message deflate `ws.send()` frames it,
   * after the batch so far. Returns whether the message was queued.
   *
   * Backpressure judges everything not yet accepted by the kernel, this turn's batch included,
   * so a synchronous loop of sends cannot take a connection past `maxBufferedAmount` by more
   * than one message.
   */
  deliver(
    payload: string | Buffer,
    binary: boolean,
    frame: Buffer | undefined,
    volatile: boolean,
  ): boolean {
    const socket = this.socket as RoutesWebSocket;
    // Broadcasts to the route earlier in this turn come first (see `RouteLog`).
    socket.fold();
    const { outbound, events, metrics } = this.shared;
    const buffered = socket.queuedBytes + socket.pendingBytes;
    if (buffered > outbound.lowWatermark) {
      if (volatile) {
        this.droppedMessages++;
        if (metrics !== undefined) metrics.droppedVolatile++;
        return false;
      }
      if (buffered > outbound.maxBufferedAmount) {
        events?.onOverflow(this, outbound);
        if (outbound.slowConsumer === 'drop') {
          this.droppedMessages++;
          if (metrics !== undefined) metrics.droppedSlowConsumer++;
        } else {
          if (metrics !== undefined) metrics.slowConsumerCloses++;
          this.close(CloseCode.TryAgainLater, 'Slow consumer');
        }
        return false;
      }
    }
    // Armed before the write: a message `ws.send()` frames carries the watch only if it is set.
    if (
      !this.drainWatch &&
      events?.watchesDrain &&
      buffered + (frame ? frame.length : Buffer.byteLength(payload)) > outbound.lowWatermark
    )
      this.armDrain(outbound.lowWatermark);
    // The payload's byte length, for the metrics: free for bytes, paid for a string only
    // where it is not encoded here anyway.
    let bytes = typeof payload === 'string' ? -1 : payload.length;
    if (socket.takesFrames) {
      if (frame) socket.queueFrame(frame, true);
      else {
        const data = typeof payload === 'string' ? Buffer.from(payload) : payload;
        bytes = data.length;
        const parts = frameParts(data, binary);
        for (let i = 0; i < parts.length; i++) socket.queueFrame(parts[i], false);
      }
    } else {
      socket.sendAfterBatch(payload, binary);
    }
    if (metrics !== undefined) {
      metrics.messagesSent++;
      metrics.bytesSent += bytes >= 0 ? bytes : Buffer.byteLength(payload);
    }
    return true;
  }

  /**
   * Watches for the buffered amount to fall to `lowWatermark` again, from our own accounting:
   * the last write of every flush calls back while armed, and the last one finds the buffer
   * empty. (Node's `'drain'` fires only after a write crossed the socket's high-water mark.)
   */
  private armDrain(lowWatermark: number): void {
    this.drainWatch = (error) => {
      if (error || this.readyState !== WsConnection.OPEN) {
        this.drainWatch = undefined;
      } else if (this.bufferedAmount <= lowWatermark) {
        this.drainWatch = undefined;
        this.shared.events?.onDrain(this);
      }
    };
  }

  /** @internal `SocketOwner`: asked before `ws` answers the peer's close frame. */
  deferPeerClose(code: number | undefined, reason: Buffer | string | undefined): boolean {
    return this.shared.events?.deferPeerClose(this, code, reason) ?? false;
  }

  /**
   * Sends `{"event": event, "data": data}` as JSON text: the envelope that
   * `@OnMessage('event')` handlers receive, for clients that speak it too.
   */
  emit(event: string, data?: unknown): boolean {
    return this.send({ event, data });
  }

  /**
   * Starts the closing handshake. `code` is 1000 or an application code (3000–4999); a reason
   * longer than 123 bytes is cut at a character boundary.
   */
  close(code: number = CloseCode.Normal, reason = ''): void {
    if (this.socket.readyState >= WsConnection.CLOSING) return;
    // Messages sent before the close go out before the close frame (RoutesWebSocket), and an
    // answer to the peer's close that waits for handlers is given now, with this code.
    (this.socket as RoutesWebSocket).closeNow(code, truncateCloseReason(reason));
  }

  /** Sends a ping; the answer fires `@OnPong`. */
  ping(data?: Buffer | string): void {
    if (this.socket.readyState === WsConnection.OPEN) this.socket.ping(data);
  }

  /** @internal The heartbeat's empty ping, which joins this turn's batch. */
  heartbeatPing(): void {
    if (this.socket.readyState === WsConnection.OPEN) (this.socket as RoutesWebSocket).queuePing();
  }

  /** Drops the TCP connection at once, without a closing handshake (close code 1006). */
  terminate(reason?: string): void {
    this.terminationReason ??= reason;
    this.socket.terminate();
  }

  toJSON(): object {
    return { id: this.id, route: this.route, path: this.path, readyState: this.readyState };
  }
}

/** Query-string parameters; a repeated key gives an array. */
export function parseQuery(search: string): WsQueryParams {
  const query: WsQueryParams = {};
  for (const [key, value] of new URLSearchParams(search)) {
    const existing = query[key];
    if (existing === undefined) query[key] = value;
    else if (Array.isArray(existing)) existing.push(value);
    else query[key] = [existing, value];
  }
  return query;
}
