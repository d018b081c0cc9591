/**
 * The room broadcast (issue 13): `roomCount` rooms, every connection a member of one
 * (connection k of the run joins `room-(k % roomCount)`: 5,000 connections over 1,000 rooms
 * make 5 members each), then an unmeasured warm-up round and `rounds` rounds of `roomRepeats`
 * event-loop turns, each a burst
 * of `roomMessages` broadcasts to random rooms. The rooms are drawn from a seeded PRNG: every
 * variant gets the same sequence. Room messages are ordinary tick messages, so the load
 * processes count and time them as in the fan-out; each knows its connections' rooms and
 * expects one message per broadcast to them.
 */
import { errorText, now, sleep } from './lib/common.js';
import type { Config } from './lib/config.js';
import type { Child } from './lib/ipc.js';
import type { ServerHandle } from './lib/processes.js';
import {
  deliveryRound,
  summarize,
  type DeliveryRound,
  type FanoutSummary,
  type SendResult,
} from './delivery.js';
import { seeded as prng } from './lib/prng.js';

export interface RoomRound extends DeliveryRound {
  round: number;
  /** Broadcasts to one room each, `roomMessages` per turn. */
  broadcasts: number;
  turns: number;
}

export interface RoomsResult {
  status: 'ok' | 'error';
  error?: string;
  roomCount: number;
  /** `join` messages the load processes sent, and those the server had handled in time. */
  joins: { sent: number; counted: number; ms: number };
  rounds: RoomRound[];
  summary?: FanoutSummary;
}

const SEED = 0x13;

/** The rooms of a round's broadcasts, in sending order: the same for every variant. */
export function roomSequence(round: number, count: number, roomCount: number): Int32Array {
  const random = prng(SEED + round);
  const rooms = new Int32Array(count);
  for (let i = 0; i < count; i++) rooms[i] = Math.floor(random() * roomCount);
  return rooms;
}

/** Every open connection joins its room; resolves once the server has handled every join (bounded). */
async function joinRooms(
  server: ServerHandle,
  clients: Child[],
  config: Config,
): Promise<RoomsResult['joins']> {
  const started = now();
  const held = await Promise.all(clients.map((c) => c.call('status', {})));
  // Connection j of load process i is connection offset_i + j of the run.
  const offsets = held.map((_, i) => held.slice(0, i).reduce((sum, h) => sum + h.connections, 0));
  const sent = await Promise.all(
    clients.map((c, i) => c.call('room-join', { offset: offsets[i], roomCount: config.roomCount })),
  );
  const total = sent.reduce((sum, s) => sum + s.sent, 0);
  const until = started + config.fanoutTimeoutMs;
  let counted: number;
  for (;;) {
    counted = (await server.child.call('joins', {})).joins;
    if (counted >= total || now() > until) break;
    await sleep(20);
  }
  return { sent: total, counted, ms: now() - started };
}

function roomRound(
  server: ServerHandle,
  clients: Child[],
  config: Config,
  round: number,
): Promise<RoomRound> {
  const broadcasts = config.roomMessages * config.roomRepeats;
  const rooms = roomSequence(round, broadcasts, config.roomCount);
  return deliveryRound(
    server,
    clients,
    config,
    `room broadcast of ${server.variant}`,
    (c) => c.call('room-expect', { rooms, roomCount: config.roomCount }),
    () =>
      server.child.call<SendResult>(
        'room-broadcast',
        { rooms, perTurn: config.roomMessages, roomCount: config.roomCount, bytes: config.bytes },
        config.fanoutTimeoutMs,
      ),
  ).then((r) => ({ round, broadcasts, turns: config.roomRepeats, ...r }));
}

/** Joins, then `config.rounds` room rounds, on the connections the variant already holds. */
export async function runRooms(
  server: ServerHandle,
  clients: Child[],
  config: Config,
  log: (line: string) => void,
): Promise<RoomsResult> {
  const variant = server.variant;
  const result: RoomsResult = {
    status: 'ok',
    roomCount: config.roomCount,
    joins: { sent: 0, counted: 0, ms: NaN },
    rounds: [],
  };
  try {
    result.joins = await joinRooms(server, clients, config);
    if (result.joins.counted < result.joins.sent)
      throw new Error(
        `the server handled ${result.joins.counted} of ${result.joins.sent} joins within ${config.fanoutTimeoutMs} ms`,
      );
    log(
      `  ${variant} rooms: ${result.joins.counted} joins over ${config.roomCount} rooms in ${result.joins.ms.toFixed(0)} ms`,
    );
    // One unmeasured round first, the same for every variant: the JavaScript variants' room
    // paths are compiled by then (the fan-out rounds before did not run them), as they are in
    // an application that has been up for a while.
    const warmUp = await roomRound(server, clients, config, 0);
    if (warmUp.status !== 'ok') throw new Error(`warm-up round: ${warmUp.detail}`);
    for (let round = 1; round <= config.rounds; round++) {
      const r = await roomRound(server, clients, config, round);
      result.rounds.push(r);
      log(
        `  ${variant} rooms #${round}: ` +
          (r.status === 'ok'
            ? `${r.endToEndMs.toFixed(0)} ms, CPU ${r.serverCpuMs.toFixed(0)} ms for ${r.deliveries} deliveries (${r.serverCpuUsPerDelivery.toFixed(2)} µs each), p99 ${r.p99Ms.toFixed(1)} ms`
            : `${r.status}: ${r.detail}`),
      );
      if (r.status !== 'ok') break;
    }
    result.summary = summarize(result.rounds);
  } catch (error) {
    result.status = 'error';
    result.error = errorText(error);
    log(`  ${variant} rooms: error: ${result.error}`);
  }
  return result;
}
