/**
 * Raw `ws` baselines: the same server, two broadcast loops.
 *
 * - `naive`: what most code does, `for (c of clients) c.send(JSON.stringify(obj))`.
 * - `best`: the fastest loop `ws` allows: serialize and frame once per broadcast
 *   (`WebSocket.Sender.frame`), write the frame straight to each `ws._socket`, each socket
 *   corked once per event-loop turn and uncorked on the next tick, so a burst of broadcasts
 *   leaves as one `writev` per socket.
 *
 * Rooms (both): a hand-made `Map<room, Set<ws>>`, `{"event":"join","data":room}` adds the
 * socket. A room broadcast is the same loop as the route's over the room's members: `naive`
 * sends `JSON.stringify(obj)` to each, `best` frames once and writes to each member's
 * `_socket`, corking each socket at its first write of the turn.
 *
 * Echo (both): parse the JSON, answer `{"event":"echo","data":…}` with `ws.send`.
 */
import { createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import * as wsModule from 'ws';
import { WebSocketServer, type WebSocket } from 'ws';
import { CountingLogger } from './logger.js';
import type { BenchServer } from './types.js';
import { packageVersion } from './versions.js';

const OPEN = 1;

/** `ws`'s frame encoder: exported (CommonJS and ESM) but absent from @types/ws. */
const { Sender } = wsModule as unknown as {
  Sender: { frame(data: Buffer, options: Record<string, unknown>): Buffer[] };
};

export async function startRawWs(mode: 'naive' | 'best'): Promise<BenchServer> {
  const logger = new CountingLogger();
  const http = createServer((_request, response) => response.writeHead(404).end());
  const wss = new WebSocketServer({ server: http, path: '/bench', perMessageDeflate: false });
  const rooms = new Map<string, Set<WebSocket>>();
  let joins = 0;
  const join = (ws: WebSocket, joined: string[], room: string) => {
    let members = rooms.get(room);
    if (!members) rooms.set(room, (members = new Set()));
    members.add(ws);
    joined.push(room);
    joins++;
  };
  const leaveAll = (ws: WebSocket, joined: string[]) => {
    for (const room of joined) {
      const members = rooms.get(room);
      if (members?.delete(ws) && members.size === 0) rooms.delete(room);
    }
  };
  wss.on('error', (error) => logger.record('error', `wss: ${error.message}`));
  wss.on('connection', (ws: WebSocket) => {
    const joined: string[] = [];
    ws.on('error', (error) => logger.record('error', `socket: ${error.message}`));
    ws.on('close', () => leaveAll(ws, joined));
    ws.on('message', (raw: Buffer, isBinary: boolean) => {
      if (isBinary) return;
      const message = JSON.parse(raw.toString());
      if (message.event === 'echo') ws.send(JSON.stringify({ event: 'echo', data: message.data }));
      else if (message.event === 'join') join(ws, joined, message.data);
    });
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));

  const naive = (message: object, members: Iterable<WebSocket> = wss.clients) => {
    for (const client of members) {
      if (client.readyState === OPEN) client.send(JSON.stringify(message));
    }
  };

  let corked: Socket[] | undefined;
  const uncork = () => {
    for (const socket of corked!) socket.uncork();
    corked = undefined;
  };
  const frameOf = (message: object) => {
    const data = Buffer.from(JSON.stringify(message));
    const [header, body] = Sender.frame(data, {
      fin: true,
      opcode: 0x01,
      mask: false,
      readOnly: true,
      rsv1: false,
    });
    return body ? Buffer.concat([header, body]) : header;
  };
  const best = (message: object) => {
    const frame = frameOf(message);
    const turn = corked ?? (corked = []);
    const firstOfTurn = turn.length === 0;
    for (const client of wss.clients) {
      if (client.readyState !== OPEN) continue;
      const socket = (client as unknown as { _socket: Socket })._socket;
      if (firstOfTurn) {
        socket.cork();
        turn.push(socket);
      }
      socket.write(frame);
    }
    if (firstOfTurn) process.nextTick(uncork);
  };

  // A room's members are a few sockets out of many: each is corked at its first write of the
  // turn (a route broadcast in the same turn corks it once more, and uncorks it once more).
  let roomCorked: Set<Socket> | undefined;
  const roomUncork = () => {
    for (const socket of roomCorked!) socket.uncork();
    roomCorked = undefined;
  };
  const bestToRoom = (members: Set<WebSocket>, message: object) => {
    const frame = frameOf(message);
    if (!roomCorked) {
      roomCorked = new Set();
      process.nextTick(roomUncork);
    }
    for (const client of members) {
      if (client.readyState !== OPEN) continue;
      const socket = (client as unknown as { _socket: Socket })._socket;
      if (!roomCorked.has(socket)) {
        socket.cork();
        roomCorked.add(socket);
      }
      socket.write(frame);
    }
  };

  return {
    port: (http.address() as AddressInfo).port,
    path: '/bench',
    client: 'ws',
    info: { ws: packageVersion('ws') },
    connections: () => wss.clients.size,
    broadcast: mode === 'naive' ? naive : best,
    logged: () => logger.counts(),
    rooms: {
      joins: () => joins,
      broadcast: (room, message) => {
        const members = rooms.get(room);
        if (!members) return;
        if (mode === 'naive') naive(message, members);
        else bestToRoom(members, message);
      },
    },
    close: async () => {
      for (const client of wss.clients) client.terminate();
      await new Promise<void>((resolve) => wss.close(() => http.close(() => resolve())));
    },
  };
}
