import { Injectable, type Type } from '@nestjs/common';
import { WS_ROUTE_METADATA } from '../ws-routes.constants.js';
import type { WsRouteMetadata } from '../decorators/ws-route.decorator.js';
import type { WsConnection } from './ws-connection.js';

const EMPTY: ReadonlySet<WsConnection> = new Set();

/**
 * Every open connection of this process, indexed by id, route and room. A connection is in
 * here from the moment its handshake completes until its `close` event, and leaves every room
 * at the same moment, so nothing outlives a disconnect.
 *
 * The sets it returns are live views: copy them (`[...set]`) before closing connections in a
 * loop over them.
 */
@Injectable()
// It is the `ConnectionIndex` of every connection (structurally: that interface is internal).
export class WsConnectionRegistry implements Iterable<WsConnection> {
  /** Connections whose id has been read; ids are made on first use (see `WsConnection.id`). */
  private readonly byId = new Map<string, WsConnection>();
  private readonly routes = new Map<string, Set<WsConnection>>();
  private readonly rooms = new Map<string, Set<WsConnection>>();
  private count = 0;

  /** Number of open connections. */
  get size(): number {
    return this.count;
  }

  /** Number of rooms that have at least one member. */
  get roomCount(): number {
    return this.rooms.size;
  }

  /** The connection with this id, if it is open on this process. */
  get(id: string): WsConnection | undefined {
    return this.byId.get(id);
  }

  /** Every open connection, route by route. */
  *[Symbol.iterator](): IterableIterator<WsConnection> {
    for (const members of this.routes.values()) yield* members;
  }

  /** @internal The connections of each route: disjoint sets that together hold every one. */
  routeSets(): IterableIterator<ReadonlySet<WsConnection>> {
    return this.routes.values();
  }

  /** Connections of one route, by its class or its path pattern. */
  byRoute(route: Type | string): ReadonlySet<WsConnection> {
    return this.routes.get(routePattern(route)) ?? EMPTY;
  }

  /** Members of a room. */
  inRoom(room: string): ReadonlySet<WsConnection> {
    return this.rooms.get(room) ?? EMPTY;
  }

  /** Names of the rooms that have members. */
  roomNames(): IterableIterator<string> {
    return this.rooms.keys();
  }

  /** @internal */
  add(conn: WsConnection): void {
    addTo(this.routes, conn.route, conn);
    this.count++;
  }

  /** @internal Removes the connection from the registry, its route and all its rooms. */
  remove(conn: WsConnection): void {
    if (!removeFrom(this.routes, conn.route, conn)) return;
    this.count--;
    const id = conn.assignedId;
    if (id !== undefined) this.byId.delete(id);
    conn.leave();
  }

  /** @internal A connection's id was made: `get(id)` finds it from now on, while it is open. */
  indexId(conn: WsConnection, id: string): void {
    if (this.routes.get(conn.route)?.has(conn)) this.byId.set(id, conn);
  }

  /** @internal */
  joinRoom(conn: WsConnection, room: string): void {
    addTo(this.rooms, room, conn);
  }

  /** @internal */
  leaveRoom(conn: WsConnection, room: string): void {
    removeFrom(this.rooms, room, conn);
  }
}

/** The path pattern of a route class, or the pattern itself. */
export function routePattern(route: Type | string): string {
  if (typeof route === 'string') return route;
  const metadata: WsRouteMetadata | undefined = Reflect.getMetadata(WS_ROUTE_METADATA, route);
  if (!metadata) throw new TypeError(`${route.name} is not decorated with @WsRoute()`);
  return metadata.path;
}

function addTo<K>(index: Map<K, Set<WsConnection>>, key: K, conn: WsConnection): void {
  let members = index.get(key);
  if (!members) index.set(key, (members = new Set()));
  members.add(conn);
}

/** `false` if the connection was not in there. */
function removeFrom<K>(index: Map<K, Set<WsConnection>>, key: K, conn: WsConnection): boolean {
  const members = index.get(key);
  if (!members?.delete(conn)) return false;
  if (members.size === 0) index.delete(key);
  return true;
}
