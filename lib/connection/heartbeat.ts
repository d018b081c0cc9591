import type { HeartbeatOptions } from '../interfaces/heartbeat-options.interface.js';
import { WsConnection } from './ws-connection.js';

/** Reason reported to `@OnClose` (with code 1006) for a peer the heartbeat gave up on. */
export const HEARTBEAT_TIMEOUT_REASON = 'Heartbeat timeout';

/**
 * Pings a set of connections every `interval` and terminates those that showed no sign of
 * life (pong, message or ping) within `timeout` of the ping. One pair of timers serves all
 * connections of a route, instead of two timers per socket.
 *
 * The verdict waits for one `setImmediate`: if the event loop was busy when the timeout fell
 * due, pongs may already sit in socket buffers unread; the poll phase reads them first, so a
 * busy server does not kill healthy peers.
 */
export class Heartbeat {
  private pingTimer: NodeJS.Timeout | undefined;
  private verdictTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly options: HeartbeatOptions,
    private readonly connections: () => Iterable<WsConnection>,
  ) {}

  start(): void {
    this.pingTimer = setInterval(() => this.pingAll(), this.options.interval).unref();
  }

  stop(): void {
    clearInterval(this.pingTimer);
    clearTimeout(this.verdictTimer);
  }

  private pingAll(): void {
    for (const conn of this.connections()) {
      if (conn.readyState !== WsConnection.OPEN) continue;
      conn.alive = false;
      conn.ping();
    }
    clearTimeout(this.verdictTimer);
    this.verdictTimer = setTimeout(
      () => setImmediate(() => this.terminateSilent()),
      this.options.timeout,
    ).unref();
  }

  private terminateSilent(): void {
    for (const conn of [...this.connections()]) {
      // A connection with bytes still queued may not even have received the ping yet: the
      // slow-consumer policy judges it, not the heartbeat.
      if (!conn.alive && conn.readyState === WsConnection.OPEN && conn.bufferedAmount === 0) {
        conn.terminate(HEARTBEAT_TIMEOUT_REASON);
      }
    }
  }
}
