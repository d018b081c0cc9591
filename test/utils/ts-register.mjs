// `node --import ./test/utils/ts-register.mjs app.ts`: runs the TypeScript sources of the
// package and its test fixtures in a plain Node process (Node 20 cannot strip types itself).
import { register } from 'node:module';

register('./ts-loader.mjs', import.meta.url);
