import type { WsConnection } from './ws-connection.js';

/** How a connection's user id is read: the `userId` option of `WsRoutesModule.forRoot()`. */
export type UserIdOf = (conn: WsConnection) => string | number | undefined | null;

/**
 * The default rule: `conn.user` itself when it is a string or a number, else its `id`, else its
 * `sub` (the subject of a JWT), when that is a string or a number. Anything else: no user.
 */
export const defaultUserId: UserIdOf = (conn) => {
  const user = conn.user;
  if (typeof user === 'string' || typeof user === 'number') return user;
  if (typeof user !== 'object' || user === null) return undefined;
  const { id, sub } = user as { id?: unknown; sub?: unknown };
  if (typeof id === 'string' || typeof id === 'number') return id;
  if (typeof sub === 'string' || typeof sub === 'number') return sub;
  return undefined;
};

/** The user key of a connection, as a non-empty string, or `undefined`. */
export function userKeyOf(rule: UserIdOf, conn: WsConnection): string | undefined {
  const id = rule(conn);
  if (id === undefined || id === null) return undefined;
  const key = String(id);
  return key === '' ? undefined : key;
}
