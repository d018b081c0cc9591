/**
 * A load process: holds a share of the connections (the `ws` client, or socket.io-client for
 * the Socket.IO variant) and runs what the orchestrator asks:
 *
 * - `connect` opens `count` connections, `concurrency` handshakes at a time;
 * - `fanout-expect` arms the counters for `count` messages per connection and pushes a
 *   `fanout-done` event (last receive time, latency histogram) when every one has arrived;
 *   latency = receive time − the send time the server put in the message;
 * - `room-join` sends `{"event":"join","data":"room-<(offset + j) % roomCount>"}` on every
 *   open connection j; `room-expect` arms the same counters for a list of room broadcasts
 *   (each connection expects one message per broadcast to its room), `fanout-done` again;
 * - `echo-start` / `echo-mark` / `echo-stop`: a closed loop, one request in flight per
 *   connection, round-trip times in a histogram;
 * - `close-all`, and `soak` (connect, join rooms, receive, disconnect, for a fixed time).
 */
import { io, type Socket } from 'socket.io-client';
import WebSocket from 'ws';
import { emitEvent, serveRequests } from './lib/ipc.js';
import { errorText, Histogram, now, sleep, tickTime, withTimeout } from './lib/common.js';

type Kind = 'ws' | 'socketio';

interface Conn {
  send(text: string, data: string): void;
  terminate(): void;
  /** A connection that never opened (its slot is kept: indices are fixed). */
  failed?: true;
}

const conns: Conn[] = [];
let closingAll = false;
let unexpectedCloses = 0;
const errors = new Map<string, number>();

function noteError(text: string): void {
  errors.set(text, (errors.get(text) ?? 0) + 1);
}

// ---- fan-out -------------------------------------------------------------------------------
const fanout = {
  armed: false,
  perConn: new Int32Array(0),
  /** Messages each connection must get: `uniform` for all, or one count each (rooms). */
  uniform: 0,
  perConnExpected: undefined as Int32Array | undefined,
  expected: 0,
  received: 0,
  firstRecv: 0,
  lastRecv: 0,
  histogram: new Histogram(),
};

function onTick(index: number, sentAt: number): void {
  if (!fanout.armed) return;
  const t = now();
  fanout.histogram.record(t - sentAt);
  fanout.perConn[index]++;
  if (fanout.received++ === 0) fanout.firstRecv = t;
  fanout.lastRecv = t;
  if (fanout.received === fanout.expected) {
    fanout.armed = false;
    emitEvent('fanout-done', fanoutReport());
  }
}

function fanoutReport() {
  let min = Infinity;
  let max = 0;
  let short = 0;
  for (let i = 0; i < fanout.perConn.length; i++) {
    const count = fanout.perConn[i];
    if (count < min) min = count;
    if (count > max) max = count;
    if (count < (fanout.perConnExpected?.[i] ?? fanout.uniform)) short++;
  }
  return {
    received: fanout.received,
    expected: fanout.expected,
    firstRecv: fanout.firstRecv,
    lastRecv: fanout.lastRecv,
    perConnMin: conns.length ? min : 0,
    perConnMax: max,
    /** Connections that got fewer messages than they expect. */
    short,
    histogram: fanout.histogram.data(),
  };
}

function arm(expected: number, uniform: number, perConnExpected: Int32Array | undefined): void {
  fanout.perConn = new Int32Array(conns.length);
  fanout.uniform = uniform;
  fanout.perConnExpected = perConnExpected;
  fanout.expected = expected;
  fanout.received = 0;
  fanout.firstRecv = fanout.lastRecv = 0;
  fanout.histogram.reset();
  fanout.armed = fanout.expected > 0;
}

// ---- echo ----------------------------------------------------------------------------------
const echo = {
  running: false,
  text: '',
  data: '',
  sentAt: new Float64Array(0),
  inFlight: 0,
  count: 0,
  bad: 0,
  histogram: new Histogram(),
};

function onEcho(index: number, ok: boolean): void {
  const t = now();
  echo.inFlight--;
  echo.histogram.record(t - echo.sentAt[index]);
  echo.count++;
  if (!ok) echo.bad++;
  if (echo.running) sendEcho(index);
}

function sendEcho(index: number): void {
  echo.sentAt[index] = now();
  echo.inFlight++;
  conns[index].send(echo.text, echo.data);
}

// ---- rooms --------------------------------------------------------------------------------
/** The room index each connection joined, -1 for none. */
let roomOf = new Int32Array(0);

function roomJoin({ offset, roomCount }: { offset: number; roomCount: number }) {
  roomOf = new Int32Array(conns.length).fill(-1);
  let sent = 0;
  for (let j = 0; j < conns.length; j++) {
    if (conns[j].failed) continue;
    const room = (offset + j) % roomCount;
    conns[j].send(`{"event":"join","data":"room-${room}"}`, `room-${room}`);
    roomOf[j] = room;
    sent++;
  }
  return { sent };
}

/** Arms the counters for one broadcast to each of `rooms` (room indices, repeats allowed). */
function roomExpect({ rooms, roomCount }: { rooms: Int32Array; roomCount: number }) {
  const perRoom = new Int32Array(roomCount);
  for (const room of rooms) perRoom[room]++;
  const expected = new Int32Array(conns.length);
  let total = 0;
  for (let j = 0; j < conns.length; j++) {
    if (roomOf[j] < 0) continue;
    expected[j] = perRoom[roomOf[j]];
    total += expected[j];
  }
  arm(total, 0, expected);
  return { expected: total };
}

// ---- connections ---------------------------------------------------------------------------
function openWs(url: string, index: number, timeoutMs: number): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, {
      perMessageDeflate: false,
      skipUTF8Validation: true,
      handshakeTimeout: timeoutMs,
    });
    let open = false;
    ws.on('error', (error) => {
      if (!open) reject(error);
      else if (!closingAll) noteError(`socket error: ${error.message}`);
    });
    ws.on('close', (code) => {
      if (open && !closingAll) {
        unexpectedCloses++;
        noteError(`closed by the server: ${code}`);
      }
    });
    ws.on('message', (data: Buffer) => {
      if (data[2] === 0x74 /* {"t": a tick */) onTick(index, tickTime(data));
      else onEcho(index, data.length === echo.text.length);
    });
    ws.once('open', () => {
      open = true;
      resolve({ send: (text) => ws.send(text), terminate: () => ws.terminate() });
    });
  });
}

function openSocketIo(url: string, index: number, timeoutMs: number): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const socket: Socket = io(url, {
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
      timeout: timeoutMs,
    });
    let open = false;
    socket.on('connect_error', (error) => {
      if (!open) reject(error);
    });
    socket.on('disconnect', (reason) => {
      if (open && !closingAll) {
        unexpectedCloses++;
        noteError(`disconnected: ${reason}`);
      }
    });
    socket.on('tick', (message: { t: number }) => onTick(index, message.t));
    socket.on('echo', (data: string) => onEcho(index, data.length === echo.data.length));
    socket.once('connect', () => {
      open = true;
      resolve({
        send: (_text, data) => socket.emit('echo', data),
        terminate: () => socket.close(),
      });
    });
  });
}

async function connect({
  kind,
  url,
  count,
  concurrency,
  timeoutMs,
}: {
  kind: Kind;
  url: string;
  count: number;
  concurrency: number;
  timeoutMs: number;
}) {
  closingAll = false;
  let next = 0;
  let failed = 0;
  const start = now();
  const lane = async () => {
    while (next < count) {
      next++;
      // The index is reserved with a placeholder: message handlers find their slot by it.
      const index = conns.push(undefined as unknown as Conn) - 1;
      try {
        const conn = await (kind === 'ws' ? openWs : openSocketIo)(url, index, timeoutMs);
        conns[index] = conn;
      } catch (error) {
        conns[index] = { send: () => undefined, terminate: () => undefined, failed: true };
        failed++;
        noteError(`connect: ${errorText(error)}`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, lane));
  return { opened: count - failed, failed, start, end: now(), errors: Object.fromEntries(errors) };
}

// ---- soak ----------------------------------------------------------------------------------
interface SoakOptions {
  url: string;
  target: number;
  durationMs: number;
  lifeMinMs: number;
  lifeMaxMs: number;
  rooms: number;
  roomsPerConn: number;
  terminateRatio: number;
  concurrency: number;
  timeoutMs: number;
  drainMs: number;
}

function soak(options: SoakOptions) {
  const stats = {
    opened: 0,
    failed: 0,
    closedClean: 0,
    terminated: 0,
    unexpectedCloses: 0,
    closeCodes: {} as Record<string, number>,
    messages: 0,
    peakOpen: 0,
    open: 0,
    connecting: 0,
    left: 0,
  };
  const live = new Set<WebSocket>();
  const deadline = now() + options.durationMs;
  let draining = false;
  let finish: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (finish = resolve));

  const pump = () => {
    while (
      !draining &&
      now() < deadline &&
      stats.open + stats.connecting < options.target &&
      stats.connecting < options.concurrency
    )
      startOne();
  };
  const checkDone = () => {
    if (draining && stats.open === 0 && stats.connecting === 0) finish();
  };
  const startOne = () => {
    stats.connecting++;
    const ws = new WebSocket(options.url, {
      perMessageDeflate: false,
      handshakeTimeout: options.timeoutMs,
    });
    let wasOpen = false;
    let ending = false;
    let timer: NodeJS.Timeout | undefined;
    ws.on('error', (error) => {
      if (!wasOpen) noteError(`connect: ${error.message}`);
      else if (!ending && !draining) noteError(`socket error: ${error.message}`);
    });
    ws.on('message', () => stats.messages++);
    ws.on('open', () => {
      wasOpen = true;
      stats.connecting--;
      stats.open++;
      stats.opened++;
      if (stats.open > stats.peakOpen) stats.peakOpen = stats.open;
      live.add(ws);
      if (draining) {
        ending = true;
        ws.close(1000, 'soak over');
        return;
      }
      for (let i = 0; i < options.roomsPerConn; i++) {
        const room = `room-${Math.floor(Math.random() * options.rooms)}`;
        ws.send(JSON.stringify({ event: 'join', data: room }));
      }
      const life = options.lifeMinMs + Math.random() * (options.lifeMaxMs - options.lifeMinMs);
      timer = setTimeout(() => {
        ending = true;
        if (Math.random() < options.terminateRatio) {
          stats.terminated++;
          ws.terminate();
        } else {
          stats.closedClean++;
          ws.close(1000, 'bye');
        }
      }, life);
      pump();
    });
    ws.on('close', (code) => {
      clearTimeout(timer);
      if (wasOpen) {
        stats.open--;
        live.delete(ws);
        if (!ending && !draining) {
          stats.unexpectedCloses++;
          stats.closeCodes[code] = (stats.closeCodes[code] ?? 0) + 1;
        }
      } else {
        stats.connecting--;
        stats.failed++;
      }
      pump();
      checkDone();
    });
  };

  const progress = setInterval(() => {
    pump();
    emitEvent('soak-progress', {
      open: stats.open,
      opened: stats.opened,
      failed: stats.failed,
      messages: stats.messages,
    });
  }, 1000);
  pump();

  return (async () => {
    await sleep(Math.max(0, deadline - now()));
    draining = true;
    const drainStart = now();
    clearInterval(progress);
    for (const ws of live) ws.close(1000, 'soak over');
    checkDone();
    try {
      await withTimeout(done, options.drainMs, 'closing the soak connections');
    } catch {
      stats.left = live.size;
      for (const ws of live) ws.terminate();
    }
    return { ...stats, drainMs: now() - drainStart, errors: Object.fromEntries(errors) };
  })();
}

// ---- control -------------------------------------------------------------------------------
serveRequests({
  connect,
  'fanout-expect': ({ count }: { count: number }) => {
    arm(conns.length * count, count, undefined);
    return { expected: fanout.expected };
  },
  'room-join': roomJoin,
  'room-expect': roomExpect,
  'fanout-status': () => ({ ...fanoutReport(), armed: fanout.armed }),
  'fanout-disarm': () => {
    fanout.armed = false;
  },
  'echo-start': ({ text, data }: { text: string; data: string }) => {
    Object.assign(echo, { running: true, text, data, inFlight: 0, count: 0, bad: 0 });
    echo.sentAt = new Float64Array(conns.length);
    echo.histogram.reset();
    for (let i = 0; i < conns.length; i++) sendEcho(i);
  },
  'echo-mark': ({ reset }: { reset: boolean }) => {
    const mark = {
      time: now(),
      count: echo.count,
      bad: echo.bad,
      histogram: echo.histogram.data(),
    };
    if (reset) echo.histogram = new Histogram();
    return mark;
  },
  'echo-stop': async ({ timeoutMs }: { timeoutMs: number }) => {
    echo.running = false;
    const until = now() + timeoutMs;
    while (echo.inFlight > 0 && now() < until) await sleep(10);
    return { inFlight: echo.inFlight };
  },
  'close-all': () => {
    closingAll = true;
    for (const conn of conns) conn.terminate();
    conns.length = 0;
    roomOf = new Int32Array(0);
    const report = { unexpectedCloses, errors: Object.fromEntries(errors) };
    unexpectedCloses = 0;
    errors.clear();
    return report;
  },
  status: () => ({
    connections: conns.length,
    unexpectedCloses,
    errors: Object.fromEntries(errors),
  }),
  soak,
  shutdown: () => {
    setImmediate(() => process.exit(0));
  },
});
emitEvent('ready', { pid: process.pid });
