import 'reflect-metadata';
import { Injectable, Module, type Type } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import type { INestApplication } from '@nestjs/common';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import WebSocket from 'ws';
import {
  BroadcastService,
  ConnectedSocket,
  MessageBody,
  OnMessage,
  OnOpen,
  WsConnection,
  WsRoute,
  WsRoutesModule,
} from '../../lib/index.js';

/**
 * wss:// on an HTTPS server (Express and Fastify): the write path may write batches straight
 * to a plain TCP socket's descriptor (lib/connection/direct-write.ts), and must never do so
 * for a TLS socket, whose bytes must go through the cipher. Route broadcasts (one shared
 * buffer per turn), replies, a large message and paced turns all arrive intact over TLS.
 * The certificate is a self-signed one for 127.0.0.1, made for these tests only.
 */
const key = readFileSync(new URL('../fixtures/tls/key.pem', import.meta.url));
const cert = readFileSync(new URL('../fixtures/tls/cert.pem', import.meta.url));

@Injectable()
@WsRoute('/secure')
class SecureRoute {
  constructor(private readonly broadcast: BroadcastService) {}

  @OnOpen() open() {
    return 'welcome';
  }

  /** Route broadcasts and replies interleaved in one turn, then a 200 KiB message. */
  @OnMessage('mix')
  mix(@ConnectedSocket() conn: WsConnection) {
    for (let i = 0; i < 100; i++) {
      if (i % 3 === 0) conn.send(`r${i}`);
      else this.broadcast.toRoute(SecureRoute).send(`b${i}`);
    }
    conn.send(Buffer.alloc(200 * 1024, 7));
    return 'mixed';
  }

  /** `count` broadcasts, one per event-loop turn. */
  @OnMessage('paced')
  paced(@MessageBody() count: number) {
    let i = 0;
    const step = () => {
      this.broadcast.toRoute(SecureRoute).send(`p${i}`);
      if (++i < count) setImmediate(step);
    };
    step();
  }
}

@Module({
  imports: [WsRoutesModule.forRoot({ heartbeat: false, rateLimit: false })],
  providers: [SecureRoute],
})
class SecureModule {}

async function startHttps(module: Type, platform: 'express' | 'fastify') {
  const app: INestApplication =
    platform === 'fastify'
      ? await NestFactory.create(module, new FastifyAdapter({ https: { key, cert } }), {
          logger: false,
        })
      : await NestFactory.create(module, { logger: false, httpsOptions: { key, cert } });
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  return { app, url: `wss://127.0.0.1:${port}/secure` };
}

/** A wss client that records every message (text as is, binary as `bin:<length>:<byte>`). */
function open(url: string): Promise<{ ws: WebSocket; got: string[] }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { ca: cert });
    const got: string[] = [];
    ws.on('message', (data: Buffer, binary) =>
      got.push(binary ? `bin:${data.length}:${data.every((b) => b === 7)}` : data.toString()),
    );
    ws.once('error', reject);
    ws.once('open', () => resolve({ ws, got }));
  });
}

async function until(condition: () => boolean, timeout = 5000): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe.each(['express', 'fastify'] as const)('wss:// on %s', (platform) => {
  let app: INestApplication;
  let url: string;
  beforeAll(async () => {
    ({ app, url } = await startHttps(SecureModule, platform));
  });
  afterAll(async () => {
    await app?.close();
  });

  it('delivers route broadcasts, replies and a large message in order and intact', async () => {
    const sender = await open(url);
    const other = await open(url);
    await until(() => sender.got.length === 1 && other.got.length === 1);
    sender.ws.send(JSON.stringify({ event: 'mix' }));
    const all = Array.from({ length: 100 }, (_, i) => (i % 3 === 0 ? `r${i}` : `b${i}`));
    const expectedSender = ['welcome', ...all, 'bin:204800:true', 'mixed'];
    const expectedOther = ['welcome', ...all.filter((m) => m.startsWith('b'))];
    await until(() => sender.got.length >= expectedSender.length);
    await until(() => other.got.length >= expectedOther.length);
    expect(sender.got).toEqual(expectedSender);
    expect(other.got).toEqual(expectedOther);
    sender.ws.close();
    other.ws.close();
  });

  it('delivers broadcasts of many turns to every client', async () => {
    const clients = await Promise.all(Array.from({ length: 5 }, () => open(url)));
    await until(() => clients.every((c) => c.got.length === 1));
    clients[0].ws.send(JSON.stringify({ event: 'paced', data: 200 }));
    const expected = ['welcome', ...Array.from({ length: 200 }, (_, i) => `p${i}`)];
    await until(() => clients.every((c) => c.got.length >= expected.length));
    for (const client of clients) expect(client.got).toEqual(expected);
    for (const client of clients) client.ws.close();
  });
});
