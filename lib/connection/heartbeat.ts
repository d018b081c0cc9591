import type { HeartbeatOptions } from '../interfaces/heartbeat-options.interface.js';
import { sentBytes as kernelBytes, tcpSocketOf } from './ws-internals.js';
import { WsConnection } from './ws-connection.js';

/** Reason reported to `@OnClose` (with code 1006) for a peer the heartbeat gave up on. */
export const HEARTBEAT_TIMEOUT_REASON = 'Heartbeat timeout';

/**
 * Pings a set of connections every `interval` and terminates those that showed no sign of
 * life (pong, message or ping) within `timeout` of the ping. One pair of timers serves all
 * connections of a route, instead of two timers per socket. `timeout` may equal `interval`:
 * each round then first judges the previous one, as `ws`'s own example does.
 *
 * A connection that had bytes queued when it was pinged may not have received the ping yet:
 * it is judged by whether its queue moved since then. A queue that did not move for `timeout`
 * belongs to a peer that is gone (or reads nothing at all), and the connection is terminated
 * instead of lingering until the kernel gives up on it.
 *
 * A busy event loop (a long broadcast burst, a CPU-heavy handler) must not cost healthy peers
 * their connection, so every step checks whether its timer came late:
 * - the verdict waits one `setImmediate`, so pongs already sitting in socket buffers are read
 *   (poll phase) before anyone is judged;
 * - a verdict that comes late restarts the peers' time from now;
 * - a ping round that comes late is skipped: its pings would queue behind the burst.
 */
export class Heartbeat {
  private pingTimer: NodeJS.Timeout | undefined;
  private verdictTimer: NodeJS.Timeout | undefined;
  private nextPingAt = 0;
  /** The previous round waits for its verdict (when `timeout === interval`, the next round's). */
  private awaitingVerdict = false;
  /** Connections that had a backlog when pinged: how many bytes had left their queue then. */
  private backlogs = new Map<WsConnection, number>();

  constructor(
    private readonly options: HeartbeatOptions,
    private readonly connections: () => Iterable<WsConnection>,
  ) {}

  start(): void {
    this.nextPingAt = Date.now() + this.options.interval;
    this.pingTimer = setInterval(() => this.tick(), this.options.interval).unref();
  }

  stop(): void {
    clearInterval(this.pingTimer);
    clearTimeout(this.verdictTimer);
    this.backlogs.clear();
  }

  private tick(): void {
    const now = Date.now();
    const late = now - this.nextPingAt;
    this.nextPingAt = now + this.options.interval;
    if (late > this.options.timeout / 2) {
      // Nobody could answer during the stall: the round that waited starts over.
      this.awaitingVerdict = false;
      clearTimeout(this.verdictTimer);
      return;
    }
    if (this.awaitingVerdict) {
      clearTimeout(this.verdictTimer);
      setImmediate(() => {
        this.judge();
        this.pingAll(Date.now());
      });
    } else {
      this.pingAll(now);
    }
  }

  private pingAll(now: number): void {
    const backlogs = (this.backlogs = new Map());
    for (const conn of this.connections()) {
      if (conn.readyState !== WsConnection.OPEN) continue;
      conn.alive = false;
      if (conn.bufferedAmount > 0) backlogs.set(conn, sentBytes(conn));
      conn.heartbeatPing();
    }
    this.awaitingVerdict = true;
    if (this.options.timeout < this.options.interval) this.scheduleVerdict(now);
  }

  private scheduleVerdict(from: number): void {
    clearTimeout(this.verdictTimer);
    const { timeout } = this.options;
    this.verdictTimer = setTimeout(() => {
      const now = Date.now();
      if (now - from - timeout > timeout / 2) this.scheduleVerdict(now);
      else setImmediate(() => this.judge());
    }, timeout).unref();
  }

  private judge(): void {
    if (!this.awaitingVerdict) return;
    this.awaitingVerdict = false;
    const { backlogs } = this;
    for (const conn of [...this.connections()]) {
      if (conn.alive || conn.readyState !== WsConnection.OPEN) continue;
      const before = backlogs.get(conn);
      // Pinged with an empty queue, the ping went out: no answer means no peer. Pinged behind
      // a backlog: a peer that reads is spared (the slow-consumer policy judges it).
      if (before === undefined || sentBytes(conn) === before) {
        conn.terminate(HEARTBEAT_TIMEOUT_REASON);
      }
    }
    backlogs.clear();
  }
}

/** Bytes of the connection the kernel has taken so far. */
function sentBytes(conn: WsConnection): number {
  const raw = tcpSocketOf(conn.socket);
  return raw ? kernelBytes(raw) : 0;
}
