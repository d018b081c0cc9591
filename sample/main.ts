/**
 * The samples of nestjs-ws-routes, in one command: `npm run sample`, then open the printed
 * address. The same application runs twice, on Express (PORT, default 3000) and on Fastify
 * (PORT + 1), to show that the routes work on both of Nest's HTTP platforms. Each serves
 *
 * - `/`     the live board: demand that moves every second, pushed to every open page;
 * - `/chat` a chat with rooms, a subprotocol and a handshake guard.
 *
 * HOST overrides the interface (default 127.0.0.1, this machine only).
 */
// Before anything else: the decorators of the imported classes write metadata when their
// modules are evaluated, which needs the Reflect polyfill in place.
import 'reflect-metadata';
import { Logger, type INestApplication } from '@nestjs/common';
import { createSampleApp, type SamplePlatform } from './create-sample-app.js';

const logger = new Logger('Sample');

async function start(platform: SamplePlatform, port: number, host: string) {
  // forceCloseConnections: browsers keep spare HTTP connections open, which would hold up
  // the shutdown; the WebSockets get their 1001 before these are cut.
  const app = await createSampleApp(platform, { forceCloseConnections: true });
  await app.listen(port, host);
  return app;
}

async function bootstrap(): Promise<void> {
  const port = Number(process.env.PORT ?? 3000);
  const host = process.env.HOST ?? '127.0.0.1';
  const apps: INestApplication[] = [];
  // Ctrl+C / SIGTERM closes both applications: the demand timers stop and every open socket
  // is closed with 1001, so browsers see a clean "going away" (and start reconnecting).
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      logger.log(`${signal}: closing`);
      void Promise.all(apps.map((app) => app.close())).finally(() => process.exit(0));
    });
  }

  apps.push(await start('express', port, host));
  apps.push(await start('fastify', port + 1, host));

  // A wildcard address is not something to type into a browser; loopback reaches it.
  const shown = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
  const origin = (p: number) => `http://${shown.includes(':') ? `[${shown}]` : shown}:${p}`;
  logger.log(`Live board: ${origin(port)}/        chat: ${origin(port)}/chat   (Express)`);
  logger.log(`Live board: ${origin(port + 1)}/        chat: ${origin(port + 1)}/chat   (Fastify)`);
  logger.log('Open the live board in two tabs, or run:');
  logger.log(
    `  curl -X POST ${origin(port)}/api/demand -H 'Content-Type: application/json' -d '{"name":"Apples","quantity":99}'`,
  );
}

bootstrap().catch((error: unknown) => {
  logger.error('Could not start the sample', error instanceof Error ? error.stack : error);
  process.exit(1);
});
