import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../', import.meta.url));

interface Run {
  code: number | null;
  output: string;
}

/** Runs a runner in a child process from the repository root; kills it after `timeout` ms. */
function run(args: string[], timeout = 90_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      cwd: root,
      env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    // A kit that leaves a handle open keeps the child alive: that is a failure, not a wait.
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${args.join(' ')} did not exit within ${timeout} ms:\n${output}`));
    }, timeout);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}

const nodeTest = (file: string) =>
  run(['--import', './test/utils/ts-register.mjs', '--test', `test/testing/runners/${file}`]);
const vitest = (filter: string) =>
  run([
    'node_modules/vitest/vitest.mjs',
    'run',
    '--config',
    'test/testing/runners/vitest.config.ts',
    filter,
  ]);

const timeoutFailure =
  'expectMessage on /echo: expected text "never sent" within 100 ms, but nothing arrived; ' +
  '1 message arrived before, the last text "something else"';

describe('the kit under other runners (child processes)', () => {
  it('passes under node:test and the process exits by itself', async () => {
    const { code, output } = await nodeTest('kit.node-test.ts');
    expect(output).toContain('# pass 3');
    expect(output).toContain('# fail 0');
    expect(code).toBe(0);
  }, 120_000);

  it('reports a failed expectation under node:test with the kit’s message and the test’s line', async () => {
    const { code, output } = await nodeTest('kit-failure.node-test.ts');
    expect(code).toBe(1);
    expect(output).toContain('not ok 1 - waits for a message that never comes');
    expect(output).toContain(timeoutFailure);
    expect(output).toMatch(/waitsForAMessageThatNeverComes \(file:.*scenarios\.ts:\d+:\d+\)/);
  }, 120_000);

  it('passes under vitest', async () => {
    const { code, output } = await vitest('kit.vitest');
    expect(output).toMatch(/Tests\s+3 passed \(3\)/);
    expect(code).toBe(0);
  }, 120_000);

  it('reports a failed expectation under vitest with the kit’s message', async () => {
    const { code, output } = await vitest('kit-failure.vitest');
    expect(code).toBe(1);
    expect(output).toMatch(/Tests\s+1 failed \(1\)/);
    expect(output).toContain(`WsExpectationError: ${timeoutFailure}`);
  }, 120_000);

  it('leaves no open handle under jest --detectOpenHandles (the README example)', async () => {
    const { code, output } = await run([
      '--expose-gc',
      '--experimental-vm-modules',
      'node_modules/jest/bin/jest.js',
      '--runInBand',
      '--detectOpenHandles',
      'test/testing/readme-example.spec.ts',
    ]);
    expect(output).toMatch(/Tests:\s+3 passed, 3 total/);
    expect(output).not.toMatch(/open handle/i);
    expect(code).toBe(0);
  }, 120_000);
});
