import { Inject, Injectable, Logger, Optional, type Type } from '@nestjs/common';
import { randomBytes } from 'node:crypto';
import { WS_ROUTE_METADATA } from '../ws-routes.constants.js';
import type { WsRouteMetadata } from '../decorators/ws-route.decorator.js';
import type { WsRoutesModuleOptions } from '../interfaces/ws-routes-module-options.interface.js';
import { WS_ROUTES_OPTIONS } from '../ws-routes.module-definition.js';
import { defaultUserId, userKeyOf, type UserIdOf } from './user-key.js';
import type { WsConnection } from './ws-connection.js';
import type { RouteLog } from './route-log.js';
import type { RoutesWebSocket } from './routes-websocket.js';

const EMPTY: ReadonlySet<WsConnection> = new Set();

/** What a connection can be a member of, across instances: a route, a room or a user. */
export type MembershipKind = 'route' | 'room' | 'user';

/**
 * @internal Told when this process gets the first member of a route, room or user, and when it
 * loses the last one: the broadcast transport subscribes to exactly what it has members of.
 */
export interface MembershipListener {
  subscribe(kind: MembershipKind, name: string): void;
  unsubscribe(kind: MembershipKind, name: string): void;
}

/**
 * Every open connection of this process, indexed by id, route, room and user. A connection is
 * in here from the moment its handshake completes until its `close` event, and leaves every
 * room and its user at the same moment, so nothing outlives a disconnect.
 *
 * The sets it returns are live views: copy them (`[...set]`) before closing connections in a
 * loop over them.
 */
@Injectable()
// It is the `ConnectionIndex` of every connection (structurally: that interface is internal).
export class WsConnectionRegistry implements Iterable<WsConnection> {
  /**
   * This process's id among the instances that share a broadcast transport, new at every
   * start: 12 URL-safe characters. Every connection id starts with it (`<instanceId>.<random>`),
   * so a message to one connection goes to its instance only.
   */
  readonly instanceId: string = randomBytes(9).toString('base64url');
  /** @internal Told about first and last members (the broadcast transport). */
  membership: MembershipListener | undefined = undefined;
  /** Connections whose id has been read; ids are made on first use (see `WsConnection.id`). */
  private readonly byId = new Map<string, WsConnection>();
  private readonly routes = new Map<string, Set<WsConnection>>();
  private readonly rooms = new Map<string, Set<WsConnection>>();
  private readonly users = new Map<string, Set<WsConnection>>();
  /** The user key of each connection that has one (most connections of a route have none). */
  private readonly userKeys = new Map<WsConnection, string>();
  private readonly userIdOf: UserIdOf;
  /** Each route's log of the broadcasts of this turn (see `RouteLog`). */
  private readonly logs = new Map<string, RouteLog>();
  private count = 0;
  private userIdFailed = false;

  constructor(@Optional() @Inject(WS_ROUTES_OPTIONS) options?: WsRoutesModuleOptions) {
    this.userIdOf = options?.userId ?? defaultUserId;
  }

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

  /**
   * Connections (tabs, devices) of one user on this process. The user id is read by the
   * `userId` option (default: `conn.user` if a string or number, else `conn.user.id`, else
   * `conn.user.sub`) when the connection opens, after `@OnOpen`, and whenever `conn.user` is
   * assigned.
   */
  byUser(userId: string | number): ReadonlySet<WsConnection> {
    return this.users.get(String(userId)) ?? EMPTY;
  }

  /** The user id of a connection by the `userId` rule, as last read; `undefined` if none. */
  userOf(conn: WsConnection): string | undefined {
    return this.userKeys.get(conn);
  }

  /** Names of the rooms that have members. */
  roomNames(): IterableIterator<string> {
    return this.rooms.keys();
  }

  /** @internal The routes, rooms or users this process has members of now. */
  names(kind: MembershipKind): IterableIterator<string> {
    return this.indexOf(kind).keys();
  }

  /** @internal The gateway's log for a route's broadcasts, one per route pattern. */
  setRouteLog(pattern: string, log: RouteLog): void {
    this.logs.set(pattern, log);
  }

  /** @internal The log that broadcasts to a route go to, if the route is served here. */
  routeLog(pattern: string): RouteLog | undefined {
    return this.logs.get(pattern);
  }

  /** @internal */
  add(conn: WsConnection): void {
    this.addTo('route', this.routes, conn.route, conn);
    this.logs.get(conn.route)?.admit(conn.socket as RoutesWebSocket);
    this.count++;
    this.identify(conn);
  }

  /** @internal Removes the connection from the registry, its route, its rooms and its user. */
  remove(conn: WsConnection): void {
    if (!this.removeFrom('route', this.routes, conn.route, conn)) return;
    this.logs.get(conn.route)?.release(conn.socket as RoutesWebSocket);
    this.count--;
    const id = conn.assignedId;
    if (id !== undefined) this.byId.delete(id);
    conn.leave();
    const user = this.userKeys.get(conn);
    if (user !== undefined) {
      this.userKeys.delete(conn);
      this.removeFrom('user', this.users, user, conn);
    }
  }

  /** @internal A connection's id was made: `get(id)` finds it from now on, while it is open. */
  indexId(conn: WsConnection, id: string): void {
    if (this.routes.get(conn.route)?.has(conn)) this.byId.set(id, conn);
  }

  /** @internal */
  joinRoom(conn: WsConnection, room: string): void {
    this.addTo('room', this.rooms, room, conn);
  }

  /** @internal */
  leaveRoom(conn: WsConnection, room: string): void {
    this.removeFrom('room', this.rooms, room, conn);
  }

  /** @internal Reads the connection's user id again (it opened, or `conn.user` changed). */
  identify(conn: WsConnection): void {
    if (!this.routes.get(conn.route)?.has(conn)) return;
    const before = this.userKeys.get(conn);
    const after = this.readUserKey(conn);
    if (before === after) return;
    if (before !== undefined) this.removeFrom('user', this.users, before, conn);
    if (after === undefined) {
      this.userKeys.delete(conn);
      return;
    }
    this.userKeys.set(conn, after);
    this.addTo('user', this.users, after, conn);
  }

  private readUserKey(conn: WsConnection): string | undefined {
    try {
      return userKeyOf(this.userIdOf, conn);
    } catch (error) {
      if (!this.userIdFailed) {
        this.userIdFailed = true;
        new Logger('WsRoutes').error(
          'The userId option threw; such connections belong to no user (logged once)',
          error instanceof Error ? error.stack : String(error),
        );
      }
      return undefined;
    }
  }

  private indexOf(kind: MembershipKind): Map<string, Set<WsConnection>> {
    return kind === 'route' ? this.routes : kind === 'room' ? this.rooms : this.users;
  }

  private addTo(
    kind: MembershipKind,
    index: Map<string, Set<WsConnection>>,
    key: string,
    conn: WsConnection,
  ): void {
    let members = index.get(key);
    if (!members) {
      index.set(key, (members = new Set()));
      this.membership?.subscribe(kind, key);
    }
    members.add(conn);
  }

  /** `false` if the connection was not in there. */
  private removeFrom(
    kind: MembershipKind,
    index: Map<string, Set<WsConnection>>,
    key: string,
    conn: WsConnection,
  ): boolean {
    const members = index.get(key);
    if (!members?.delete(conn)) return false;
    if (members.size === 0) {
      index.delete(key);
      this.membership?.unsubscribe(kind, key);
    }
    return true;
  }
}

/** The path pattern of a route class, or the pattern itself. */
export function routePattern(route: Type | string): string {
  if (typeof route === 'string') return route;
  const metadata: WsRouteMetadata | undefined = Reflect.getMetadata(WS_ROUTE_METADATA, route);
  if (!metadata) throw new TypeError(`${route.name} is not decorated with @WsRoute()`);
  return metadata.path;
}
