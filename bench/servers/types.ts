/** What every server variant gives the server process (bench/server.ts). */
export interface BenchServer {
  port: number;
  /** Path (ws) or namespace URL part the load clients connect to. */
  path: string;
  /** Which client library the load processes must use. */
  client: 'ws' | 'socketio';
  /** Build facts for the report (library versions, native or fallback build, …). */
  info: Record<string, string>;
  /** Open connections, as the server counts them. */
  connections(): number;
  /** Sends `message` to every connection: one broadcast, synchronously. */
  broadcast(message: object): void;
  /** Errors and warnings the server logged (Nest's logger, `ws` error events). */
  logged(): { error: number; warn: number; first: string[] };
  /**
   * Rooms, for the variants that have them: a client joins one with
   * `{"event":"join","data":"room-7"}`.
   */
  rooms?: {
    /** `join` messages handled so far. */
    joins(): number;
    /** Sends `message` to every member of `room`: one broadcast, synchronously. */
    broadcast(room: string, message: object): void;
  };
  close(): Promise<void>;
  /** Soak controls (our library only). */
  soak?: {
    start(options: SoakTickOptions): void;
    stop(): void;
    stats(): { connections: number; rooms: number };
  };
}

export interface SoakTickOptions {
  /** Milliseconds between ticks. */
  tickMs: number;
  /** Rooms, named `room-0` … `room-(rooms-1)`. */
  rooms: number;
  /** Rooms that get a broadcast at every tick. */
  roomsPerTick: number;
  /** Every this many ticks, a broadcast to the whole route as well. */
  routeEvery: number;
}

export interface ServerArgs {
  enhanced: boolean;
  /** Our library with `metrics: { registry }` (prom-client), scraped every 5 s. */
  metrics: boolean;
  soak: boolean;
  heartbeat: boolean;
}
