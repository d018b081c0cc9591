import type { ClientRequest, IncomingMessage } from 'node:http';
import { WebSocket, type ClientOptions } from 'ws';
import { closeQuietly, track } from './open-sockets.js';
import { describeRefusal, readRefusal } from './refused-upgrade.js';
import { joinUrl, resolveBaseUrl, type WsTestTarget } from './test-target.js';
import { WS_TEST_DEFAULTS } from './testing.constants.js';
import { WsExpectationError } from './ws-expectation-error.js';
import {
  describeDataMatcher,
  describeMatcher,
  mismatch,
  mismatchEventData,
  type WsMatcher,
} from './ws-matchers.js';
import {
  describeClose,
  describeFrame,
  quote,
  toFrame,
  type WsCloseEvent,
  type WsTestFrame,
} from './ws-test-frame.js';

/** How a test client connects: `ws`'s client options, plus subprotocols and a timeout. */
export interface WsTestClientOptions extends ClientOptions {
  /** Headers of the upgrade request (`authorization`, `cookie`, …). */
  headers?: Record<string, string>;
  /** Subprotocols offered (`Sec-WebSocket-Protocol`). */
  protocols?: string | string[];
  /** The `Origin` header, as a browser would send it (none by default, as for a server client). */
  origin?: string;
  /**
   * How long the connect and each expectation of this client wait, in ms
   * (default {@link WS_TEST_DEFAULTS}.timeout).
   */
  timeout?: number;
}

/** Per-call options of an expectation. */
export interface WsExpectOptions {
  /** Overrides the client's timeout for this call (ms). */
  timeout?: number;
}

/** A waiting `expectMessage`/`expectEvent`: it takes the next frame. */
interface Taker {
  take(frame: WsTestFrame): void;
  closed(close: WsCloseEvent): void;
}

/** A waiting `expectNothing`/`expectClose`/`close`: it watches without taking. */
interface Watcher {
  frame?(frame: WsTestFrame): void;
  closed(close: WsCloseEvent): void;
}

/**
 * Connects a test client to `path` on the target's WebSocket routes and resolves once the
 * connection is open (messages the server sends from `@OnOpen` on are queued). An application
 * that is not listening yet is initialized and made to listen on 127.0.0.1 and a free port
 * (`app.close()` closes it); routes on the module's own `port` are found through
 * `WsRoutesGateway`. A refused upgrade rejects with its status and body (assert refusals
 * with {@link expectRefused}).
 *
 * ```ts
 * const client = await wsTestClient(app, '/rooms/42?name=ada', { headers: { authorization } });
 * client.emit('chat', 'hello');
 * await client.expectEvent('chat', { from: 'ada', text: 'hello' });
 * ```
 */
export async function wsTestClient(
  target: WsTestTarget,
  path: string,
  options: WsTestClientOptions = {},
): Promise<WsTestClient> {
  const failure = new WsExpectationError(wsTestClient);
  const url = joinUrl(await resolveBaseUrl(target), path);
  const { protocols, timeout = WS_TEST_DEFAULTS.timeout, ...clientOptions } = options;
  const socket = new WebSocket(url, protocols, clientOptions);
  track(socket);
  const client = new WsTestClient(socket, path, url, timeout);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      settle(
        failure.with(`wsTestClient: no answer to the upgrade of ${path} within ${timeout} ms`),
      );
      socket.terminate();
    }, timeout);
    const settle = (error?: Error) => {
      clearTimeout(timer);
      socket.off('open', opened);
      socket.off('error', failed);
      socket.off('unexpected-response', refused);
      if (error) reject(error);
      else resolve();
    };
    const opened = () => settle();
    const failed = (error: Error) =>
      settle(failure.with(`wsTestClient: could not connect to ${url}: ${error.message}`));
    const refused = (_request: ClientRequest, response: IncomingMessage) => {
      clearTimeout(timer);
      void readRefusal(response).then((refusal) => {
        // Ends the handshake the ws way: 'error' and 'close' on the socket, which untracks it.
        socket.terminate();
        settle(
          failure.with(
            `wsTestClient: the upgrade of ${path} was refused with ${describeRefusal(refusal)} ` +
              '(expectRefused() asserts a refusal)',
          ),
        );
      });
    };
    socket.once('open', opened);
    socket.once('error', failed);
    socket.once('unexpected-response', refused);
  });
  client.markOpen();
  return client;
}

/**
 * A real `ws` client with expectations, in the spirit of superwstest and Django Channels'
 * `WebsocketCommunicator`: every frame it receives is queued, and each `expectMessage` or
 * `expectEvent` takes the next one in arrival order and fails, with what arrived instead,
 * when it does not match or nothing arrives in time. Failures are thrown
 * {@link WsExpectationError}s, so it works under any runner.
 */
export class WsTestClient implements AsyncDisposable {
  /** Settles (never rejects) when the connection has closed, for whatever reason. */
  readonly closed: Promise<WsCloseEvent>;
  private readonly queue: WsTestFrame[] = [];
  private readonly takers: Taker[] = [];
  private readonly watchers = new Set<Watcher>();
  private openedAt = Date.now();
  private received = 0;
  private last: WsTestFrame | undefined;
  private closeEvent: WsCloseEvent | undefined;
  /** The close was asserted or asked for: `expectNothing` no longer reports it. */
  private closeSeen = false;
  private error: Error | undefined;

  /** @internal Use {@link wsTestClient}. */
  constructor(
    /** The `ws` socket, for what the kit does not wrap (`ping()`, `bufferedAmount`, …). */
    readonly socket: WebSocket,
    /** The path (and query) the client connected to. */
    readonly path: string,
    readonly url: string,
    /** The default timeout of this client's expectations (ms). */
    readonly timeout: number,
  ) {
    socket.on('message', (data: Buffer, isBinary: boolean) => this.receive(data, isBinary));
    socket.on('error', (error: Error) => (this.error = error));
    this.closed = new Promise((resolve) =>
      socket.once('close', (code: number, reason: Buffer) => {
        const close = { code, reason: reason.toString() };
        this.closeEvent = close;
        for (const taker of this.takers.splice(0)) taker.closed(close);
        for (const watcher of [...this.watchers]) watcher.closed(close);
        resolve(close);
      }),
    );
  }

  /** @internal */
  markOpen(): void {
    this.openedAt = Date.now();
  }

  /** The subprotocol the server chose, or `''`. */
  get protocol(): string {
    return this.socket.protocol;
  }

  /** Frames received and not yet taken by an expectation, oldest first. */
  get pending(): readonly WsTestFrame[] {
    return [...this.queue];
  }

  /**
   * Sends a text frame (a `string`) or a binary frame (bytes). Once the connection is closing
   * the data is discarded, as a browser's `send()` does: a server that closes right after the
   * open races the test's first send, and the next expectation reports the close anyway.
   */
  send(data: string | Uint8Array | ArrayBuffer): void {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    this.socket.send(data, { binary: typeof data !== 'string' });
  }

  /** Sends `value` as JSON text. */
  sendJson(value: unknown): void {
    this.send(JSON.stringify(value));
  }

  /** Sends `{"event": event, "data": data}`, what `@OnMessage(event)` handlers receive. */
  emit(event: string, data?: unknown): void {
    this.sendJson({ event, data });
  }

  /**
   * Takes the next message and checks it against `matcher` (see {@link WsMatcher}; none: any
   * message). Resolves with its value: parsed JSON, else the text, else the bytes. Fails when
   * the next message does not match, when none arrives within the timeout, or when the
   * connection closes first.
   */
  expectMessage<T = any>(matcher?: WsMatcher, options?: WsExpectOptions): Promise<T> {
    const failure = new WsExpectationError(this.expectMessage);
    return this.take(
      'expectMessage',
      describeMatcher(matcher),
      (frame) => mismatch(matcher, frame),
      failure,
      options,
    ).then((frame) => frame.value as T);
  }

  /**
   * Takes the next message, which must be `{"event": event, "data": …}`, checks its `data`
   * against `matcher` (a value, `partial()`, a `RegExp` for a string, or a predicate on the
   * data) and resolves with the data.
   */
  expectEvent<T = any>(event: string, matcher?: WsMatcher, options?: WsExpectOptions): Promise<T> {
    const failure = new WsExpectationError(this.expectEvent);
    const expected =
      matcher === undefined
        ? `event ${quote(event)}`
        : `event ${quote(event)} with data ${describeDataMatcher(matcher)}`;
    return this.take(
      'expectEvent',
      expected,
      (frame) => {
        const value = frame.value as { event?: unknown; data?: unknown } | null;
        if (frame.isBinary) return 'a binary frame instead of an event';
        if (value === null || typeof value !== 'object' || !('event' in value)) {
          return 'not an event message';
        }
        if (value.event !== event) return `event ${JSON.stringify(value.event)} instead`;
        return mismatchEventData(matcher, value.data, frame);
      },
      failure,
      options,
    ).then((frame) => (frame.value as { data: T }).data);
  }

  /**
   * Waits `ms` and fails on the first frame that arrives meanwhile (or is already waiting), and
   * on a close that no `expectClose` or `close()` accounted for.
   */
  expectNothing(ms: number): Promise<void> {
    const failure = new WsExpectationError(this.expectNothing);
    const head = `expectNothing on ${this.path}: expected nothing for ${ms} ms`;
    if (this.queue.length > 0) {
      const frame = this.queue[0];
      return Promise.reject(
        failure.with(`${head}, but ${describeFrame(frame)} was waiting${this.moreAfter(frame)}`, {
          received: frame,
        }),
      );
    }
    if (this.closeEvent) {
      if (this.closeSeen) return Promise.resolve();
      return Promise.reject(
        failure.with(`${head}, but the connection had closed with ${this.describeClosed()}`, {
          close: this.closeEvent,
        }),
      );
    }
    return new Promise((resolve, reject) => {
      const started = Date.now();
      const watcher: Watcher = {
        frame: (frame) => {
          finish();
          reject(
            failure.with(`${head}, got ${describeFrame(frame)} after ${Date.now() - started} ms`, {
              received: frame,
            }),
          );
        },
        closed: (close) => {
          finish();
          reject(
            failure.with(
              `${head}, but the connection closed with ${this.describeClosed()} after ${Date.now() - started} ms`,
              { close },
            ),
          );
        },
      };
      const timer = setTimeout(() => {
        finish();
        resolve();
      }, ms);
      const finish = () => {
        clearTimeout(timer);
        this.watchers.delete(watcher);
      };
      this.watchers.add(watcher);
    });
  }

  /**
   * Waits for the connection to close and checks the code and the reason (a string, or a
   * `RegExp`); resolves with both. Messages still waiting do not fail it (failures list them).
   */
  expectClose(
    code?: number,
    reason?: string | RegExp,
    options?: WsExpectOptions,
  ): Promise<WsCloseEvent> {
    const failure = new WsExpectationError(this.expectClose);
    const timeout = options?.timeout ?? this.timeout;
    const wanted =
      code === undefined && reason === undefined
        ? 'the connection to close'
        : `close ${code ?? 'with any code'}${reason === undefined ? '' : ` ${reason instanceof RegExp ? `reason matching ${reason}` : quote(reason)}`}`;
    const check = (close: WsCloseEvent): WsCloseEvent => {
      this.closeSeen = true;
      const codeOk = code === undefined || close.code === code;
      const reasonOk =
        reason === undefined ||
        (reason instanceof RegExp ? reason.test(close.reason) : close.reason === reason);
      if (codeOk && reasonOk) return close;
      throw failure.with(
        `expectClose on ${this.path}: expected ${wanted}, got ${this.describeClosed()}${this.unread()}`,
        { close },
      );
    };
    if (this.closeEvent) {
      try {
        return Promise.resolve(check(this.closeEvent));
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return this.waitClose(timeout).then(
      (close) => check(close),
      () => {
        throw failure.with(
          `expectClose on ${this.path}: expected ${wanted} within ${timeout} ms, but the connection is still open${this.unread()}`,
        );
      },
    );
  }

  /**
   * Closes the connection (code 1000 unless given) and resolves with the close the server
   * answered. A server that does not answer within the timeout gets the socket terminated and
   * the call fails.
   */
  async close(code?: number, reason?: string, options?: WsExpectOptions): Promise<WsCloseEvent> {
    const failure = new WsExpectationError(this.close);
    const timeout = options?.timeout ?? this.timeout;
    this.closeSeen = true;
    if (this.closeEvent) return this.closeEvent;
    if (this.socket.readyState === WebSocket.OPEN) this.socket.close(code, reason);
    try {
      return await this.waitClose(timeout);
    } catch {
      this.socket.terminate();
      await this.closed;
      throw failure.with(
        `close on ${this.path}: the server did not answer the close within ${timeout} ms; the socket was terminated`,
      );
    }
  }

  /** Drops the TCP connection without a close frame; resolves once it is closed. */
  terminate(): Promise<WsCloseEvent> {
    this.closeSeen = true;
    this.socket.terminate();
    return this.closed;
  }

  /** `await using client = await wsTestClient(…)`: closed at the end of the block, quietly. */
  [Symbol.asyncDispose](): Promise<void> {
    return closeQuietly(this.socket, this.timeout);
  }

  private receive(data: Buffer, isBinary: boolean): void {
    const frame = toFrame(data, isBinary, Date.now() - this.openedAt);
    this.received++;
    for (const watcher of [...this.watchers]) watcher.frame?.(frame);
    const taker = this.takers.shift();
    if (taker) taker.take(frame);
    else this.queue.push(frame);
  }

  private take(
    method: string,
    expected: string,
    check: (frame: WsTestFrame) => string | undefined,
    failure: WsExpectationError,
    options: WsExpectOptions | undefined,
  ): Promise<WsTestFrame> {
    const timeout = options?.timeout ?? this.timeout;
    const head = `${method} on ${this.path}: expected ${expected}`;
    return new Promise((resolve, reject) => {
      const judge = (frame: WsTestFrame) => {
        const before = this.last;
        this.last = frame;
        let why: string | undefined;
        try {
          why = check(frame);
        } catch (error) {
          // A predicate's own assertion error keeps its message and diff.
          reject(error);
          return;
        }
        if (why === undefined) resolve(frame);
        else {
          const previous = before ? `; the message before it was ${describeFrame(before)}` : '';
          reject(
            failure.with(
              `${head}, got ${describeFrame(frame)} (${why})${this.moreAfter(frame)}${previous}`,
              { received: frame },
            ),
          );
        }
      };
      const queued = this.queue.shift();
      if (queued) return judge(queued);
      if (this.closeEvent) {
        return reject(
          failure.with(
            `${head}, but the connection had closed with ${this.describeClosed()}${this.history()}`,
            { close: this.closeEvent },
          ),
        );
      }
      const timer = setTimeout(() => {
        this.takers.splice(this.takers.indexOf(taker), 1);
        reject(failure.with(`${head} within ${timeout} ms, but nothing arrived${this.history()}`));
      }, timeout);
      const taker: Taker = {
        take: (frame) => {
          clearTimeout(timer);
          judge(frame);
        },
        closed: (close) => {
          clearTimeout(timer);
          reject(
            failure.with(
              `${head}, but the connection closed with ${this.describeClosed()}${this.history()}`,
              { close },
            ),
          );
        },
      };
      this.takers.push(taker);
    });
  }

  /** Resolves with the close, or rejects after `timeout` ms. */
  private waitClose(timeout: number): Promise<WsCloseEvent> {
    return new Promise((resolve, reject) => {
      const watcher: Watcher = {
        closed: (close) => {
          clearTimeout(timer);
          this.watchers.delete(watcher);
          resolve(close);
        },
      };
      const timer = setTimeout(() => {
        this.watchers.delete(watcher);
        reject(new Error('timeout'));
      }, timeout);
      this.watchers.add(watcher);
    });
  }

  private describeClosed(): string {
    return this.closeEvent ? describeClose(this.closeEvent, this.error) : 'nothing';
  }

  /** What the client had received before, for a failure that got nothing. */
  private history(): string {
    if (!this.last) return `; no message arrived since the connection opened`;
    const count = this.received === 1 ? '1 message' : `${this.received} messages`;
    return `; ${count} arrived before, the last ${describeFrame(this.last)} at ${this.last.at} ms`;
  }

  /** The frames queued behind `frame`, for a failure that got an unexpected one. */
  private moreAfter(frame: WsTestFrame): string {
    const after = this.queue.filter((queued) => queued !== frame);
    if (after.length === 0) return '';
    const shown = after.slice(0, 3).map(describeFrame).join(', ');
    return `; then ${after.length} more: ${shown}${after.length > 3 ? ', …' : ''}`;
  }

  private unread(): string {
    if (this.queue.length === 0) return '';
    const shown = this.queue.slice(0, 3).map(describeFrame).join(', ');
    return `; ${this.queue.length} message(s) unread: ${shown}${this.queue.length > 3 ? ', …' : ''}`;
  }
}
