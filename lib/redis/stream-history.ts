import { createHash, randomBytes } from 'node:crypto';
import type { BroadcastPacket } from '../broadcast/broadcast-packet.interface.js';
import { decodeFrame, encodePacket, entryHeader } from '../broadcast/wire-format.js';
import type {
  HistoryEntry,
  HistoryFeed,
  HistoryRead,
  RecoveryHistory,
  StreamLimits,
} from '../recovery/recovery-history.interface.js';
import type { ChannelNames } from './channel-names.js';
import type { PubSubDriver } from './node-redis-driver.js';

/**
 * One broadcast into a route's stream, atomically: the epoch (made if the history has none:
 * a new deployment, a flushed or restarted Redis, an expired stream), the next seq, the entry
 * under that seq as its id with `MAXLEN`, the expiries, and the publish of the entry to every
 * instance, in seq order. The keys and the channel share one hash tag (one cluster slot).
 *
 * KEYS: epoch, seq, stream. ARGV: epoch if new, maxMessages, stream ttl, meta ttl, publish
 * command, channel, entry header, packet frame.
 */
const APPEND = `
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
local seq = redis.call('INCR', KEYS[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[2], seq .. '-0', 't', now, 'f', ARGV[8])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
local digits = tostring(seq)
redis.call(ARGV[5], ARGV[6], ARGV[7] .. string.char(#epoch) .. epoch .. string.char(#digits) .. digits .. ARGV[8])
return seq
`;

/**
 * Where a stream stands, and its entries after a position if the epoch is still the one the
 * reader knows, up to a byte cap. KEYS: epoch, seq, stream. ARGV: epoch if new, meta ttl,
 * expected epoch, after (-1: the position only), max bytes.
 */
const READ = `
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch, 'PX', ARGV[2])
  redis.call('DEL', KEYS[2], KEYS[3])
end
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local out = {epoch, tostring(seq), tostring(now), '0'}
local after = tonumber(ARGV[4])
if epoch ~= ARGV[3] or after < 0 or after >= seq then return out end
local entries = redis.call('XRANGE', KEYS[3], (after + 1) .. '-0', '+')
local bytes = 0
local cap = tonumber(ARGV[5])
for _, entry in ipairs(entries) do
  local fields = entry[2]
  bytes = bytes + #fields[4]
  if bytes > cap then
    out[4] = '1'
    break
  end
  out[#out + 1] = entry[1]
  out[#out + 1] = fields[2]
  out[#out + 1] = fields[4]
end
return out
`;

/**
 * A new epoch for a stream whose history went back, if it is still the epoch the instance saw
 * (whichever instance notices first makes it; the others find it made). KEYS: epoch, seq,
 * stream. ARGV: the stale epoch, the new one, meta ttl. Answers the epoch and seq now.
 */
const RENEW = `
local epoch = redis.call('GET', KEYS[1])
if not epoch or epoch == ARGV[1] then
  epoch = ARGV[2]
  redis.call('SET', KEYS[1], epoch, 'PX', ARGV[3])
  redis.call('DEL', KEYS[2], KEYS[3])
end
return {epoch, tostring(tonumber(redis.call('GET', KEYS[2]) or '0'))}
`;

interface Script {
  source: string;
  sha: string;
}

const script = (source: string): Script => ({
  source,
  sha: createHash('sha1').update(source).digest('hex'),
});
const APPEND_SCRIPT = script(APPEND);
const READ_SCRIPT = script(READ);
const RENEW_SCRIPT = script(RENEW);

/** How long a stream's epoch and seq outlive its last entry: ids stay comparable meanwhile. */
const META_TTL = 24 * 60 * 60 * 1000;

interface OpenStream {
  limits: StreamLimits;
  feed: HistoryFeed;
  keys: [string, string, string];
  channel: string;
  header: Buffer;
}

/** What the history needs of the transport it belongs to. */
export interface HistoryHost {
  readonly names: ChannelNames;
  driver(): PubSubDriver | undefined;
  /** The transport reaches Redis (subscriptions verified). */
  isReady(): boolean;
  /** Subscribe to a stream's channel, now and after every reconnect. */
  want(channel: string): void;
  /** Bytes sent to Redis and not answered yet, for the publish backlog cap; throws beyond it. */
  reserve(bytes: number): void;
  release(bytes: number): void;
}

/**
 * The recovery history in Redis Streams: one stream per recovery route, written by one Lua
 * script per broadcast (see `APPEND`), read by another (`READ`), and heard by every instance on
 * the stream's channel. Memory in Redis: per route, up to `maxMessages` entries of the message
 * plus its targets (about 100 bytes of overhead each), gone `window` after the last broadcast.
 */
export class RedisStreamHistory implements RecoveryHistory {
  private readonly streams = new Map<string, OpenStream>();

  constructor(private readonly host: HistoryHost) {}

  /** The channels of every open stream (subscribed at bind and after reconnects). */
  channels(): string[] {
    return [...this.streams.values()].map((stream) => stream.channel);
  }

  open(route: string, limits: StreamLimits, feed: HistoryFeed): void {
    const channel = this.host.names.stream(route);
    this.streams.set(route, {
      limits,
      feed,
      keys: [`${channel}:e`, `${channel}:n`, `${channel}:x`],
      channel,
      header: entryHeader(route),
    });
    this.host.want(channel);
  }

  isReady(): boolean {
    return this.host.isReady();
  }

  append(route: string, packet: BroadcastPacket): Promise<unknown> {
    const stream = this.stream(route);
    const frame = encodePacket(packet);
    const driver = this.host.driver();
    if (!driver) return Promise.reject(new Error('the transport is not started'));
    const bytes = frame.length * 2;
    this.host.reserve(bytes);
    const { limits } = stream;
    const args = [
      newEpoch(),
      String(limits.maxMessages),
      String(limits.window + 1_000),
      String(Math.max(META_TTL, 2 * limits.window)),
      driver.sharded ? 'SPUBLISH' : 'PUBLISH',
      stream.channel,
      stream.header,
      frame,
    ];
    return this.run(driver, APPEND_SCRIPT, stream.keys, args).finally(() =>
      this.host.release(bytes),
    );
  }

  async read(
    route: string,
    epoch: string | undefined,
    after: number,
    maxBytes: number,
  ): Promise<HistoryRead> {
    const stream = this.stream(route);
    const driver = this.host.driver();
    if (!driver || !this.host.isReady()) throw new Error('Redis is unreachable');
    const meta = String(Math.max(META_TTL, 2 * stream.limits.window));
    const args = [newEpoch(), meta, epoch ?? '', String(after), String(maxBytes)];
    const reply = (await this.run(driver, READ_SCRIPT, stream.keys, args)) as Buffer[];
    const entries: HistoryEntry[] = [];
    for (let i = 4; i + 2 < reply.length; i += 3) {
      const id = reply[i].toString();
      const frame = decodeFrame(reply[i + 2]);
      if (frame.kind !== 'packet') continue;
      entries.push({
        seq: Number(id.slice(0, id.indexOf('-'))),
        at: Number(reply[i + 1].toString()),
        packet: frame.packet,
      });
    }
    return {
      epoch: reply[0].toString(),
      seq: Number(reply[1].toString()),
      now: Number(reply[2].toString()),
      entries,
      truncated: reply[3].toString() === '1',
    };
  }

  async renew(route: string, epoch: string): Promise<{ epoch: string; seq: number }> {
    const stream = this.stream(route);
    const driver = this.host.driver();
    if (!driver || !this.host.isReady()) throw new Error('Redis is unreachable');
    const meta = String(Math.max(META_TTL, 2 * stream.limits.window));
    const reply = (await this.run(driver, RENEW_SCRIPT, stream.keys, [
      epoch,
      newEpoch(),
      meta,
    ])) as Buffer[];
    return { epoch: reply[0].toString(), seq: Number(reply[1].toString()) };
  }

  /** An entry frame heard on a stream's channel. */
  heard(route: string, epoch: string, seq: number, packet: BroadcastPacket): void {
    this.streams.get(route)?.feed.entry(epoch, seq, packet);
  }

  /** The transport is ready again: every stream reads what its feed missed. */
  reachable(): void {
    for (const stream of this.streams.values()) stream.feed.ready();
  }

  /** The transport lost Redis: every stream checks what it heard before going on. */
  unreachable(): void {
    for (const stream of this.streams.values()) stream.feed.down();
  }

  private stream(route: string): OpenStream {
    const stream = this.streams.get(route);
    if (!stream) throw new Error(`no recovery stream for ${route}`);
    return stream;
  }

  /** `EVALSHA`, and `EVAL` once when the server does not know the script (yet, or any more). */
  private async run(
    driver: PubSubDriver,
    { sha, source }: Script,
    keys: string[],
    args: (string | Buffer)[],
  ): Promise<unknown> {
    const tail = [String(keys.length), ...keys, ...args];
    try {
      return await driver.command(keys[0], ['EVALSHA', sha, ...tail]);
    } catch (error) {
      if (!String((error as Error)?.message).startsWith('NOSCRIPT')) throw error;
      return driver.command(keys[0], ['EVAL', source, ...tail]);
    }
  }
}

function newEpoch(): string {
  return randomBytes(6).toString('base64url');
}
