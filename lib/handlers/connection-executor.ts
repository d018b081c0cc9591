import type { Logger } from '@nestjs/common';
import { isObservable, type Observable, type Subscription } from 'rxjs';
import { CloseCode, INTERNAL_ERROR_MESSAGE } from '../ws-routes.constants.js';
import type { WsConnection } from '../connection/ws-connection.js';
import type { RateLimiter } from '../connection/rate-limiter.js';
import type { RoutesWebSocket } from '../connection/routes-websocket.js';
import type { RouteMetrics } from '../metrics/route-metrics.js';
import {
  closeReasonOf,
  isClientError,
  isThenable,
  stackOf,
  type ErrorPolicy,
} from './error-policy.js';
import type { MessageRouter, Target } from './message-router.js';
import type { BoundHandler, HandlerProgress, RouteHandlers } from './ws-handler-factory.js';

/** What an executor needs from its route, shared by all the route's connections. */
export interface ExecutorRoute {
  readonly name: string;
  readonly logger: Logger;
  readonly handlers: RouteHandlers;
  readonly router: MessageRouter;
  readonly errors: ErrorPolicy;
  readonly rateLimiter: RateLimiter | undefined;
  readonly maxQueuedMessages: number;
  readonly maxQueuedBytes: number;
  /** Longest wait of `@OnClose` (and of the answer to the peer's close) for accepted messages. */
  readonly closeTimeout: number;
  readonly keepUpgradeRequest: boolean;
  /** The route's counts; `undefined` when metrics are off. */
  readonly metrics: RouteMetrics | undefined;
  /** Runs a lifecycle hook, containing its errors; resolves when it is done. */
  runHook(handler: BoundHandler, conn: WsConnection, payload: unknown): Promise<void>;
  /**
   * Told when a closed connection starts (`true`) and stops (`false`) waiting for its
   * accepted messages, so that a shutdown can wait for them too.
   */
  awaitingClose(executor: ConnectionExecutor, waiting: boolean): void;
  /** Told of every `@OnClose` run, so the route can wait for them at shutdown. */
  closing(run: Promise<void>): void;
  /** `@OnOpen` has finished and its reply was sent (a recovery route replays here). */
  opened(conn: WsConnection): void;
}

/**
 * The states of a connection's executor:
 *
 *     opening ──▶ idle ⇄ busy          (messages, one at a time, in arrival order)
 *        │          │      │
 *        └──────────┴──────┴──▶ failed (@OnOpen failed, or a message the route cannot take)
 *     any ── close event ──▶ closed once the accepted messages are done ──▶ @OnClose, once
 *
 * `busy` lasts while a handler's return value is pending: a Promise until it settles; an
 * Observable only until the handler itself has returned it (its values are sent as they come,
 * and it is torn down on close), so a stream that stays quiet never holds the queue.
 */
const OPENING = 0;
const IDLE = 1;
const BUSY = 2;
const FAILED = 3;
const CLOSED = 4;

/** `flags` */
const PAUSED = 1;
const RETURNED_INLINE = 2;
const CLOSE_RAN = 4;

/** Waiting messages as flat pairs (data, isBinary), and their bytes. */
interface InboundQueue {
  items: (Buffer | boolean)[];
  bytes: number;
}

/** What an executor rarely needs: allocated on first use. */
interface Extras {
  /** The close event was seen: `@OnClose` runs when the queue is done. */
  closed?: { code: number; reason: string };
  /** Close with this once the messages already accepted are answered (rate limit). */
  closeWhenIdle?: { code: number; reason: string };
  /** The peer's close frame, whose answer waits for the accepted messages. */
  peerClose?: { code: number | undefined; reason: Buffer | string | undefined };
  /** Bounds the waits above by `closeTimeout`. */
  closeTimer?: NodeJS.Timeout;
  /** `closeTimeout` passed once already: a close after it does not wait again. */
  waitedOut?: boolean;
  /** The close code sent after a protocol error (1002, 1007, 1009). */
  protocolErrorCode?: number;
  subscriptions?: Set<Subscription>;
  /** The Observable reply being subscribed, until its handler has returned. */
  gate?: ReplyGate;
}

/** Holds the queue for an Observable reply until its handler returned (or it emitted). */
interface ReplyGate {
  handlerReturned(result: unknown): void;
  /** Lets the queue move on now (the stream was torn down). */
  release(): void;
}

/**
 * Runs one connection's handlers: `@OnOpen`, then messages one at a time in arrival order (so
 * replies keep the order of the messages that caused them, as in Tornado and Jakarta
 * WebSocket), then `@OnClose` exactly once, after every message accepted before the close.
 * Different connections never wait for each other.
 *
 * The waiting queue is bounded by count and bytes; at either cap the socket stops being read
 * (TCP flow control then holds the client back) until the queue halves.
 */
export class ConnectionExecutor implements HandlerProgress {
  // Every open connection has one: its own state is two numbers and two rarely set fields.
  private state: number = IDLE;
  private flags = 0;
  /** Messages waiting for the one being handled, in order. */
  private queue: InboundQueue | undefined = undefined;
  private extras: Extras | undefined = undefined;

  constructor(
    readonly route: ExecutorRoute,
    readonly conn: WsConnection,
  ) {}

  /** Reading from the socket is paused until the queue halves. */
  private get paused(): boolean {
    return (this.flags & PAUSED) !== 0;
  }
  private set paused(value: boolean) {
    this.flags = value ? this.flags | PAUSED : this.flags & ~PAUSED;
  }
  /** The handler of the message being run returned within `invoke()`. */
  private get returnedInline(): boolean {
    return (this.flags & RETURNED_INLINE) !== 0;
  }
  private set returnedInline(value: boolean) {
    this.flags = value ? this.flags | RETURNED_INLINE : this.flags & ~RETURNED_INLINE;
  }

  private get more(): Extras {
    return (this.extras ??= {});
  }

  /** The close code sent after a protocol error, if one was. */
  get protocolErrorCode(): number | undefined {
    return this.extras?.protocolErrorCode;
  }
  set protocolErrorCode(code: number | undefined) {
    if (code !== undefined) this.more.protocolErrorCode = code;
  }

  /** Runs `@OnOpen`; messages that arrive meanwhile wait. */
  open(handler: BoundHandler | undefined): void {
    const { conn } = this;
    if (!handler) {
      this.releaseRequest();
      this.route.opened(conn);
      return;
    }
    this.state = OPENING;
    this.returnedInline = false;
    let result: unknown;
    try {
      result = handler.invoke(conn, conn.request, undefined, this);
    } catch (error) {
      this.openFailed(error);
      return;
    }
    const request = conn.request;
    const opened = (value: unknown): void => {
      if (this.state !== OPENING) return;
      this.releaseRequest();
      const settled = this.reply(handler, value, request, undefined);
      this.route.opened(conn);
      if (settled) this.settle();
      else this.state = BUSY;
    };
    if (isThenable(result))
      result.then(opened, (error: unknown) => {
        if (this.state === OPENING) this.openFailed(error);
      });
    else opened(result);
  }

  private openFailed(error: unknown): void {
    const { conn, route } = this;
    this.fail();
    const expected = isClientError(error);
    if (!expected) {
      route.logger.error(`${route.name}: @OnOpen failed for connection ${conn.id}`, stackOf(error));
      this.runErrorHook(error);
    }
    conn.close(
      expected ? CloseCode.PolicyViolation : CloseCode.InternalError,
      expected ? closeReasonOf(error) : INTERNAL_ERROR_MESSAGE,
    );
    this.releaseRequest();
    this.settle();
  }

  /** `@OnOpen` has finished (or there is none): the request goes, the user id is read again. */
  private releaseRequest(): void {
    if (!this.route.keepUpgradeRequest) this.conn.releaseRequest();
    this.conn.opened();
  }

  /** A message arrived. */
  receive(data: Buffer, isBinary: boolean): void {
    this.conn.alive = true;
    const { metrics } = this.route;
    if (metrics !== undefined) {
      metrics.messagesReceived++;
      metrics.bytesReceived += data.length;
    }
    const { state } = this;
    if (state === FAILED || state === CLOSED || this.extras?.closeWhenIdle) return;
    const { rateLimiter } = this.route;
    if (rateLimiter && !rateLimiter.take(this.conn)) {
      this.overLimit(rateLimiter);
      return;
    }
    if (state === IDLE) this.process(data, isBinary);
    else this.enqueue(data, isBinary);
  }

  private enqueue(data: Buffer, isBinary: boolean): void {
    const queue = (this.queue ??= { items: [], bytes: 0 });
    queue.items.push(data, isBinary);
    queue.bytes += data.length;
    const { maxQueuedMessages, maxQueuedBytes } = this.route;
    if (
      !this.paused &&
      (queue.items.length >= maxQueuedMessages * 2 || queue.bytes >= maxQueuedBytes)
    ) {
      this.paused = true;
      this.conn.socket.pause();
    }
  }

  /** Routes a message and runs its handler; leaves the state `busy` if the reply is pending. */
  private process(data: Buffer, isBinary: boolean): void {
    const found = this.route.router.route(data, isBinary);
    if ('handler' in found) {
      this.run(found);
    } else if (found.kind === 'unknown') {
      this.route.errors.answer(this.conn, found.error, found.text, found.event);
    } else {
      this.unsupported(found.reason);
    }
  }

  private run({ handler, payload, pattern }: Target): void {
    const { conn } = this;
    const { metrics } = this.route;
    // Timed only with metrics on: two clock reads are the dearest part of counting a message.
    const start = metrics === undefined ? 0 : performance.now();
    this.returnedInline = false;
    let result: unknown;
    try {
      result = handler.invoke(conn, payload, pattern, this);
    } catch (error) {
      if (metrics !== undefined) metrics.handled(start, true);
      this.route.errors.handlerFailed(conn, handler, error, payload, pattern);
      return;
    }
    if (isThenable(result)) {
      this.state = BUSY;
      result.then(
        (value) => {
          if (metrics !== undefined) metrics.handled(start, false);
          if (this.reply(handler, value, payload, pattern)) this.settle();
        },
        (error: unknown) => {
          if (metrics !== undefined) metrics.handled(start, true);
          this.route.errors.handlerFailed(conn, handler, error, payload, pattern);
          this.settle();
        },
      );
      return;
    }
    if (metrics !== undefined) metrics.handled(start, false);
    // Answered synchronously: the next message can go at once (the loop in settle() runs it).
    if (!this.reply(handler, result, payload, pattern)) this.state = BUSY;
  }

  /**
   * Sends what a handler returned. Returns whether the queue may move on now; otherwise an
   * Observable reply holds it until its handler has returned (see {@link subscribe}), and
   * then calls `settle()` itself.
   */
  private reply(
    handler: BoundHandler,
    result: unknown,
    payload: unknown,
    pattern: string | undefined,
  ): boolean {
    if (result === undefined || result === null) return true;
    if (!isObservable(result)) {
      this.send(handler, result, payload, pattern);
      return true;
    }
    return this.subscribe(handler, result, payload, pattern);
  }

  private send(
    handler: BoundHandler,
    value: unknown,
    payload: unknown,
    pattern: string | undefined,
  ): void {
    try {
      this.conn.send(value);
    } catch (error) {
      this.route.errors.handlerFailed(this.conn, handler, error, payload, pattern);
    }
  }

  /**
   * Subscribes an Observable reply. The queue waits only for what decides the order of
   * replies: the handler's own return (interceptors wrap it, so it may come after subscribe)
   * and, if that was a Promise, its settling; or the stream's first value or end, whichever
   * comes first.
   */
  private subscribe(
    handler: BoundHandler,
    stream: Observable<unknown>,
    payload: unknown,
    pattern: string | undefined,
  ): boolean {
    let holding = true;
    let subscribing = true;
    const release = (): void => {
      if (!holding) return;
      holding = false;
      if (this.extras?.gate === gate) this.extras.gate = undefined;
      if (!subscribing) this.settle();
    };
    const gate: ReplyGate = {
      release,
      handlerReturned: (result) => {
        if (isThenable(result)) {
          // Interceptors see the value a microtask after it settles; let them send it first.
          const after = (): void => void setImmediate(release);
          result.then(after, after);
        } else {
          release();
        }
      },
    };
    if (this.returnedInline) release();
    else this.more.gate = gate;
    let subscription: Subscription | undefined = undefined;
    const end = (): void => {
      release();
      if (subscription) this.extras?.subscriptions?.delete(subscription);
    };
    try {
      subscription = stream.subscribe({
        // The value goes out before the queue moves on: the next reply must not overtake it.
        next: (value) => {
          if (value !== undefined && value !== null) this.send(handler, value, payload, pattern);
          release();
        },
        error: (error: unknown) => {
          this.route.errors.handlerFailed(this.conn, handler, error, payload, pattern);
          end();
        },
        complete: end,
      });
    } catch (error) {
      this.route.errors.handlerFailed(this.conn, handler, error, payload, pattern);
      end();
    }
    subscribing = false;
    if (subscription && !subscription.closed) {
      if (this.state === CLOSED || this.extras?.closed) subscription.unsubscribe();
      else (this.more.subscriptions ??= new Set()).add(subscription);
    }
    return !holding;
  }

  /** @internal `HandlerProgress`: the handler of the message being run has returned. */
  handlerReturned(result: unknown): void {
    const gate = this.extras?.gate;
    if (gate) gate.handlerReturned(result);
    else this.returnedInline = true;
  }

  /** The pending reply is done: the next message runs, or the close goes on. */
  private settle(): void {
    if (this.state === BUSY || this.state === OPENING) this.state = IDLE;
    const { queue } = this;
    while (this.state === IDLE && queue?.items.length) {
      const data = queue.items.shift() as Buffer;
      const isBinary = queue.items.shift() as boolean;
      queue.bytes -= data.length;
      this.process(data, isBinary);
    }
    if (queue && queue.items.length === 0 && this.queue === queue) this.queue = undefined;
    if (this.paused && this.belowHalf()) {
      this.paused = false;
      this.conn.socket.resume();
    }
    if (this.state !== IDLE && this.state !== FAILED) return;
    const extras = this.extras;
    if (!extras) return;
    if (extras.closeWhenIdle)
      this.conn.close(extras.closeWhenIdle.code, extras.closeWhenIdle.reason);
    if (extras.peerClose) this.answerPeerClose();
    if (extras.closed) this.runClose();
  }

  /** The waiting queue is down to half of both caps: reading may resume. */
  private belowHalf(): boolean {
    const { queue } = this;
    if (!queue) return true;
    const { maxQueuedMessages, maxQueuedBytes } = this.route;
    return queue.items.length < maxQueuedMessages && queue.bytes < maxQueuedBytes / 2;
  }

  private get settled(): boolean {
    return (this.state === IDLE || this.state === FAILED) && !this.queue?.items.length;
  }

  /**
   * `ws` is about to answer the peer's close frame. While messages the peer sent before it are
   * still being handled, the answer waits for them (at most `closeTimeout`), so their replies
   * reach the peer before the server's close frame. Returns whether it waits.
   */
  deferPeerClose(code: number | undefined, reason: Buffer | string | undefined): boolean {
    if (this.settled) return false;
    const extras = this.more;
    extras.peerClose = { code, reason };
    this.startCloseTimer();
    return true;
  }

  private answerPeerClose(): void {
    const extras = this.more;
    const close = extras.peerClose;
    if (!close) return;
    extras.peerClose = undefined;
    (this.conn.socket as RoutesWebSocket).closeNow(close.code, close.reason);
  }

  /** The socket closed: `@OnClose` runs once the accepted messages are done. */
  closed(code: number, reason: string): void {
    const extras = this.more;
    extras.closed = { code, reason };
    if (extras.subscriptions) {
      for (const subscription of extras.subscriptions) subscription.unsubscribe();
      extras.subscriptions = undefined;
    }
    // A torn-down stream emits nothing more: it no longer holds the queue (and releasing it
    // may run what waited, up to @OnClose itself).
    extras.gate?.release();
    if ((this.flags & CLOSE_RAN) !== 0) return;
    if (this.paused) {
      this.paused = false;
      this.conn.socket.resume();
    }
    if (this.state === FAILED || extras.waitedOut) this.dropQueue();
    if (this.settled || extras.waitedOut) {
      this.runClose();
    } else {
      this.route.awaitingClose(this, true);
      this.startCloseTimer();
    }
  }

  private startCloseTimer(): void {
    const extras = this.more;
    if (extras.closeTimer) return;
    extras.closeTimer = setTimeout(() => this.closeTimedOut(), this.route.closeTimeout);
    extras.closeTimer.unref();
  }

  /**
   * A handler accepted before the close has not finished within `closeTimeout` (or the
   * application is shutting down and cannot wait longer): the close goes on without it.
   */
  closeTimedOut(): void {
    const extras = this.more;
    clearTimeout(extras.closeTimer);
    extras.closeTimer = undefined;
    extras.waitedOut = true;
    const { route, conn } = this;
    const waiting = this.queue ? this.queue.items.length / 2 : 0;
    route.logger.warn(
      `${route.name}: a handler of connection ${conn.id} was still running after the close; ` +
        `closing without waiting${waiting ? ` (${waiting} message(s) not handled)` : ''}`,
    );
    if (extras.peerClose) this.answerPeerClose();
    if (extras.closed) {
      this.dropQueue();
      this.runClose();
    }
  }

  private runClose(): void {
    if ((this.flags & CLOSE_RAN) !== 0) return;
    this.flags |= CLOSE_RAN;
    this.state = CLOSED;
    this.route.awaitingClose(this, false);
    const extras = this.more;
    clearTimeout(extras.closeTimer);
    extras.closeTimer = undefined;
    const handler = this.route.handlers.close;
    if (!handler) return;
    const closed = extras.closed ?? { code: CloseCode.Abnormal, reason: '' };
    this.route.closing(this.route.runHook(handler, this.conn, closed));
  }

  /** A message over the connection's rate limit: close with 1008, or drop it and count. */
  private overLimit(limiter: RateLimiter): void {
    const { conn, route } = this;
    const { messages, per, action = 'close' } = limiter.options;
    const what = `connection ${conn.id} from ${conn.remoteAddress} exceeded ${messages} messages per ${per} ms`;
    if (action === 'drop') {
      if (route.metrics !== undefined) route.metrics.droppedRateLimit++;
      if (conn.droppedMessages++ === 0)
        route.logger.warn(`${route.name}: ${what}; dropping messages over the limit`);
      return;
    }
    if (route.metrics !== undefined) route.metrics.rateLimitCloses++;
    route.logger.warn(`${route.name}: ${what}; closing with 1008`);
    // Messages that arrived within the limit are still answered; then the connection closes.
    this.more.closeWhenIdle = { code: CloseCode.PolicyViolation, reason: 'Rate limit exceeded' };
    if (this.state === IDLE) this.settle();
  }

  /** The message is of a kind the route cannot take at all: 1003 (RFC 6455 §7.4.1). */
  private unsupported(reason: string): void {
    const { route, conn } = this;
    route.logger.warn(`${route.name}: connection ${conn.id} closed with 1003: ${reason}`);
    this.fail();
    conn.close(CloseCode.UnsupportedData, reason);
  }

  private fail(): void {
    this.state = FAILED;
    this.dropQueue();
  }

  private dropQueue(): void {
    this.queue = undefined;
  }

  private runErrorHook(error: unknown): void {
    const { error: hook } = this.route.handlers;
    if (hook) void this.route.runHook(hook, this.conn, error);
  }
}
