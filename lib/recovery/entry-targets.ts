import type { WsConnection } from '../connection/ws-connection.js';

/** The targets of a stored broadcast; `routes` undefined: everyone. */
export interface EntryTargets {
  routes?: readonly string[];
  rooms?: readonly string[];
  users?: readonly string[];
  connections?: readonly string[];
  except?: readonly string[];
}

/**
 * Whether a stored broadcast reaches this connection as it is now (its rooms, its user): what
 * a replay sends is what the connection would get if the broadcast were sent again.
 */
export function reaches(
  entry: EntryTargets,
  everyone: boolean,
  conn: WsConnection,
  user: string | undefined,
): boolean {
  const id = conn.assignedId;
  if (entry.except && id !== undefined && entry.except.includes(id)) return false;
  if (everyone) return true;
  if (entry.connections && id !== undefined && entry.connections.includes(id)) return true;
  if (entry.routes?.includes(conn.route)) return true;
  if (entry.rooms) for (const room of entry.rooms) if (conn.rooms.has(room)) return true;
  if (entry.users && user !== undefined && entry.users.includes(user)) return true;
  return false;
}
