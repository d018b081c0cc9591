// Fails on purpose (run by test/testing/runners.spec.ts): node:test must report the kit's message.
import type { INestApplication } from '@nestjs/common';
import { after, before, it } from 'node:test';
import { closeWsTestClients } from '../../../lib/testing/index.js';
import { createKitApp, waitsForAMessageThatNeverComes } from './scenarios.js';

let app: INestApplication;
before(async () => {
  app = await createKitApp();
});
after(async () => {
  await closeWsTestClients();
  await app.close();
});

it('waits for a message that never comes', () => waitsForAMessageThatNeverComes(app));
