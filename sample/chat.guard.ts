import {
  BadRequestException,
  Injectable,
  UnauthorizedException,
  type CanActivate,
  type ExecutionContext,
} from '@nestjs/common';
import type { HandshakeRequest } from '../lib/index.js';

/** Who is talking; the guard puts it in `request.user`, the route reads `conn.data.user`. */
export interface ChatUser {
  name: string;
}

/** Letters, digits, spaces and `_ . -`; 1 to 24 of them. */
const NAME = /^[\p{L}\p{N}_. -]{1,24}$/u;
/** Letters, digits, `_` and `-`; 1 to 32 of them. */
const ROOM = /^[\p{L}\p{N}_-]{1,32}$/u;

/**
 * The chat's handshake guard: `?name=alice` is required. On a `@WsRoute` class,
 * `@UseGuards()` runs at the upgrade, before the 101, and nothing opens (no `@OnOpen`) when it
 * says no. The route has `refuse: 'close'`, so the page reads why in `onclose`: no name is a
 * 401 (close 4401, "log in again"), a name or room that breaks the rules a 400 (close 4400).
 * With the default `refuse: 'http'` the page would only see `onerror` and 1006. What the
 * guard puts in `request.user` becomes `conn.data.user`.
 *
 * A real application would check a token here (`?token=…`, a cookie) instead of trusting a
 * name; the shape is the same.
 */
@Injectable()
export class ChatGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const request = context.switchToHttp().getRequest<HandshakeRequest>();
    const room = request.params.room;
    if (!ROOM.test(room)) {
      throw new BadRequestException('The room name is 1 to 32 letters, digits, "_" or "-"');
    }
    const name = single(request.query.name)?.trim() ?? '';
    if (name === '') throw new UnauthorizedException('Join with a name: ?name=…');
    if (!NAME.test(name)) {
      throw new BadRequestException('A name is 1 to 24 letters, digits, spaces, "_", "." or "-"');
    }
    request.user = { name } satisfies ChatUser;
    return true;
  }
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}
