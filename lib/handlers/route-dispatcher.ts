import type { RecoveryHub } from '../recovery/recovery-hub.js';
import type { Logger } from '@nestjs/common';
import type { RawData, WebSocket } from 'ws';
import { CloseCode, INTERNAL_ERROR_MESSAGE, WS_ROUTES_DEFAULTS } from '../ws-routes.constants.js';
import type { OutboundEvents, WsConnection } from '../connection/ws-connection.js';
import type { OutboundPolicy } from '../connection/outbound.js';
import type { RoutesWebSocket } from '../connection/routes-websocket.js';
import type { WsConnectionRegistry } from '../connection/ws-connection-registry.js';
import type { RateLimiter } from '../connection/rate-limiter.js';
import type { RouteMetrics } from '../metrics/route-metrics.js';
import { ConnectionExecutor, type ExecutorRoute } from './connection-executor.js';
import { ErrorPolicy, stackOf } from './error-policy.js';
import { MessageRouter } from './message-router.js';
import type { BoundHandler, RouteHandlers } from './ws-handler-factory.js';
import type { WsRoutesExceptionFilter } from './ws-routes-exception-filter.js';

const kExecutor = Symbol('nestjs-ws-routes:executor');
type ExecutorSocket = RoutesWebSocket & { [kExecutor]: ConnectionExecutor };

// The listeners are shared by every socket and find their executor on it: five closures per
// connection would cost more heap than the connection's own state.
function onMessage(this: WebSocket, data: RawData, isBinary: boolean): void {
  const executor = (this as ExecutorSocket)[kExecutor];
  // Nothing may escape into ws's 'message' listener: it would end the process.
  try {
    executor.receive(data as Buffer, isBinary);
  } catch (error) {
    dispatcherOf(executor).unexpected(executor.conn, error);
  }
}
function onClose(this: WebSocket, code: number, reason: Buffer): void {
  const executor = (this as ExecutorSocket)[kExecutor];
  dispatcherOf(executor).onClose(executor, code, reason);
}
function onError(this: WebSocket, error: Error): void {
  const executor = (this as ExecutorSocket)[kExecutor];
  dispatcherOf(executor).onSocketError(executor, error);
}
function onPong(this: WebSocket, payload: Buffer): void {
  const executor = (this as ExecutorSocket)[kExecutor];
  dispatcherOf(executor).onHeartbeatFrame(executor.conn, 'pong', payload);
}
function onPing(this: WebSocket, payload: Buffer): void {
  const executor = (this as ExecutorSocket)[kExecutor];
  dispatcherOf(executor).onHeartbeatFrame(executor.conn, 'ping', payload);
}
function dispatcherOf(executor: ConnectionExecutor): RouteDispatcher {
  return executor.route as RouteDispatcher;
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
  /** The route keeps its broadcasts for replay (`recovery`). */
  recovery?: RecoveryHub;
  /** The route's counts (the `metrics` option). */
  metrics?: RouteMetrics;
}

/**
 * One route's handlers at work: binds each new connection to an executor (which runs its
 * handlers in order, see `ConnectionExecutor`), listens to its socket, and runs the hooks
 * that have no message behind them (`@OnDrain`, `@OnPing`, `@OnPong`, `@OnError`).
 */
export class RouteDispatcher implements OutboundEvents, ExecutorRoute {
  private readonly pendingCloses = new Set<Promise<void>>();
  /** Closed connections whose `@OnClose` waits for their accepted messages. */
  private readonly awaitingCloses = new Set<ConnectionExecutor>();
  readonly router: MessageRouter;
  readonly errors: ErrorPolicy;
  readonly rateLimiter: RateLimiter | undefined;
  readonly maxQueuedMessages: number;
  readonly maxQueuedBytes: number;
  readonly closeTimeout: number;
  readonly keepUpgradeRequest: boolean;
  readonly metrics: RouteMetrics | undefined;

  constructor(
    readonly name: string,
    readonly handlers: RouteHandlers,
    private readonly registry: WsConnectionRegistry,
    defaultFilter: WsRoutesExceptionFilter,
    readonly logger: Logger,
    private readonly options: RouteDispatcherOptions = {},
  ) {
    this.router = new MessageRouter(handlers);
    this.errors = new ErrorPolicy(name, defaultFilter, logger, (conn, error) =>
      this.runErrorHook(conn, error),
    );
    this.rateLimiter = options.rateLimiter;
    this.maxQueuedMessages = options.inbound?.maxMessages ?? WS_ROUTES_DEFAULTS.maxQueuedMessages;
    this.maxQueuedBytes =
      options.inbound?.maxBytes ??
      WS_ROUTES_DEFAULTS.maxQueuedPayloads * WS_ROUTES_DEFAULTS.maxPayload;
    this.closeTimeout = options.closeTimeout ?? WS_ROUTES_DEFAULTS.shutdownTimeout;
    this.keepUpgradeRequest = options.keepUpgradeRequest ?? WS_ROUTES_DEFAULTS.keepUpgradeRequest;
    this.metrics = options.metrics;
  }

  /** Binds a freshly registered connection to this route's handlers and runs `@OnOpen`. */
  attach(conn: WsConnection): void {
    const executor = new ConnectionExecutor(this, conn);
    const socket = conn.socket as ExecutorSocket;
    socket[kExecutor] = executor;
    socket.on('message', onMessage);
    socket.on('close', onClose);
    socket.on('error', onError);
    // ws answers pings itself; these are only needed by the heartbeat and @OnPing/@OnPong.
    if (this.options.heartbeat || this.handlers.pong) socket.on('pong', onPong);
    if (this.options.heartbeat || this.handlers.ping) socket.on('ping', onPing);
    this.options.recovery?.attach(conn);
    executor.open(this.handlers.open);
  }

  /** @internal `@OnOpen` has finished: a reconnecting connection gets what it missed. */
  opened(conn: WsConnection): void {
    this.options.recovery?.resume(conn, this.registry);
  }

  get watchesDrain(): boolean {
    return this.handlers.drain !== undefined;
  }

  /** @internal `OutboundEvents`: the connection's queue passed `maxBufferedAmount`. */
  onOverflow(conn: WsConnection, policy: OutboundPolicy): void {
    if (conn.droppedMessages === 0 || policy.slowConsumer === 'close') {
      this.logger.warn(
        `${this.name}: connection ${conn.id} has over ${policy.maxBufferedAmount} bytes waiting to be sent; ` +
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

  /** @internal `OutboundEvents`: the answer to the peer's close waits for accepted messages. */
  deferPeerClose(
    conn: WsConnection,
    code: number | undefined,
    reason: Buffer | string | undefined,
  ): boolean {
    const executor = (conn.socket as Partial<ExecutorSocket>)[kExecutor];
    return executor ? executor.deferPeerClose(code, reason) : false;
  }

  /** @internal A ping or pong arrived. */
  onHeartbeatFrame(conn: WsConnection, kind: 'ping' | 'pong', payload: Buffer): void {
    conn.alive = true;
    const handler = this.handlers[kind];
    if (handler) void this.runHook(handler, conn, payload);
  }

  /**
   * Resolves when the `@OnClose` of every closed connection has finished. Connections whose
   * accepted messages are still being handled get until `deadline`; then their `@OnClose` runs
   * without waiting longer.
   */
  async settled(deadline: number): Promise<void> {
    while (this.awaitingCloses.size && Date.now() < deadline) await pause(10);
    for (const executor of [...this.awaitingCloses]) executor.closeTimedOut();
    while (this.pendingCloses.size) await Promise.allSettled([...this.pendingCloses]);
  }

  /** @internal `ExecutorRoute` */
  awaitingClose(executor: ConnectionExecutor, waiting: boolean): void {
    if (waiting) this.awaitingCloses.add(executor);
    else this.awaitingCloses.delete(executor);
  }

  /** @internal `ExecutorRoute` */
  closing(run: Promise<void>): void {
    const pending = run.finally(() => this.pendingCloses.delete(pending));
    this.pendingCloses.add(pending);
  }

  /** @internal Something threw where nothing should have: logged, the connection closes 1011. */
  unexpected(conn: WsConnection, error: unknown): void {
    this.logger.error(`${this.name}: connection ${conn.id} failed`, stackOf(error));
    try {
      conn.close(CloseCode.InternalError, INTERNAL_ERROR_MESSAGE);
    } catch {
      conn.terminate(INTERNAL_ERROR_MESSAGE);
    }
  }

  /** @internal */
  onSocketError(executor: ConnectionExecutor, error: Error): void {
    executor.protocolErrorCode ??= closeCodeOf(error);
    const code = (error as Error & { code?: string }).code;
    this.logger.warn(
      `${this.name}: connection ${executor.conn.id} failed: ${error.message}${code ? ` (${code})` : ''}`,
    );
    this.runErrorHook(executor.conn, error);
  }

  /** @internal The socket closed: the connection leaves the registry at once, `@OnClose` follows. */
  onClose(executor: ConnectionExecutor, code: number, reason: Buffer): void {
    const { conn } = executor;
    // After a protocol error ws sends its close frame and stops reading, so it never sees the
    // peer's answer and reports 1006; @OnClose gets the code that was actually sent.
    conn.closeCode =
      code === CloseCode.Abnormal && executor.protocolErrorCode ? executor.protocolErrorCode : code;
    conn.closeReason = conn.terminationReason ?? reason.toString();
    this.registry.remove(conn);
    this.options.recovery?.forget(conn);
    this.options.onRemoved?.(conn);
    executor.closed(conn.closeCode, conn.closeReason);
  }

  private runErrorHook(conn: WsConnection, error: unknown): void {
    if (this.handlers.error) void this.runHook(this.handlers.error, conn, error);
  }

  /** @internal Runs a lifecycle hook whose errors have no client to go to: they are logged. */
  async runHook(handler: BoundHandler, conn: WsConnection, payload: unknown): Promise<void> {
    try {
      await handler.invoke(conn, payload, undefined);
    } catch (error) {
      this.errors.hookFailed(conn, handler, error);
    }
  }
}

/**
 * The close code `ws` sent for a protocol error, from the error's public `code` (RFC 6455
 * §7.4.1): invalid UTF-8 (and a corrupt deflate stream) 1007, a message over `maxPayload` 1009,
 * too many fragments 1008, any other violation 1002.
 */
function closeCodeOf(error: Error): number | undefined {
  const code = (error as Error & { code?: unknown }).code;
  if (typeof code !== 'string') return undefined;
  if (code === 'WS_ERR_INVALID_UTF8' || code.startsWith('Z_')) return CloseCode.InvalidPayload;
  if (code.startsWith('WS_ERR_UNSUPPORTED_')) return CloseCode.MessageTooBig;
  if (code === 'WS_ERR_TOO_MANY_BUFFERED_PARTS') return CloseCode.PolicyViolation;
  if (code.startsWith('WS_ERR_')) return CloseCode.ProtocolError;
  return undefined;
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
