import { Logger, UseGuards } from '@nestjs/common';
import {
  BroadcastService,
  OnClose,
  OnMessage,
  OnOpen,
  WsConnection,
  WsConnectionRegistry,
  WsException,
  WsRoute,
} from '../lib/index.js';
import { ChatGuard, type ChatUser } from './chat.guard.js';

/**
 * The chat's subprotocol: JSON `{ event, data }` messages. The client sends `say`; the server
 * sends `welcome`, `joined`, `left`, `said` (someone else's line) and `sent` (the sender's own
 * line, confirmed). `requireProtocol` refuses clients that do not offer it (close 4400).
 */
export const CHAT_PROTOCOL = 'chat.v1';

/** Longest line, in characters. */
const MAX_LINE = 500;

/** One line of the chat, as everyone in the room sees it. */
export interface ChatLine {
  from: string;
  text: string;
  at: string;
}

type ChatConnection = WsConnection<{ user: ChatUser }>;

/**
 * A chat with rooms: `/chat/lobby?name=alice`. Rooms live in `BroadcastService`, so a room is
 * only a name: `conn.join()` on open, and the connection leaves it by itself when it closes.
 * Room names are prefixed (`chat:lobby`) because rooms are shared by every route of the app.
 *
 * `refuse: 'close'`: a refused join is a 101 closed at once with 4000 + status and the
 * reason (4401 "log in again", 4400, 4503 while the server shuts down), which the page reads;
 * an HTTP status would reach the page as a bare 1006, the same as a server that is down.
 */
@WsRoute('/chat/:room', {
  subprotocols: [CHAT_PROTOCOL],
  requireProtocol: true,
  refuse: 'close',
})
@UseGuards(ChatGuard)
export class ChatRoute {
  private readonly logger = new Logger(ChatRoute.name);

  constructor(
    private readonly broadcast: BroadcastService,
    private readonly registry: WsConnectionRegistry,
  ) {}

  /** Joins the room, tells the others, and welcomes the newcomer with who is there. */
  @OnOpen()
  open(conn: ChatConnection) {
    const room = roomOf(conn);
    const { name } = conn.data.user;
    conn.join(room);
    const members = this.members(room);
    this.logger.log(`${name} joined ${room} (${members.length} there)`);
    this.broadcast.to(room).except(conn).send({ event: 'joined', data: { name, members } });
    return {
      event: 'welcome',
      data: { name, room: conn.params.room, members, protocol: conn.protocol },
    };
  }

  /**
   * A line goes to everyone else in the room; the sender gets it back as `sent`, which is the
   * reply, so its page shows the line once, in the order the server accepted it.
   */
  @OnMessage('say')
  say(conn: ChatConnection, text: unknown): { event: 'sent'; data: ChatLine } {
    if (typeof text !== 'string' || text.trim() === '' || text.length > MAX_LINE) {
      throw new WsException(`"say" takes a non-empty string of at most ${MAX_LINE} characters`);
    }
    const line: ChatLine = { from: conn.data.user.name, text, at: new Date().toISOString() };
    this.broadcast.to(roomOf(conn)).except(conn).send({ event: 'said', data: line });
    return { event: 'sent', data: line };
  }

  /** By now the connection has left its room, so `members` no longer lists it. */
  @OnClose()
  close(conn: ChatConnection) {
    const room = roomOf(conn);
    const { name } = conn.data.user;
    const members = this.members(room);
    this.logger.log(`${name} left ${room} (${members.length} there)`);
    this.broadcast.to(room).send({ event: 'left', data: { name, members } });
  }

  private members(room: string): string[] {
    return [...this.registry.inRoom(room)].map((conn) => (conn as ChatConnection).data.user.name);
  }
}

function roomOf(conn: WsConnection): string {
  return `chat:${conn.params.room}`;
}
