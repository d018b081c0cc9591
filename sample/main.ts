/**
 * The demand board: the Tornado `WebSocketHandler` example of the design seed, done with
 * NestJS and `nestjs-ws-routes`. Run it with `npm run sample` (PORT and HOST override the
 * defaults) and open the printed address in a few browser tabs.
 */
// Before anything else: the decorators of the imported classes write metadata when their
// modules are evaluated, which needs the Reflect polyfill in place.
import 'reflect-metadata';
import { Logger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { AppModule } from './app.module.js';

async function bootstrap(): Promise<void> {
  const port = Number(process.env.PORT ?? 3000);
  const host = process.env.HOST ?? '127.0.0.1';

  // Without an adapter argument Nest picks @nestjs/platform-express; the WebSocket routes
  // share its HTTP server, so the page and /demand live on the same origin and port.
  const app = await NestFactory.create<NestExpressApplication>(AppModule);

  // Ctrl+C / SIGTERM then runs app.close(): the demand timer stops and every open socket is
  // closed with 1001, so browsers see a clean "going away" instead of a dropped link.
  app.enableShutdownHooks();

  await app.listen(port, host);

  // A wildcard address is not something to type into a browser; loopback reaches it.
  const shown = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
  const origin = shown.includes(':') ? `[${shown}]` : shown;
  new Logger('Sample').log(`Open http://${origin}:${port}/ in your browser`);
}

bootstrap().catch((error: unknown) => {
  new Logger('Sample').error(
    'Could not start the sample',
    error instanceof Error ? error.stack : error,
  );
  process.exitCode = 1;
});
