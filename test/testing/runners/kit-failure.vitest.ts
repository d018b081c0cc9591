// Fails on purpose (run by test/testing/runners.spec.ts): vitest must report the kit's message.
import type { INestApplication } from '@nestjs/common';
import { afterAll, beforeAll, it } from 'vitest';
import { closeWsTestClients } from '../../../lib/testing/index.js';
import { createKitApp, waitsForAMessageThatNeverComes } from './scenarios.js';

let app: INestApplication;
beforeAll(async () => {
  app = await createKitApp();
});
afterAll(async () => {
  await closeWsTestClients();
  await app.close();
});

it('waits for a message that never comes', () => waitsForAMessageThatNeverComes(app));
