import type { HeartbeatOptions } from '../interfaces/heartbeat-options.interface.js';
import { WsConnection } from './ws-connection.js';

/** Reason reported to `@OnClose` (with code 1006) for a peer the heartbeat gave up on. */
export const HEARTBEAT_TIMEOUT_REASON = 'Heartbeat timeout';

/**
 * Pings a set of connections every `interval` and terminates those that showed no sign of
 * life (pong, message or ping) within `timeout` of the ping. One pair of timers serves all
 * connections of a route, instead of two timers per socket.
 *
 * A busy event loop (a long broadcast burst, a CPU-heavy handler) must not cost healthy peers
 * their connection, so every step checks whether its timer came late:
 * - the verdict waits one `setImmediate`, so pongs already sitting in socket buffers are read
 *   (poll phase) before anyone is judged;
 * - a verdict that comes late restarts the peers' time from now;
 * - a ping round that comes late is skipped: its pings would queue behind the burst;
 * - a connection with bytes still queued may not have received the ping yet: the
 *   slow-consumer policy judges it, not the heartbeat.
 */
export class Heartbeat {
  private pingTimer: NodeJS.Timeout | undefined;
  private verdictTimer: NodeJS.Timeout | undefined;
  private nextPingAt = 0;

  constructor(
    private readonly options: HeartbeatOptions,
    private readonly connections: () => Iterable<WsConnection>,
  ) {}

  start(): void {
    this.nextPingAt = Date.now() + this.options.interval;
    this.pingTimer = setInterval(() => this.pingAll(), this.options.interval).unref();
  }

  stop(): void {
    clearInterval(this.pingTimer);
    clearTimeout(this.verdictTimer);
  }

  private pingAll(): void {
    const now = Date.now();
    const late = now - this.nextPingAt;
    this.nextPingAt = now + this.options.interval;
    if (late > this.options.timeout / 2) return;
    for (const conn of this.connections()) {
      if (conn.readyState !== WsConnection.OPEN) continue;
      conn.alive = false;
      conn.ping();
    }
    this.scheduleVerdict(now);
  }

  private scheduleVerdict(from: number): void {
    clearTimeout(this.verdictTimer);
    const { timeout } = this.options;
    this.verdictTimer = setTimeout(() => {
      const now = Date.now();
      if (now - from - timeout > timeout / 2) this.scheduleVerdict(now);
      else setImmediate(() => this.terminateSilent());
    }, timeout).unref();
  }

  private terminateSilent(): void {
    for (const conn of [...this.connections()]) {
      if (!conn.alive && conn.readyState === WsConnection.OPEN && conn.bufferedAmount === 0) {
        conn.terminate(HEARTBEAT_TIMEOUT_REASON);
      }
    }
  }
}
