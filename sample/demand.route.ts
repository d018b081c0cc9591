import { Logger } from '@nestjs/common';
import {
  BroadcastService,
  OnClose,
  OnMessage,
  OnOpen,
  WsConnection,
  WsConnectionRegistry,
  WsRoute,
} from '../lib/index.js';

/**
 * The subprotocol of the board: JSON `{ event, data }` messages (`welcome`, `online`,
 * `demand`). The page offers it and shows what was negotiated; a client that offers nothing
 * still connects, with `protocol === ''`.
 */
export const DEMAND_PROTOCOL = 'demand.v1';

/** Pushed to the other pages when someone arrives or leaves, so every page shows the count. */
export interface OnlineEvent {
  event: 'online';
  data: { online: number };
}

/**
 * The WebSocket endpoint of the demand board: Tornado's `WebSocketHandler` with `open()`,
 * `on_message()` and `on_close()`. Tornado's class-level set of connected users is not
 * needed: the registry already tracks the connections of this route, and `DemandService`
 * reaches all of them through `BroadcastService`.
 *
 * `recovery`: every broadcast to the route is kept (two minutes, 1,000 messages) and carries an
 * id; a page that reconnects with `?lastEventId=` gets what it missed, in order, after
 * `@OnOpen` (see sample/public/board.js).
 *
 * Handlers take no parameter decorators, so they get the documented default arguments:
 * `(conn, request)` on open, `(conn, body)` on message, `(conn, { code, reason })` on close.
 */
@WsRoute('/demand', { subprotocols: [DEMAND_PROTOCOL], recovery: true })
export class DemandRoute {
  private readonly logger = new Logger(DemandRoute.name);

  constructor(
    private readonly broadcast: BroadcastService,
    private readonly registry: WsConnectionRegistry,
  ) {}

  /**
   * The returned value is sent to the new client only, so the page learns its id and the
   * head count at once; the others hear about the new arrival through a broadcast.
   */
  @OnOpen()
  open(conn: WsConnection) {
    const online = this.online();
    this.logger.log(`${conn.id} opened from ${conn.remoteAddress} (${online} online)`);
    // Volatile: a head count is worth only its latest value, so it is not kept for replay.
    this.broadcast.toRoute(DemandRoute).except(conn).send(onlineEvent(online), { volatile: true });
    return { event: 'welcome', data: { id: conn.id, online } };
  }

  /**
   * Tornado's `on_message`: the return value is the reply. A text frame arrives as a string;
   * a binary frame as a Buffer, answered with its size rather than decoded as if it were text.
   */
  @OnMessage()
  echo(_conn: WsConnection, body: string | Buffer) {
    return `received: ${Buffer.isBuffer(body) ? `${body.length} bytes` : body}`;
  }

  /**
   * Runs for every way a connection ends (tab closed, network lost, heartbeat timeout,
   * shutdown); by now the registry no longer counts it, so the broadcast carries the new total.
   */
  @OnClose()
  close(conn: WsConnection, { code, reason }: { code: number; reason: string }) {
    const online = this.online();
    this.logger.log(`${conn.id} closed: ${code}${reason ? ` ${reason}` : ''} (${online} online)`);
    this.broadcast.toRoute(DemandRoute).send(onlineEvent(online), { volatile: true });
  }

  private online(): number {
    return this.registry.byRoute(DemandRoute).size;
  }
}

function onlineEvent(online: number): OnlineEvent {
  return { event: 'online', data: { online } };
}
