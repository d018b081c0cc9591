import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

// Jest runs tests in a VM context without `gc`; this exposes V8's to the tests.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Buffers are freed by weak callbacks after a collection: collect, yield, collect. */
export async function settleGarbage(): Promise<void> {
  gc();
  await new Promise((resolve) => setTimeout(resolve, 50));
  gc();
}
