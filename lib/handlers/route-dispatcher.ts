import { HttpException, Logger } from '@nestjs/common';
import { ExecutionContextHost } from '@nestjs/core/helpers/execution-context-host.js';
import { WsException } from '@nestjs/websockets';
import { isObservable, type Observable, type Subscription } from 'rxjs';
import type { RawData, WebSocket } from 'ws';
import { CloseCode, INTERNAL_ERROR_MESSAGE } from '../ws-routes.constants.js';
import type { OutboundEvents, WsConnection } from '../connection/ws-connection.js';
import type { OutboundPolicy } from '../connection/outbound.js';
import type { WsConnectionRegistry } from '../connection/ws-connection-registry.js';
import type { RateLimiter } from '../connection/rate-limiter.js';
import { truncateCloseReason } from '../connection/truncate-utf8.js';
import type { BoundHandler, RouteHandlers, WsFilterBinding } from './ws-handler-factory.js';
import type { WsRoutesExceptionFilter } from './ws-routes-exception-filter.js';

/**
 * Messages a connection may have waiting while its handler is busy before the server stops
 * reading from its socket. TCP flow control then holds the client back (its `bufferedAmount`
 * grows) instead of the server queueing without bound.
 */
const MAX_QUEUED_MESSAGES = 1024;

const kSession = Symbol('nestjs-ws-routes:session');
type SessionSocket = WebSocket & { [kSession]: Session };

function onMessage(this: WebSocket, data: RawData, isBinary: boolean): void {
  const session = (this as SessionSocket)[kSession];
  session.dispatcher.receive(session, data as Buffer, isBinary);
}
function onClose(this: WebSocket, code: number, reason: Buffer): void {
  const session = (this as SessionSocket)[kSession];
  session.dispatcher.onClose(session, code, reason);
}
function onError(this: WebSocket, error: Error): void {
  const session = (this as SessionSocket)[kSession];
  session.dispatcher.onSocketError(session, error);
}
function onPong(this: WebSocket, payload: Buffer): void {
  const session = (this as SessionSocket)[kSession];
  session.dispatcher.onHeartbeatFrame(session, 'pong', payload);
}
function onPing(this: WebSocket, payload: Buffer): void {
  const session = (this as SessionSocket)[kSession];
  session.dispatcher.onHeartbeatFrame(session, 'ping', payload);
}

/** Longest event name quoted back in an "unknown event" answer. */
const MAX_QUOTED_EVENT = 64;

const BUSY = 1;
const FAILED = 2;
const PAUSED = 4;

/** What a session rarely needs: allocated on first use. */
interface SessionExtras {
  protocolErrorCode?: number;
  closeWhenIdle?: { code: number; reason: string };
  subscriptions?: Set<Subscription>;
  whenIdle?: () => void;
}

/**
 * Per-connection state of the dispatcher. Every open connection has one, so it is kept small:
 * three flags in one number and the rarely used fields in an object made on demand.
 */
class Session {
  private flags = 0;
  /** Waiting messages as flat pairs: data, isBinary. */
  queue: (Buffer | boolean)[] | undefined = undefined;
  private extras: SessionExtras | undefined = undefined;

  constructor(
    readonly dispatcher: RouteDispatcher,
    readonly conn: WsConnection,
  ) {}

  /** A handler of this connection is running; later messages wait in `queue`, in order. */
  get busy(): boolean {
    return (this.flags & BUSY) !== 0;
  }
  set busy(value: boolean) {
    this.flags = value ? this.flags | BUSY : this.flags & ~BUSY;
  }
  /** `@OnOpen` threw: nothing else runs for this connection. */
  get failed(): boolean {
    return (this.flags & FAILED) !== 0;
  }
  set failed(value: boolean) {
    this.flags = value ? this.flags | FAILED : this.flags & ~FAILED;
  }
  /** Reading from the socket is paused until the queue halves. */
  get paused(): boolean {
    return (this.flags & PAUSED) !== 0;
  }
  set paused(value: boolean) {
    this.flags = value ? this.flags | PAUSED : this.flags & ~PAUSED;
  }
  /** The close code the server sent after a protocol error (1002, 1007, 1009). */
  get protocolErrorCode(): number | undefined {
    return this.extras?.protocolErrorCode;
  }
  set protocolErrorCode(value: number | undefined) {
    (this.extras ??= {}).protocolErrorCode = value;
  }
  /** Set when the connection must close once the messages it already accepted are answered. */
  get closeWhenIdle(): SessionExtras['closeWhenIdle'] {
    return this.extras?.closeWhenIdle;
  }
  set closeWhenIdle(value: SessionExtras['closeWhenIdle']) {
    (this.extras ??= {}).closeWhenIdle = value;
  }
  /** Observable replies still running. */
  get subscriptions(): Set<Subscription> | undefined {
    return this.extras?.subscriptions;
  }
  set subscriptions(value: Set<Subscription> | undefined) {
    (this.extras ??= {}).subscriptions = value;
  }
  /** Resolves `@OnClose`'s wait for the last queued message. */
  get whenIdle(): (() => void) | undefined {
    return this.extras?.whenIdle;
  }
  set whenIdle(value: (() => void) | undefined) {
    (this.extras ??= {}).whenIdle = value;
  }
}

/** What a dispatcher does besides running handlers. */
export interface RouteDispatcherOptions {
  rateLimiter?: RateLimiter;
  /** Told once per connection, when it leaves the registry. */
  onRemoved?: (conn: WsConnection) => void;
  /** Keep `conn.request` after `@OnOpen` (default: released, to save ~1 KB per connection). */
  keepUpgradeRequest?: boolean;
  /** The route's heartbeat runs: pings and pongs from clients count as signs of life. */
  heartbeat?: boolean;
  /** Received messages waiting for a busy handler, by count and bytes, before reading pauses. */
  inbound?: { maxMessages: number; maxBytes: number };
  /** Longest time `@OnClose` waits for the messages accepted before the close (ms). */
  closeTimeout?: number;
}

interface Target {
  handler: BoundHandler;
  payload: unknown;
  pattern: string | undefined;
}

/**
 * Runs one route's handlers for its connections. Messages of one connection are handled one at
 * a time, in arrival order, so replies keep the order of the messages that caused them (as in
 * Tornado and Jakarta WebSocket); different connections never wait for each other.
 */
export class RouteDispatcher implements OutboundEvents {
  private readonly pendingCloses = new Set<Promise<void>>();
  private readonly acceptsJsonEvents: boolean;

  constructor(
    private readonly routeName: string,
    private readonly handlers: RouteHandlers,
    private readonly registry: WsConnectionRegistry,
    private readonly defaultFilter: WsRoutesExceptionFilter,
    private readonly logger: Logger,
    private readonly options: RouteDispatcherOptions = {},
  ) {
    this.acceptsJsonEvents = handlers.events.size > 0;
  }

  /** Binds a freshly registered connection to this route's handlers and runs `@OnOpen`. */
  attach(conn: WsConnection): void {
    const session = new Session(this, conn);
    // The listeners are shared by every socket and find their session on it: five closures
    // per connection would cost more heap than the connection's own state.
    const socket = conn.socket as SessionSocket;
    socket[kSession] = session;
    socket.on('message', onMessage);
    socket.on('close', onClose);
    socket.on('error', onError);
    // ws answers pings itself; these are only needed by the heartbeat and @OnPing/@OnPong.
    if (this.options.heartbeat || this.handlers.pong) socket.on('pong', onPong);
    if (this.options.heartbeat || this.handlers.ping) socket.on('ping', onPing);
    if (this.handlers.open) this.open(session, this.handlers.open);
    else if (!this.options.keepUpgradeRequest) conn.releaseRequest();
  }

  get watchesDrain(): boolean {
    return this.handlers.drain !== undefined;
  }

  /** @internal `OutboundEvents`: the connection's queue passed `maxBufferedAmount`. */
  onOverflow(conn: WsConnection, policy: OutboundPolicy): void {
    if (conn.droppedMessages === 0 || policy.slowConsumer === 'close') {
      this.logger.warn(
        `${this.routeName}: connection ${conn.id} has over ${policy.maxBufferedAmount} bytes waiting to be sent; ` +
          (policy.slowConsumer === 'close'
            ? 'closing it with 1013'
            : 'dropping messages until it catches up'),
      );
    }
  }

  /** @internal `OutboundEvents`: the connection's queue drained. */
  onDrain(conn: WsConnection): void {
    if (this.handlers.drain) void this.runHook(this.handlers.drain, conn, undefined);
  }

  /** @internal A ping or pong arrived. */
  onHeartbeatFrame(session: Session, kind: 'ping' | 'pong', payload: Buffer): void {
    session.conn.alive = true;
    const handler = this.handlers[kind];
    if (handler) void this.runHook(handler, session.conn, payload);
  }

  /** Resolves when every `@OnClose` that has started has finished. */
  async settled(): Promise<void> {
    while (this.pendingCloses.size) await Promise.allSettled([...this.pendingCloses]);
  }

  private open(session: Session, handler: BoundHandler): void {
    const { conn } = session;
    session.busy = true;
    let result: unknown;
    try {
      result = handler.invoke(conn, conn.request, undefined);
    } catch (error) {
      this.openFailed(session, error);
      return;
    }
    const request = conn.request;
    const opened = (value: unknown) => {
      const replied = this.reply(session, handler, value, request, undefined);
      if (replied) void replied.then(() => this.opened(session));
      else this.opened(session);
    };
    if (isThenable(result))
      result.then(opened, (error: unknown) => this.openFailed(session, error));
    else opened(result);
  }

  /** `@OnOpen` has answered: the request goes, and the messages that waited run. */
  private opened(session: Session): void {
    if (!this.options.keepUpgradeRequest) session.conn.releaseRequest();
    this.release(session);
  }

  private openFailed(session: Session, error: unknown): void {
    const { conn } = session;
    session.failed = true;
    session.queue = undefined;
    const expected = isClientError(error);
    if (!expected) {
      this.logger.error(
        `${this.routeName}: @OnOpen failed for connection ${conn.id}`,
        stackOf(error),
      );
      this.runErrorHook(conn, error);
    }
    conn.close(
      expected ? CloseCode.PolicyViolation : CloseCode.InternalError,
      expected ? messageOf(error) : INTERNAL_ERROR_MESSAGE,
    );
    if (!this.options.keepUpgradeRequest) conn.releaseRequest();
    this.release(session);
  }

  /** @internal */
  receive(session: Session, data: Buffer, isBinary: boolean): void {
    session.conn.alive = true;
    if (session.failed || session.closeWhenIdle) return;
    if (this.options.rateLimiter && !this.options.rateLimiter.take(session.conn)) {
      this.overLimit(session, this.options.rateLimiter);
      return;
    }
    if (session.busy) {
      const queue = (session.queue ??= []);
      queue.push(data, isBinary);
      if (!session.paused && queue.length >= MAX_QUEUED_MESSAGES * 2) {
        session.paused = true;
        session.conn.socket.pause();
      }
      return;
    }
    this.process(session, data, isBinary);
  }

  private process(session: Session, data: Buffer, isBinary: boolean): void {
    const target = this.route(session, data, isBinary);
    if (!target) return;
    const pending = this.run(session, target);
    if (!pending) return; // answered synchronously: the next message can go at once
    session.busy = true;
    pending.then(
      () => this.release(session),
      (error: unknown) => {
        this.logger.error(
          `${this.routeName}: answering connection ${session.conn.id} failed`,
          stackOf(error),
        );
        this.release(session);
      },
    );
  }

  /** Marks the session idle and handles what waited, in order. */
  private release(session: Session): void {
    session.busy = false;
    const queue = session.queue;
    while (!session.busy && !session.failed && queue?.length) {
      const data = queue.shift() as Buffer;
      const isBinary = queue.shift() as boolean;
      this.process(session, data, isBinary);
    }
    if (session.paused && (!queue || queue.length < MAX_QUEUED_MESSAGES)) {
      session.paused = false;
      session.conn.socket.resume();
    }
    if (!session.busy && session.closeWhenIdle) {
      session.conn.close(session.closeWhenIdle.code, session.closeWhenIdle.reason);
    }
    if (!session.busy && session.whenIdle) {
      const resolve = session.whenIdle;
      session.whenIdle = undefined;
      resolve();
    }
  }

  /** Finds the handler of a message, or answers the client when there is none. */
  private route(session: Session, data: Buffer, isBinary: boolean): Target | undefined {
    const { handlers } = this;
    if (isBinary) {
      if (handlers.message) return { handler: handlers.message, payload: data, pattern: undefined };
      this.refuse(session, 'This route does not accept binary messages');
      return undefined;
    }
    const text = data.toString();
    if (this.acceptsJsonEvents) {
      const envelope = parseEnvelope(text);
      const handler = envelope && handlers.events.get(envelope.event);
      if (handler) return { handler, payload: envelope.data, pattern: envelope.event };
      if (!handlers.message) {
        const problem = envelope
          ? `Unknown event "${envelope.event.slice(0, MAX_QUOTED_EVENT)}"`
          : 'Malformed message: expected JSON {"event": string, "data": any}';
        this.answerError(session.conn, new WsException(problem), text, envelope?.event);
        return undefined;
      }
    }
    if (handlers.message) return { handler: handlers.message, payload: text, pattern: undefined };
    this.refuse(session, 'This route does not accept messages');
    return undefined;
  }

  /** A message over the connection's rate limit: close with 1008, or drop it and count. */
  private overLimit(session: Session, limiter: RateLimiter): void {
    const { conn } = session;
    const { messages, per, action = 'close' } = limiter.options;
    const what = `connection ${conn.id} from ${conn.remoteAddress} exceeded ${messages} messages per ${per} ms`;
    if (action === 'drop') {
      if (conn.droppedMessages++ === 0)
        this.logger.warn(`${this.routeName}: ${what}; dropping messages over the limit`);
      return;
    }
    this.logger.warn(`${this.routeName}: ${what}; closing with 1008`);
    // Messages that arrived within the limit are still answered; then the connection closes.
    session.closeWhenIdle = { code: CloseCode.PolicyViolation, reason: 'Rate limit exceeded' };
    if (!session.busy) this.release(session);
  }

  /** The message is of a kind the route cannot take at all: 1003 (RFC 6455 §7.4.1). */
  private refuse(session: Session, reason: string): void {
    this.logger.warn(
      `${this.routeName}: connection ${session.conn.id} closed with 1003: ${reason}`,
    );
    session.failed = true;
    session.queue = undefined;
    session.conn.close(CloseCode.UnsupportedData, reason);
  }

  /** Runs a message handler and sends its reply; a Promise when that goes on asynchronously. */
  private run(
    session: Session,
    { handler, payload, pattern }: Target,
  ): PromiseLike<void> | undefined {
    const { conn } = session;
    let result: unknown;
    try {
      result = handler.invoke(conn, payload, pattern);
    } catch (error) {
      this.fail(conn, handler, error, payload, pattern);
      return undefined;
    }
    if (isThenable(result)) {
      return result.then(
        (value) => this.reply(session, handler, value, payload, pattern),
        (error: unknown) => this.fail(conn, handler, error, payload, pattern),
      );
    }
    return this.reply(session, handler, result, payload, pattern) ?? undefined;
  }

  /**
   * Sends a handler's result to its connection. An Observable sends every value until it
   * completes or the connection closes; the next message of the connection waits for its
   * first value (or its end), so that single-value streams, which interceptors produce, keep
   * replies in order.
   */
  private reply(
    session: Session,
    handler: BoundHandler,
    result: unknown,
    payload: unknown,
    pattern: string | undefined,
  ): Promise<void> | void {
    if (result === undefined || result === null) return;
    const { conn } = session;
    if (!isObservable(result)) {
      try {
        conn.send(result);
      } catch (error) {
        this.fail(conn, handler, error, payload, pattern);
      }
      return;
    }
    // Resolved when the stream's first value (or its end) has been seen; undefined when that
    // happened inside subscribe(), as with an interceptor around a synchronous handler.
    let firstValueSeen = false;
    let resolveFirst: (() => void) | undefined;
    // Not const: a synchronous Observable completes inside subscribe(), before assignment.
    // eslint-disable-next-line prefer-const
    let subscription: Subscription | undefined;
    const seen = () => {
      if (firstValueSeen) return;
      firstValueSeen = true;
      resolveFirst?.();
    };
    const end = () => {
      seen();
      if (subscription) session.subscriptions?.delete(subscription);
    };
    subscription = (result as Observable<unknown>).subscribe({
      next: (value) => {
        seen();
        if (value === undefined || value === null) return;
        try {
          conn.send(value);
        } catch (error) {
          this.fail(conn, handler, error, payload, pattern);
        }
      },
      error: (error: unknown) => {
        end();
        this.fail(conn, handler, error, payload, pattern);
      },
      complete: end,
    });
    if (!subscription.closed) {
      if (conn.readyState >= conn.CLOSING) subscription.unsubscribe();
      else (session.subscriptions ??= new Set()).add(subscription);
    }
    if (firstValueSeen) return;
    return new Promise<void>((resolve) => (resolveFirst = resolve));
  }

  /** A message handler threw: the route's filters first, then Nest 12's exception message. */
  private fail(
    conn: WsConnection,
    handler: BoundHandler,
    error: unknown,
    payload: unknown,
    pattern: string | undefined,
  ): void {
    const host = new ExecutionContextHost([conn, payload, pattern]);
    host.setType('ws');
    const filter = selectFilter(handler.filters, error);
    if (filter) {
      try {
        const handled = filter.func(error, host) as unknown;
        if (handled instanceof Promise) {
          handled.catch((filterError: unknown) =>
            this.answerError(conn, filterError, payload, pattern),
          );
        }
        return;
      } catch (filterError) {
        error = filterError;
      }
    }
    this.answerError(conn, error, payload, pattern);
  }

  /** The default answer: an `exception` message, generic for unexpected errors, which are logged. */
  private answerError(
    conn: WsConnection,
    error: unknown,
    payload: unknown,
    pattern: string | undefined,
  ): void {
    if (!isClientError(error)) this.runErrorHook(conn, error);
    const host = new ExecutionContextHost([conn, payload, pattern]);
    host.setType('ws');
    this.defaultFilter.catch(error, host);
  }

  /** @internal */
  onSocketError(session: Session, error: Error): void {
    session.protocolErrorCode ??= closeCodeOf(error);
    const code = (error as Error & { code?: string }).code;
    this.logger.warn(
      `${this.routeName}: connection ${session.conn.id} failed: ${error.message}${code ? ` (${code})` : ''}`,
    );
    this.runErrorHook(session.conn, error);
  }

  /** @internal */
  onClose(session: Session, code: number, reason: Buffer): void {
    const { conn } = session;
    // After a protocol error ws sends its close frame and stops reading, so it never sees the
    // peer's answer and reports 1006; @OnClose gets the code that was actually sent.
    conn.closeCode =
      code === CloseCode.Abnormal && session.protocolErrorCode ? session.protocolErrorCode : code;
    conn.closeReason = conn.terminationReason ?? reason.toString();
    this.registry.remove(conn);
    this.options.onRemoved?.(conn);
    if (session.subscriptions) {
      for (const subscription of session.subscriptions) subscription.unsubscribe();
      session.subscriptions = undefined;
    }
    if (session.failed) session.queue = undefined;
    if (session.paused) conn.socket.resume();
    const closeHandler = this.handlers.close;
    if (!closeHandler) return;
    // Messages that arrived before the close are still handled (a chat line sent just before
    // leaving is still delivered to the room); @OnClose runs after them.
    const idle = session.busy
      ? new Promise<void>((resolve) => (session.whenIdle = resolve))
      : undefined;
    const run = async () => {
      if (idle) await idle;
      await this.runHook(closeHandler, conn, { code, reason: conn.closeReason });
    };
    const pending = run().finally(() => this.pendingCloses.delete(pending));
    this.pendingCloses.add(pending);
  }

  private runErrorHook(conn: WsConnection, error: unknown): void {
    if (this.handlers.error) void this.runHook(this.handlers.error, conn, error);
  }

  /** Runs a lifecycle hook whose errors have no client to go to: they are logged. */
  private async runHook(
    handler: BoundHandler,
    conn: WsConnection,
    payload: unknown,
  ): Promise<void> {
    try {
      await handler.invoke(conn, payload, undefined);
    } catch (error) {
      this.logger.error(
        `${this.routeName}: ${handler.methodName}() failed for connection ${conn.id}`,
        stackOf(error),
      );
    }
  }
}

/** The close code `ws` attached to a protocol error (its `kStatusCode` symbol). */
function closeCodeOf(error: Error): number | undefined {
  const key = Object.getOwnPropertySymbols(error).find(
    (symbol) => symbol.description === 'status-code',
  );
  const code = key && (error as unknown as Record<symbol, unknown>)[key];
  return typeof code === 'number' ? code : undefined;
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as PromiseLike<unknown> | null)?.then === 'function';
}

/** Parses `{"event": string, "data": any}`; anything else is `undefined`. */
function parseEnvelope(text: string): { event: string; data: unknown } | undefined {
  if (text.length < 2 || text.charCodeAt(0) !== 123 /* { */) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  const event = (value as { event?: unknown }).event;
  return typeof event === 'string'
    ? { event, data: (value as { data?: unknown }).data }
    : undefined;
}

function selectFilter(filters: WsFilterBinding[], error: unknown): WsFilterBinding | undefined {
  return filters.find(
    ({ exceptionMetatypes }) =>
      !exceptionMetatypes.length || exceptionMetatypes.some((type) => error instanceof type),
  );
}

/** Errors written to be shown to the client; everything else is a bug that gets logged. */
function isClientError(error: unknown): error is WsException | HttpException {
  return (
    error instanceof WsException || (error instanceof HttpException && error.getStatus() < 500)
  );
}

function messageOf(error: WsException | HttpException): string {
  return truncateCloseReason(error.message);
}

function stackOf(error: unknown): string | undefined {
  return error instanceof Error ? error.stack : String(error);
}
