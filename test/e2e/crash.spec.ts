import {
  clientFrame,
  Opcode,
  parseHttpResponse,
  RawSocket,
  upgradeRequest,
} from '../utils/raw-socket.js';
import { startChildApp, type ChildApp } from '../utils/child-app.js';
import { delay, refusedUpgrade, TestClient } from '../utils/ws-client.js';

/*
 * "No client can crash the process" (issue 9, finding 1 and decided behaviour 13). The app
 * runs in a child process (test/fixtures/hostile-app.ts): a crash is the child's exit, which
 * fails the case with the child's stderr. After every case the process must still be alive and
 * a normal client must still get its echo.
 */

const FIXTURE = 'test/fixtures/hostile-app.ts';
let child: ChildApp;

beforeAll(async () => {
  child = await startChildApp(FIXTURE);
});

// A case that crashed the child must not fail every case after it; a crash may still be on
// its way out when the case has already failed.
beforeEach(async () => {
  await Promise.race([child.exited, delay(100)]);
  if (!child.alive()) child = await startChildApp(FIXTURE);
});

afterAll(async () => {
  await child?.stop();
});

/** A case body run in `child.whileAlive()`: a crash fails the case with the child's stderr. */
function inChild<A extends unknown[]>(
  body: (...args: A) => Promise<void>,
): (...args: A) => Promise<void> {
  return (...args) => child.whileAlive(() => body(...args));
}

/** Alive a moment later (a crash on a timer or the next turn gets its chance) and serving. */
async function expectServing(app: ChildApp = child): Promise<void> {
  await delay(100);
  app.assertAlive();
  const client = await TestClient.open(app.url('/echo'));
  client.send('still there?');
  expect(await client.next(2000)).toBe('still there?');
  await client.close();
  app.assertAlive();
}

/** Writes a complete, valid upgrade request, then resets the connection after `ms`. */
async function upgradeThenReset(path: string, ms: number, app: ChildApp = child): Promise<void> {
  const raw = await RawSocket.connect(app.port);
  raw.write(upgradeRequest(path));
  await delay(ms);
  raw.socket.resetAndDestroy();
}

describe('the harness', () => {
  test.each([
    ['an uncaught exception', 'throw'],
    ['an unhandled rejection', 'reject'],
  ])('%s in the child fails the case with its stderr', async (_what, command) => {
    const doomed = await startChildApp(FIXTURE);
    try {
      const outcome = doomed.whileAlive(async () => {
        await doomed.request(command, `planted ${command}`);
        await doomed.exited; // bounded by the case's timeout
      });
      await expect(outcome).rejects.toThrow(/died \(exit code 1\)[^]*planted/);
      expect((await doomed.exited).code).toBe(1);
      expect(doomed.alive()).toBe(false);
      expect(() => doomed.assertAlive()).toThrow(`planted ${command}`);
    } finally {
      await doomed.stop();
    }
  });
});

describe('a TCP reset while an async handshake guard runs', () => {
  test.each([
    ['a module `guards` entry', '/echo?moduleDelay=300'],
    ['a class @UseGuards guard', '/guarded?classDelay=300'],
  ])(
    'reset 50 ms into a 300 ms guard (%s): the process survives',
    inChild(async (_what, path) => {
      await upgradeThenReset(path, 50);
      await delay(350); // the guard finishes and the pipeline goes on with a dead socket
      await expectServing();
    }),
  );

  test.each([
    ['a module `guards` entry', '/echo?moduleDelay=100&moduleDeny'],
    ['a class @UseGuards guard', '/guarded?classDelay=100&classDeny'],
  ])(
    'reset around a refusal (%s throws 403 after 100 ms)',
    inChild(async (_what, path) => {
      // Some of these resets land just before the 403 is written, some just after: EPIPE,
      // ECONNRESET on the write or on the read.
      await Promise.all([90, 98, 100, 102, 105, 110].map((ms) => upgradeThenReset(path, ms)));
      await delay(150);
      await expectServing();
    }),
  );
});

describe('an upgrade while app.close() is in progress', () => {
  let closing: ChildApp | undefined;
  afterEach(async () => {
    await closing?.stop();
    closing = undefined;
  });

  /** A child of its own (it will be shut down), and the upgrades sent before close() began. */
  async function closingApp(): Promise<ChildApp> {
    return (closing = await startChildApp(FIXTURE));
  }

  test('a guard that finishes after close() began, then a protocol error and a reset', async () => {
    const app = await closingApp();
    await app.whileAlive(async () => {
      const raw = await RawSocket.connect(app.port);
      raw.write(upgradeRequest('/guarded?classDelay=300'));
      await delay(100);
      const closed = app.request<string>('close', undefined, 10_000);
      // The guard ends during the shutdown: a 101 and a 1001 close (the shutdown branch), or a
      // refusal. Then an unmasked frame, which the server must fail, and a reset.
      await raw.waitFor((data) => data.includes('\r\n\r\n'), 2000, 'an answer to the upgrade');
      expect([101, 503]).toContain(parseHttpResponse(raw.received)?.status);
      raw.write(clientFrame(Opcode.Text, 'too late', { mask: false }));
      await delay(20);
      raw.socket.resetAndDestroy();
      expect(await closed).toBe('closed');
      await delay(200);
    });
    app.assertAlive();
  });

  test('resets of upgrades in their guards and of upgrades refused for the shutdown', async () => {
    const app = await closingApp();
    await app.whileAlive(async () => {
      // In its guard when close() begins, reset during the shutdown.
      const inGuard = await RawSocket.connect(app.port);
      inGuard.write(upgradeRequest('/echo?moduleDelay=300'));
      // Connected before the shutdown; its request arrives after close() began (a 503).
      const late = await RawSocket.connect(app.port);
      await delay(100);
      const closed = app.request<string>('close', undefined, 10_000);
      await delay(20);
      late.write(upgradeRequest('/echo'));
      late.socket.resetAndDestroy();
      await delay(30);
      inGuard.socket.resetAndDestroy();
      expect(await closed).toBe('closed');
      await delay(200);
    });
    app.assertAlive();
  });
});

describe('user callbacks that throw at the handshake', () => {
  test.each([
    ['selectProtocol throws', '/protocol-throws', 'selectProtocol exploded'],
    [
      'selectProtocol throws (requireProtocol)',
      '/protocol-throws-required',
      'selectProtocol exploded',
    ],
  ])(
    '%s: 500, logged, the process survives',
    inChild(async (_what, path, error) => {
      const from = child.logs.length;
      const refused = await refusedUpgrade(child.url(path), { protocols: ['chat.v1'] });
      expect(refused.status).toBe(500);
      expect(refused.body).not.toContain('exploded');
      // Lines of this case only: the case before logs the same error.
      await child.waitForLog(error, 3000, from);
      await expectServing();
    }),
  );

  test.each([
    ['throws', '/origin-throws', 'origin check exploded'],
    ['rejects', '/origin-rejects', 'origin check rejected'],
  ])(
    'an origin function that %s: 500, logged, the process survives',
    inChild(async (_what, path, error) => {
      const from = child.logs.length;
      const refused = await refusedUpgrade(child.url(path), {
        origin: 'https://elsewhere.example',
      });
      expect(refused.status).toBe(500);
      expect(refused.body).not.toContain(error);
      // Lines of this case only: the case before logs the same error.
      await child.waitForLog(error, 3000, from);
      await expectServing();
    }),
  );
});

describe('a WsException whose data cannot be serialized', () => {
  test.each([
    ['a BigInt', 'bigint'],
    ['a cycle', 'cycle'],
  ])(
    '%s: the client gets "Internal server error", no stack, and the connection goes on',
    inChild(async (_what, event) => {
      const from = child.logs.length;
      const client = await TestClient.open(child.url('/errors'));
      client.emit(event);
      const answer = (await client.next(2000)).toString();
      const parsed = JSON.parse(answer) as { event: string; data: { message: string } };
      expect(parsed.event).toBe('exception');
      expect(parsed.data.message).toBe('Internal server error');
      expect(answer).not.toMatch(/\bat |\.ts:\d|big|self/);
      client.emit('ping');
      expect(await client.next(2000)).toBe('pong');
      await client.close();
      await child.waitForLog(/^\[error\]/, 3000, from);
      await expectServing();
    }),
  );
});

describe('lifecycle handlers that throw', () => {
  test.each([
    ['throws synchronously', '/open-throws', 'OnOpen exploded'],
    ['rejects', '/open-rejects', 'OnOpen rejected'],
  ])(
    'an @OnOpen that %s: the connection closes 1011, the error is logged',
    inChild(async (_what, path, error) => {
      const client = await TestClient.open(child.url(path));
      const { code } = await client.closed;
      expect(code).toBe(1011);
      await child.waitForLog(error);
      await expectServing();
    }),
  );

  test(
    'an @OnClose that throws: the error is logged, the process survives',
    inChild(async () => {
      const client = await TestClient.open(child.url('/close-throws'));
      client.send('bye');
      expect(await client.next(2000)).toBe('bye');
      await client.close();
      await child.waitForLog('OnClose exploded');
      await expectServing();
    }),
  );
});
