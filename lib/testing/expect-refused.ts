import type { ClientRequest, IncomingMessage } from 'node:http';
import { WebSocket } from 'ws';
import { closeQuietly, track } from './open-sockets.js';
import { describeRefusal, readRefusal, type WsRefusal } from './refused-upgrade.js';
import { joinUrl, resolveBaseUrl, type WsTestTarget } from './test-target.js';
import { WS_TEST_DEFAULTS } from './testing.constants.js';
import { WsExpectationError } from './ws-expectation-error.js';
import { describeMatcher, mismatch, type WsMatcher } from './ws-matchers.js';
import { describeClose } from './ws-test-frame.js';
import type { WsTestClientOptions } from './ws-test-client.js';

/** How long an accepted upgrade is watched for the close of a refusal by close (ms). */
const CLOSE_AT_ONCE = 200;

/** Options of {@link expectRefused}: how to connect, and what the body must be. */
export interface WsExpectRefusedOptions extends WsTestClientOptions {
  /**
   * The body, matched like a message (a value or `partial()` against the parsed JSON, a string
   * or `RegExp` against the text, a predicate).
   */
  body?: WsMatcher;
}

/**
 * Opens `path` and expects the upgrade to be refused with the HTTP `status` (and, with
 * `options.body`, that body); resolves with the status, headers and body. Fails if the
 * upgrade is accepted (the connection is then closed), if the status or the body differ, or
 * if no answer comes within the timeout.
 *
 * ```ts
 * await expectRefused(app, '/rooms/42', 401, { body: { statusCode: 401, message: 'Token required' } });
 * ```
 */
export async function expectRefused(
  target: WsTestTarget,
  path: string,
  status: number,
  options: WsExpectRefusedOptions = {},
): Promise<WsRefusal> {
  const failure = new WsExpectationError(expectRefused);
  const url = joinUrl(await resolveBaseUrl(target), path);
  const { protocols, timeout = WS_TEST_DEFAULTS.timeout, body, ...clientOptions } = options;
  const head = `expectRefused: expected the upgrade of ${path} to be refused with ${status}`;
  const socket = new WebSocket(url, protocols, clientOptions);
  track(socket);
  const refusal = await new Promise<WsRefusal>((resolve, reject) => {
    let settled = false;
    const settle = (error: Error | undefined, refusal?: WsRefusal) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error) reject(error);
      else resolve(refusal!);
    };
    const timer = setTimeout(() => {
      settle(failure.with(`${head}, but no answer came within ${timeout} ms`));
      socket.terminate();
    }, timeout);
    // Also swallows the error of the terminate() that ends a refused handshake.
    socket.on('error', (error: Error) =>
      settle(
        failure.with(`${head}, but the connection failed without an HTTP answer: ${error.message}`),
      ),
    );
    socket.once('open', () => {
      clearTimeout(timer);
      const protocol = socket.protocol ? `, protocol ${JSON.stringify(socket.protocol)}` : '';
      const accepted = `${head}, but it was accepted (101${protocol})`;
      // A route with refuse: 'close' completes the handshake and closes at once with 4000 +
      // status: the failure says so, and how to assert it.
      const closedAtOnce = (code: number, reason: Buffer) => {
        clearTimeout(wait);
        const close = { code, reason: reason.toString() };
        const hint =
          code >= 4000 && code < 5000
            ? `; a refusal by close (refuse: 'close') is asserted with (await wsTestClient(…)).expectClose(${code})`
            : '';
        settle(failure.with(`${accepted} and closed at once with ${describeClose(close)}${hint}`));
      };
      const wait = setTimeout(() => {
        socket.off('close', closedAtOnce);
        settle(failure.with(accepted));
        void closeQuietly(socket, timeout);
      }, CLOSE_AT_ONCE);
      socket.once('close', closedAtOnce);
    });
    socket.once('unexpected-response', (_request: ClientRequest, response: IncomingMessage) => {
      clearTimeout(timer);
      void readRefusal(response).then((refusal) => {
        settle(undefined, refusal);
        socket.terminate();
      });
    });
  });
  if (refusal.status !== status) {
    throw failure.with(`${head}, got ${describeRefusal(refusal)}`);
  }
  if (body !== undefined) {
    const frame = { isBinary: false, data: refusal.text, value: refusal.body, at: 0 };
    const why = mismatch(body, frame);
    if (why !== undefined) {
      throw failure.with(
        `${head} and the body ${describeMatcher(body)}, got ${describeRefusal(refusal)} (${why})`,
      );
    }
  }
  return refusal;
}
