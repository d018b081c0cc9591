/**
 * Bench settings: defaults of the issue, `--quick` for a smoke run, and every count overridable
 * with `--name=value` or `BENCH_NAME=value` (e.g. `--n=2000`, `BENCH_ROUNDS=5`).
 */
export interface Config {
  mode: 'bench' | 'soak' | 'redis' | 'recovery';
  quick: boolean;
  /** Fan-out, memory and accept-rate connections. */
  n: number;
  /** Broadcasts per fan-out round. */
  messages: number;
  /** Approximate JSON size of a broadcast. */
  bytes: number;
  /** Rounds of paced + burst (and of room broadcasts) per variant; the median is reported. */
  rounds: number;
  /** Rooms of the room-broadcast scenario, `room-0` … : connection k joins `room-(k % roomCount)`. */
  roomCount: number;
  /** Broadcasts to random rooms per event-loop turn (one synchronous loop) of a room round. */
  roomMessages: number;
  /** Turns of `roomMessages` room broadcasts per round. */
  roomRepeats: number;
  echoConns: number;
  echoBytes: number;
  echoWarmupMs: number;
  echoMs: number;
  /** Load processes. */
  workers: number;
  /** Handshakes in flight per load process. */
  concurrency: number;
  connectTimeoutMs: number;
  fanoutTimeoutMs: number;
  /** The whole run stops starting new variants past this. */
  deadlineMs: number;
  variants: string[];
  echoVariants: string[];
  /** `fanout`, `rooms`, `echo`. */
  scenarios: string[];
  bufferutil: boolean;
  /** Seconds to wait at most for a quiet machine before starting (0: start at once). */
  waitIdle: number;
  /** Extra node flags for the server processes, e.g. `--server-node-flags=--cpu-prof`. */
  serverNodeFlags: string[];
  // soak
  soakConns: number;
  soakMs: number;
  soakLifeMinMs: number;
  soakLifeMaxMs: number;
  soakRooms: number;
  soakRoomsPerConn: number;
  soakTerminateRatio: number;
  /** Handshakes in flight per load process during the soak. */
  soakConcurrency: number;
  soakTickMs: number;
  soakRoomsPerTick: number;
  // redis (bench/redis.ts)
  /** Connections over all instances. */
  redisClients: number;
  /** App instances of the scaled-out variants. */
  redisInstances: number;
  /** Broadcasts per scenario round. */
  redisMessages: number;
  redisRooms: number;
  /** Measured rounds of the everyone scenario; the median is reported. */
  redisRounds: number;
  /** Measured rounds of the rooms and local rooms scenarios (short ones). */
  redisRoomRounds: number;
  /** Broadcasts to everyone per round of the latency scenario, one every `redisLatencyIntervalMs`. */
  redisLatencyMessages: number;
  redisLatencyIntervalMs: number;
  /** Broadcasts to one room each per round of the room latency scenario, and their interval. */
  redisRoomLatencyMessages: number;
  redisRoomLatencyIntervalMs: number;
  /** Rounds of each latency scenario; the median p50 and p99 are reported. */
  redisLatencyRounds: number;
  /** `everyone`, `latency`, `rooms`, `room-latency`, `local-rooms`. */
  redisScenarios: string[];
  /** `ours-redis`, `ours-single`, `socketio-redis`. */
  redisVariants: string[];
  /** A round that has not completed after this is reported as a timeout. */
  redisTimeoutMs: number;
  /** No variant (or second try of a disturbed one) starts past this; no round 60 s after it. */
  redisDeadlineMs: number;
}

export const FANOUT_VARIANTS = [
  'ws-naive',
  'ws-best',
  'nest-gateway',
  'socketio',
  'uws',
  'ours',
  'ours-metrics',
];
/** The fan-out variants with rooms (`join` messages, broadcasts to one room). */
export const ROOM_VARIANTS = ['ws-naive', 'ws-best', 'uws', 'ours', 'ours-metrics'];
export const SCENARIOS = ['fanout', 'rooms', 'echo'];
export const ECHO_VARIANTS = [
  'ws-best',
  'nest-gateway',
  'nest-gateway-enhanced',
  'socketio',
  'uws',
  'ours',
  'ours-metrics',
  'ours-enhanced',
];

const FULL: Omit<Config, 'mode' | 'quick'> = {
  n: 5000,
  messages: 200,
  bytes: 200,
  // Three rounds (passes, interleaved across the variants) keep the full run near 8 minutes: a
  // paced round at 5,000 connections takes 6–10 s here.
  rounds: 3,
  // 5,000 connections over 1,000 rooms: 5 members each; 50 turns × 200 broadcasts ≈ 50,000
  // deliveries per round, enough server CPU to measure.
  roomCount: 1000,
  roomMessages: 200,
  roomRepeats: 50,
  echoConns: 500,
  echoBytes: 100,
  echoWarmupMs: 1500,
  echoMs: 5000,
  workers: 2,
  concurrency: 50,
  connectTimeoutMs: 90_000,
  fanoutTimeoutMs: 60_000,
  deadlineMs: 20 * 60_000,
  variants: FANOUT_VARIANTS,
  echoVariants: ECHO_VARIANTS,
  scenarios: [...SCENARIOS],
  bufferutil: false,
  waitIdle: 0,
  serverNodeFlags: [],
  soakConns: 10_000,
  soakMs: 60_000,
  // Long enough that 10,000 stay open at once on 2 shared cores (≈ 330 reconnections/s).
  soakLifeMinMs: 10_000,
  soakLifeMaxMs: 50_000,
  soakRooms: 200,
  soakRoomsPerConn: 2,
  soakTerminateRatio: 0.2,
  soakConcurrency: 200,
  soakTickMs: 100,
  soakRoomsPerTick: 10,
  redisClients: 3000,
  redisInstances: 3,
  redisMessages: 200,
  redisRooms: 1000,
  redisRounds: 3,
  redisRoomRounds: 5,
  redisLatencyMessages: 20,
  redisLatencyIntervalMs: 50,
  redisRoomLatencyMessages: 100,
  redisRoomLatencyIntervalMs: 10,
  redisLatencyRounds: 3,
  redisScenarios: ['everyone', 'latency', 'rooms', 'room-latency', 'local-rooms'],
  redisVariants: ['ours-redis', 'ours-single', 'socketio-redis'],
  redisTimeoutMs: 30_000,
  redisDeadlineMs: 150_000,
};

const QUICK: Partial<Config> = {
  n: 500,
  messages: 50,
  rounds: 1,
  // 500 connections: 5 members per room as in the full run.
  roomCount: 100,
  roomMessages: 50,
  roomRepeats: 20,
  echoConns: 100,
  echoWarmupMs: 500,
  echoMs: 1500,
  fanoutTimeoutMs: 20_000,
  connectTimeoutMs: 30_000,
  deadlineMs: 5 * 60_000,
  soakConns: 1000,
  soakMs: 10_000,
  soakLifeMinMs: 2000,
  soakLifeMaxMs: 8000,
  redisClients: 600,
  redisMessages: 50,
  redisRooms: 200,
  redisRounds: 1,
  redisRoomRounds: 2,
  redisLatencyMessages: 10,
  redisRoomLatencyMessages: 50,
  redisLatencyRounds: 1,
  redisDeadlineMs: 90_000,
};

function parseValue(current: unknown, raw: string): unknown {
  if (Array.isArray(current)) return raw.split(',').filter(Boolean);
  if (typeof current === 'number') {
    const value = Number(raw.replace(/_/g, ''));
    if (!Number.isFinite(value)) throw new Error(`not a number: ${raw}`);
    return value;
  }
  if (typeof current === 'boolean') return raw !== 'false' && raw !== '0';
  return raw;
}

const kebab = (key: string) => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
const envName = (key: string) => `BENCH_${kebab(key).replace(/-/g, '_').toUpperCase()}`;

export function parseConfig(argv: string[], env: NodeJS.ProcessEnv): Config {
  const positional = argv.filter((arg) => !arg.startsWith('--'));
  const flags = new Map<string, string>();
  for (const arg of argv.filter((a) => a.startsWith('--'))) {
    const [name, ...rest] = arg.slice(2).split('=');
    flags.set(name, rest.length ? rest.join('=') : 'true');
  }
  const quick = flags.has('quick') || env.BENCH_QUICK === '1';
  const mode = positional.includes('soak')
    ? 'soak'
    : positional.includes('redis')
      ? 'redis'
      : positional.includes('recovery')
        ? 'recovery'
        : 'bench';
  const config: Config = { ...FULL, ...(quick ? QUICK : {}), mode, quick };
  const known = new Set(['quick', ...Object.keys(FULL).map(kebab)]);
  for (const name of flags.keys()) {
    if (!known.has(name))
      throw new Error(`unknown option --${name}; known: ${[...known].join(', ')}`);
  }
  for (const key of Object.keys(FULL) as (keyof typeof FULL)[]) {
    const raw = flags.get(kebab(key)) ?? env[envName(key)];
    if (raw !== undefined) (config as any)[key] = parseValue(config[key], raw);
  }
  if (positional.some((a) => !['soak', 'redis', 'recovery'].includes(a)) || positional.length > 1)
    throw new Error(`unknown argument ${positional}`);
  if (mode === 'redis') checkRedisBounds(config);
  if (mode === 'bench') checkBenchBounds(config);
  return config;
}

function withinBounds(config: Config, key: keyof Config, min: number, max: number): void {
  const value = config[key] as number;
  if (!Number.isInteger(value) || value < min || value > max)
    throw new Error(`--${kebab(key)} must be an integer in [${min}, ${max}], not ${value}`);
}

/** Known scenarios, and room counts within bounds so that no loop of a room round runs away. */
function checkBenchBounds(config: Config): void {
  const other = config.scenarios.filter((s) => !SCENARIOS.includes(s));
  if (other.length) throw new Error(`unknown --scenarios ${other}; known: ${SCENARIOS}`);
  withinBounds(config, 'roomCount', 1, 1_000_000);
  withinBounds(config, 'roomMessages', 1, 100_000);
  withinBounds(config, 'roomRepeats', 1, 10_000);
  if (config.roomMessages * config.roomRepeats > 1_000_000)
    throw new Error('--room-messages × --room-repeats must be at most 1,000,000 broadcasts');
}

/** Every count of the Redis bench within bounds, so that no loop of it can run away. */
function checkRedisBounds(config: Config): void {
  const within = (key: keyof Config, min: number, max: number) =>
    withinBounds(config, key, min, max);
  within('redisInstances', 2, 8);
  within('redisClients', config.redisInstances, 30_000);
  within('redisMessages', 1, 10_000);
  within('redisRooms', 1, config.redisClients);
  within('redisRounds', 1, 10);
  within('redisRoomRounds', 1, 20);
  within('redisLatencyMessages', 1, 1000);
  within('redisLatencyIntervalMs', 1, 1000);
  within('redisRoomLatencyMessages', 1, 10_000);
  within('redisRoomLatencyIntervalMs', 1, 1000);
  within('redisLatencyRounds', 1, 10);
  within('redisTimeoutMs', 1000, 120_000);
  within('redisDeadlineMs', 10_000, 30 * 60_000);
  const known = ['ours-redis', 'ours-single', 'socketio-redis'];
  const unknown = config.redisVariants.filter((v) => !known.includes(v));
  if (unknown.length) throw new Error(`unknown --redis-variants ${unknown}; known: ${known}`);
  const scenarios = ['everyone', 'latency', 'rooms', 'room-latency', 'local-rooms'];
  const other = config.redisScenarios.filter((s) => !scenarios.includes(s));
  if (other.length) throw new Error(`unknown --redis-scenarios ${other}; known: ${scenarios}`);
}

export const USAGE = `npm run bench [-- [soak | redis | recovery] [--quick] [--name=value …]]
  options (or BENCH_NAME=value): ${Object.keys(FULL).map(kebab).join(', ')}`;
