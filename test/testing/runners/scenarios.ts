// What every runner runs: the same steps, registered by kit.node-test.ts, kit.vitest.ts (and,
// through the parent spec, jest). Failures are the kit's own errors or node:assert's.
import 'reflect-metadata';
import type { INestApplication } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import assert from 'node:assert/strict';
import { expectRefused, partial, wsTestClient } from '../../../lib/testing/index.js';
import { KitAppModule } from '../kit-app.js';

export function createKitApp(): Promise<INestApplication> {
  return NestFactory.create(KitAppModule.with(), { logger: false });
}

export async function echoes(app: INestApplication): Promise<void> {
  const client = await wsTestClient(app, '/echo');
  client.send('hello');
  assert.equal(await client.expectMessage('hello'), 'hello');
  client.send(Buffer.from([1, 2, 3]));
  assert.deepEqual([...(await client.expectMessage(Buffer.from([1, 2, 3])))], [1, 2, 3]);
  await client.expectNothing(50);
  assert.deepEqual(await client.close(), { code: 1005, reason: '' });
}

export async function eventsAndClose(app: INestApplication): Promise<void> {
  const client = await wsTestClient(app, '/events', { protocols: 'kit.v1' });
  await client.expectEvent('welcome', partial({ protocol: 'kit.v1' }));
  client.emit('ping', { n: 1 });
  assert.deepEqual(await client.expectEvent('pong', { n: 1 }), { n: 1 });
  client.emit('kick', 'done');
  await client.expectClose(4000, 'done');
}

export async function refusals(app: INestApplication): Promise<void> {
  const refusal = await expectRefused(app, '/guarded', 401, {
    body: partial({ message: 'Token required' }),
  });
  assert.equal(refusal.status, 401);
  const client = await wsTestClient(app, '/guarded?token=secret');
  await client.expectMessage('in');
  await client.close();
}

/** Fails on purpose: the runner must report the kit's message. */
export async function waitsForAMessageThatNeverComes(app: INestApplication): Promise<void> {
  const client = await wsTestClient(app, '/echo', { timeout: 100 });
  client.send('something else');
  await client.expectMessage('something else');
  await client.expectMessage('never sent');
}
