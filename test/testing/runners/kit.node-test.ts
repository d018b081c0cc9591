// node --import ./test/utils/ts-register.mjs --test test/testing/runners/kit.node-test.ts
// (run by test/testing/runners.spec.ts): the kit under node:test, no other runner loaded.
import type { INestApplication } from '@nestjs/common';
import { after, afterEach, before, describe, it } from 'node:test';
import { closeWsTestClients } from '../../../lib/testing/index.js';
import { createKitApp, echoes, eventsAndClose, refusals } from './scenarios.js';

describe('nestjs-ws-routes/testing under node:test', () => {
  let app: INestApplication;
  before(async () => {
    app = await createKitApp();
  });
  afterEach(() => closeWsTestClients());
  after(() => app.close());

  it('echoes text and bytes', () => echoes(app));
  it('exchanges events and sees the close', () => eventsAndClose(app));
  it('asserts refusals', () => refusals(app));
});
