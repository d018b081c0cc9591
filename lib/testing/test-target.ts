import type { INestApplication } from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WsRoutesGateway } from '../ws-routes.gateway.js';

/**
 * What a test connects to: a Nest application (initialized, listening or neither), or the
 * base URL of a server that is already running (`ws://127.0.0.1:3000`).
 */
export type WsTestTarget = INestApplication | string;

/**
 * The preparation of each application (init, then listen if needed), shared by concurrent
 * clients: Nest's `init()` is not safe to run twice at once (routes would be added twice).
 */
const prepared = new WeakMap<INestApplication, Promise<void>>();

/**
 * The `ws://host:port` the target's routes are served on. An application that is not
 * listening yet is initialized and listens on 127.0.0.1 and a free port, through
 * `app.listen()`, so `app.close()` closes it as it closes any listening app (Express and
 * Fastify alike). With the module's `port` option the routes have their own server, which
 * listens once the application is initialized.
 */
export async function resolveBaseUrl(target: WsTestTarget): Promise<string> {
  if (typeof target === 'string') return baseOfUrl(target);
  let preparation = prepared.get(target);
  if (!preparation) {
    preparation = prepare(target);
    prepared.set(target, preparation);
    preparation.catch(() => prepared.delete(target));
  }
  await preparation;
  const address = findGateway(target).address();
  if (!address) {
    throw new Error(
      'nestjs-ws-routes/testing: this application serves no WebSocket route (no provider is decorated with @WsRoute())',
    );
  }
  return `ws://${connectHost(address)}:${address.port}`;
}

async function prepare(app: INestApplication): Promise<void> {
  await app.init();
  if (findGateway(app).address()) return;
  const server = app.getHttpServer() as Server | undefined;
  if (!server?.listening) await app.listen(0, '127.0.0.1');
}

function findGateway(app: INestApplication): WsRoutesGateway {
  // Not app.get(WsRoutesGateway): NestFactory's proxy exits the process on an unknown
  // provider (unless abortOnError is false); a ModuleRef's get() throws as usual.
  const moduleRef = app.get(ModuleRef);
  try {
    return moduleRef.get(WsRoutesGateway, { strict: false });
  } catch {
    throw new Error(
      'nestjs-ws-routes/testing: this application does not import WsRoutesModule (no WsRoutesGateway found)',
    );
  }
}

/** @internal A server bound to every interface is reached on loopback. */
export function connectHost({ address, family }: AddressInfo): string {
  if (address === '0.0.0.0') return '127.0.0.1';
  if (address === '::') return '[::1]';
  return family === 'IPv6' ? `[${address}]` : address;
}

function baseOfUrl(url: string): string {
  const parsed = new URL(url);
  if (parsed.protocol === 'http:') parsed.protocol = 'ws:';
  else if (parsed.protocol === 'https:') parsed.protocol = 'wss:';
  else if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:') {
    throw new Error(`nestjs-ws-routes/testing: not a WebSocket URL: ${url}`);
  }
  return `${parsed.protocol}//${parsed.host}${parsed.pathname.replace(/\/$/, '')}`;
}

/** `base` and a path that must start with `/` (a query string may follow). */
export function joinUrl(base: string, path: string): string {
  if (!path.startsWith('/')) {
    throw new Error(
      `nestjs-ws-routes/testing: the path must start with "/", got ${JSON.stringify(path)}`,
    );
  }
  return `${base}${path}`;
}
