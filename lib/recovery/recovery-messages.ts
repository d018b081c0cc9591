import type { RecoveryFailure } from './recovery-options.js';

/** The event of the message that answers a reconnect on a recovery route. */
export const RECOVERY_EVENT = 'recovery';
/** The event of the first message of a new connection on a recovery route: its position. */
export const POSITION_EVENT = 'position';

/**
 * Most bytes a frame header adds to a payload (server frames are not masked): what a replay
 * adds to a connection's queue beyond its payloads, for the `maxBufferedAmount` check.
 */
export const FRAME_HEADER = 10;

/**
 * The message of a broadcast, without its closing brace and id, so the id given later (by the
 * stream) is appended once per route: an object's JSON gets an `"id"` member (`{event, data}`
 * becomes `{event, data, id}`); anything else is wrapped as `{"event":"message","data":…}`.
 */
export function envelopePrefix(message: unknown): string {
  if (isPlainObject(message)) {
    const json = JSON.stringify(message);
    if (json && json.startsWith('{') && json.endsWith('}'))
      return json.length === 2 ? '{' : `${json.slice(0, -1)},`;
  }
  const data = JSON.stringify(message === undefined ? null : message);
  return `{"event":"message","data":${data ?? 'null'},`;
}

/** The message as a recovery route's connections get it: the prefix with its id. */
export function withId(prefix: string | Buffer, id: string): Buffer {
  const tail = `"id":${JSON.stringify(id)}}`;
  if (typeof prefix === 'string') return Buffer.from(prefix + tail);
  const out = Buffer.allocUnsafe(prefix.length + Buffer.byteLength(tail));
  prefix.copy(out, 0);
  out.write(tail, prefix.length);
  return out;
}

/** `{"event":"position","data":null,"id":…}`: a new connection's place in the stream. */
export function positionMessage(id: string): string {
  return `{"event":"${POSITION_EVENT}","data":null,"id":${JSON.stringify(id)}}`;
}

/**
 * `{"event":"recovery","data":{"recovered":true,"replayed":n},"id":…}`, or with
 * `recovered: false` and the reason; `id` is the position the replay (or live traffic) follows.
 */
export function recoveryMessage(
  recovered: boolean,
  replayed: number,
  reason: RecoveryFailure | undefined,
  id: string | null,
): string {
  const data = recovered ? { recovered, replayed } : { recovered, reason };
  return JSON.stringify({ event: RECOVERY_EVENT, data, id });
}

function isPlainObject(value: unknown): value is object {
  return (
    typeof value === 'object' &&
    value !== null &&
    !Array.isArray(value) &&
    !ArrayBuffer.isView(value) &&
    !(value instanceof ArrayBuffer)
  );
}
