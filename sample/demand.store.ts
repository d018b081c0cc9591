import { createClient } from 'redis';

/** One line of the demand board. */
export interface DemandItem {
  name: string;
  quantity: number;
}

/** The board as it is now: its lines and its revision (one more at every change). */
export interface DemandState {
  items: DemandItem[];
  rev: number;
}

/**
 * Where the board lives. In memory for one process; in Redis when several instances serve the
 * same pages (`REDIS_URL`), so every instance shows and changes the same board.
 */
export interface DemandStore {
  state(): Promise<DemandState>;
  /** Moves every quantity by up to `max` either way (never below 0). */
  drift(max: number): Promise<DemandState>;
  /** Sets one line; `undefined` when there is no such line. */
  set(name: string, quantity: number): Promise<DemandState | undefined>;
  close(): Promise<void>;
}

const INITIAL: [string, number][] = [
  ['Apples', 40],
  ['Bread', 25],
  ['Coffee', 12],
  ['Milk', 30],
  ['Rice', 18],
];

const randomDrift = (max: number) => Math.floor(Math.random() * (2 * max + 1)) - max;

/** The board of one process. */
export class MemoryDemandStore implements DemandStore {
  private readonly items = new Map(INITIAL);
  private rev = 0;

  async state(): Promise<DemandState> {
    const items = [...this.items].map(([name, quantity]) => ({ name, quantity }));
    return { items, rev: this.rev };
  }

  async drift(max: number): Promise<DemandState> {
    for (const [name, quantity] of this.items)
      this.items.set(name, Math.max(0, quantity + randomDrift(max)));
    this.rev++;
    return this.state();
  }

  async set(name: string, quantity: number): Promise<DemandState | undefined> {
    if (!this.items.has(name)) return undefined;
    this.items.set(name, quantity);
    this.rev++;
    return this.state();
  }

  async close(): Promise<void> {}
}

/** Each change is one script: the lines and the revision move together, for every instance. */
const DRIFT = `
for i = 1, #ARGV, 2 do
  local v = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') + tonumber(ARGV[i + 1])
  if v < 0 then v = 0 end
  redis.call('HSET', KEYS[1], ARGV[i], v)
end
redis.call('HINCRBY', KEYS[1], '_rev', 1)
return redis.call('HGETALL', KEYS[1])
`;
const SET = `
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return false end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], '_rev', 1)
return redis.call('HGETALL', KEYS[1])
`;

/** The board in a Redis hash (`<keyPrefix>:board`), shared by every instance. */
export class RedisDemandStore implements DemandStore {
  private readonly client;
  private readonly key: string;
  private ready: Promise<unknown> | undefined;

  constructor(url: string, keyPrefix: string) {
    this.client = createClient({ url });
    this.client.on('error', () => {
      // node-redis reconnects by itself; a failed command is the caller's to report.
    });
    this.key = `${keyPrefix}:board`;
  }

  state(): Promise<DemandState> {
    return this.run(async () => parse(await this.client.hGetAll(this.key)));
  }

  drift(max: number): Promise<DemandState> {
    const args = INITIAL.flatMap(([name]) => [name, String(randomDrift(max))]);
    return this.run(async () =>
      parse(toRecord(await this.client.eval(DRIFT, { keys: [this.key], arguments: args }))),
    );
  }

  set(name: string, quantity: number): Promise<DemandState | undefined> {
    return this.run(async () => {
      const reply = await this.client.eval(SET, {
        keys: [this.key],
        arguments: [name, String(quantity)],
      });
      return reply ? parse(toRecord(reply)) : undefined;
    });
  }

  async close(): Promise<void> {
    if (this.client.isOpen) await this.client.close();
  }

  /** Connects once and creates the board if this is the first instance. */
  private async run<T>(task: () => Promise<T>): Promise<T> {
    this.ready ??= this.client
      .connect()
      .then(() =>
        Promise.all([
          ...INITIAL.map(([name, quantity]) =>
            this.client.hSetNX(this.key, name, String(quantity)),
          ),
          this.client.hSetNX(this.key, '_rev', '0'),
        ]),
      );
    await this.ready;
    return task();
  }
}

function toRecord(reply: unknown): Record<string, string> {
  const flat = reply as string[];
  const record: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) record[flat[i]] = flat[i + 1];
  return record;
}

function parse(record: Record<string, string>): DemandState {
  const items = INITIAL.map(([name]) => ({ name, quantity: Number(record[name] ?? 0) }));
  return { items, rev: Number(record._rev ?? 0) };
}
