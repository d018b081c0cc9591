import { Injectable, type Type } from '@nestjs/common';
import { WS_ROUTE_METADATA } from '../ws-routes.constants.js';
import type { WsRouteMetadata } from '../decorators/ws-route.decorator.js';
import type { RoomIndex, WsConnection } from './ws-connection.js';

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
export class WsConnectionRegistry implements Iterable<WsConnection>, RoomIndex {
  private readonly connections = new Map<string, WsConnection>();
  private readonly routes = new Map<string, Set<WsConnection>>();
  private readonly rooms = new Map<string, Set<WsConnection>>();

  /** Number of open connections. */
  get size(): number {
    return this.connections.size;
  }

  /** Number of rooms that have at least one member. */
  get roomCount(): number {
    return this.rooms.size;
  }

  /** The connection with this id, if it is open on this process. */
  get(id: string): WsConnection | undefined {
    return this.connections.get(id);
  }

  [Symbol.iterator](): IterableIterator<WsConnection> {
    return this.connections.values();
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
    this.connections.set(conn.id, conn);
    addTo(this.routes, conn.route, conn);
  }

  /** @internal Removes the connection from the registry, its route and all its rooms. */
  remove(conn: WsConnection): void {
    if (!this.connections.delete(conn.id)) return;
    removeFrom(this.routes, conn.route, conn);
    conn.leave();
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

function removeFrom<K>(index: Map<K, Set<WsConnection>>, key: K, conn: WsConnection): void {
  const members = index.get(key);
  if (members?.delete(conn) && members.size === 0) index.delete(key);
}
