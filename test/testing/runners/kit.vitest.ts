// vitest run --config test/testing/runners/vitest.config.ts kit.vitest (run by
// test/testing/runners.spec.ts): the kit under vitest.
import type { INestApplication } from '@nestjs/common';
import { afterAll, afterEach, beforeAll, describe, it } from 'vitest';
import { closeWsTestClients } from '../../../lib/testing/index.js';
import { createKitApp, echoes, eventsAndClose, refusals } from './scenarios.js';

describe('nestjs-ws-routes/testing under vitest', () => {
  let app: INestApplication;
  beforeAll(async () => {
    app = await createKitApp();
  });
  afterEach(() => closeWsTestClients());
  afterAll(() => app.close());

  it('echoes text and bytes', () => echoes(app));
  it('exchanges events and sees the close', () => eventsAndClose(app));
  it('asserts refusals', () => refusals(app));
});
