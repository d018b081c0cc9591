/**
 * uWebSockets.js, the limit: every connection subscribes to one topic, a broadcast is
 * `app.publish('all', json)`. Rooms are topics too: `{"event":"join","data":room}` is
 * `ws.subscribe(room)`, a room broadcast `app.publish(room, json)`. Echo: parse, `ws.send(json)`. Backpressure limit raised to 64 MiB
 * so that no message is dropped (uWS skips subscribers over `maxBackpressure`), idle timeout off.
 *
 * `@trufflesuite/uws-js-unofficial` falls back to a JS implementation on `ws` when its binary
 * does not load: `info.uws` says which build runs, and the report prints it.
 */
import { createRequire } from 'node:module';
import { CountingLogger } from './logger.js';
import type { BenchServer } from './types.js';
import { packageVersion } from './versions.js';

const PACKAGE = '@trufflesuite/uws-js-unofficial';

export async function startUws(): Promise<BenchServer> {
  const require = createRequire(import.meta.url);
  const uWS = require(PACKAGE);
  const binary = Object.keys(require.cache).find(
    (file) => file.endsWith('.node') && file.includes('uws-js-unofficial'),
  );
  const build = binary
    ? `native ${binary.slice(binary.lastIndexOf('/') + 1)}`
    : 'FALLBACK (JS on ws)';
  const logger = new CountingLogger();
  let open = 0;
  let joins = 0;
  const decoder = new TextDecoder();
  const app = uWS.App().ws('/bench', {
    compression: uWS.DISABLED,
    maxPayloadLength: 1024 * 1024,
    idleTimeout: 0,
    maxBackpressure: 64 * 1024 * 1024,
    open: (ws: any) => {
      open++;
      ws.subscribe('all');
    },
    close: () => {
      open--;
    },
    message: (ws: any, data: ArrayBuffer, isBinary: boolean) => {
      if (isBinary) return;
      const message = JSON.parse(decoder.decode(data));
      if (message.event === 'echo') ws.send(JSON.stringify({ event: 'echo', data: message.data }));
      else if (message.event === 'join') {
        ws.subscribe(message.data);
        joins++;
      }
    },
  });
  const listenSocket = await new Promise<unknown>((resolve, reject) =>
    app.listen('127.0.0.1', 0, (token: unknown) =>
      token ? resolve(token) : reject(new Error('uWS could not listen')),
    ),
  );
  return {
    port: uWS.us_socket_local_port(listenSocket),
    path: '/bench',
    client: 'ws',
    info: { uws: `${packageVersion(PACKAGE)} ${build}` },
    connections: () => open,
    broadcast: (message) => {
      app.publish('all', JSON.stringify(message), false);
    },
    logged: () => logger.counts(),
    rooms: {
      joins: () => joins,
      broadcast: (room, message) => {
        app.publish(room, JSON.stringify(message), false);
      },
    },
    close: async () => {
      uWS.us_listen_socket_close(listenSocket);
    },
  };
}
