import type { WsConnection } from '../connection/ws-connection.js';
import type { WsConnectionRegistry } from '../connection/ws-connection-registry.js';
import { frameMessage, payloadOf } from '../connection/outbound.js';
import type { RecoveryHub } from '../recovery/recovery-hub.js';
import { isForEveryone, type BroadcastPacket } from './broadcast-packet.interface.js';

const OPEN = 1;

/** Applies packets to this process's connections. */
export interface LocalDelivery {
  /**
   * Delivers a message packet, or applies an action packet, to the connections it addresses
   * here; returns how many it reached. `byRoute`: the payload for the connections of recovery
   * routes (the message with its id there).
   */
  deliver(packet: BroadcastPacket, byRoute?: Map<string, Buffer>): number;
  /** How many open connections of this process the packet addresses. */
  count(packet: BroadcastPacket): number;
}

/**
 * Delivers packets to this process's connections. The payload is turned into bytes and framed
 * once per broadcast, and the same frame goes to every socket (corked until the end of the
 * turn); a connection named by several targets (two rooms, a room and its route) receives the
 * message once.
 */
export function createLocalDelivery(
  registry: WsConnectionRegistry,
  recovery?: RecoveryHub,
): LocalDelivery {
  // Routes whose history is shared: their connections get broadcasts from the history's feed,
  // with ids, in the stream's order, never from here.
  const shared = recovery?.sharedRoutes;
  return {
    deliver: (packet, byRoute) =>
      packet.action
        ? applyAction(registry, packet)
        : byRoute
          ? deliverWithIds(registry, packet, byRoute, recovery!)
          : deliverMessage(registry, packet, shared?.size ? shared : undefined),
    count: (packet) => {
      let count = 0;
      forEachRecipient(registry, packet, () => count++);
      return count;
    },
  };
}

function deliverMessage(
  registry: WsConnectionRegistry,
  packet: BroadcastPacket,
  shared: ReadonlySet<string> | undefined,
): number {
  const { binary } = packet;
  const volatile = packet.volatile ?? false;
  const except = packet.except?.length ? connectionsOf(registry, packet.except) : undefined;
  // Connections of routes whose shared history has this broadcast get it from its feed (the
  // sender says which: `kept`; an instance where such a route has no recovery delivers it).
  const kept = shared && packet.kept?.length ? packet.kept.filter((r) => shared.has(r)) : undefined;
  const skip = kept?.length ? kept : undefined;
  const targets =
    skip && packet.routes
      ? { ...packet, routes: packet.routes.filter((r) => !skip.includes(r)) }
      : packet;
  if (!volatile && except === undefined && onlyRoutes(targets)) {
    return deliverToRouteLogs(registry, targets, skip);
  }
  // Framed at the first recipient: a room with no member here costs nothing more.
  let frame: Buffer | undefined;
  let payload: Buffer | undefined;
  let delivered = 0;
  for (const conn of recipients(registry, targets)) {
    if (conn.readyState !== OPEN || except?.has(conn)) continue;
    if (skip !== undefined && skip.includes(conn.route)) continue;
    if (frame === undefined) {
      frame = frameMessage(packet.payload, binary);
      payload = payloadOf(frame);
    }
    if (conn.deliver(payload!, binary, frame, volatile)) delivered++;
  }
  return delivered;
}

/** Whether the packet addresses whole routes only (or everyone), the case of `RouteLog`. */
function onlyRoutes(packet: BroadcastPacket): boolean {
  return !packet.rooms?.length && !packet.users?.length && !packet.connections?.length;
}

/**
 * A broadcast to whole routes: one append to each route's log, whatever the number of its
 * connections; they get the log's bytes at the end of the turn (see `RouteLog`).
 */
function deliverToRouteLogs(
  registry: WsConnectionRegistry,
  packet: BroadcastPacket,
  skip: readonly string[] | undefined,
): number {
  const { binary } = packet;
  const named = packet.routes ?? [];
  const routes = isForEveryone(packet)
    ? registry.names('route')
    : named.length > 1
      ? new Set(named)
      : named;
  let frame: Buffer | undefined;
  let payload: Buffer | undefined;
  const framed = (): Buffer => {
    if (frame === undefined) {
      frame = frameMessage(packet.payload, binary);
      payload = payloadOf(frame);
    }
    return frame;
  };
  let delivered = 0;
  for (const route of routes) {
    if (skip !== undefined && skip.includes(route)) continue;
    const log = registry.routeLog(route);
    if (log === undefined || !log.usable) {
      for (const conn of registry.byRoute(route)) {
        if (conn.readyState !== OPEN) continue;
        const bytes = framed();
        if (conn.deliver(payload!, binary, bytes, false)) delivered++;
      }
      continue;
    }
    if (log.open === 0) continue;
    const bytes = framed();
    delivered += log.append(bytes, payload!, binary);
  }
  return delivered;
}

/**
 * A broadcast that reaches recovery routes: their connections get the payload with the id of
 * their route's stream (framed once per route), and a connection waiting for its replay gets
 * nothing now (the stream has it). The others get the plain frame.
 */
function deliverWithIds(
  registry: WsConnectionRegistry,
  packet: BroadcastPacket,
  byRoute: Map<string, Buffer>,
  recovery: RecoveryHub,
): number {
  const plain = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload;
  const { binary } = packet;
  const except = packet.except?.length ? connectionsOf(registry, packet.except) : undefined;
  const frames = new Map<string, Buffer>();
  let plainFrame: Buffer | undefined;
  let delivered = 0;
  for (const conn of recipients(registry, packet)) {
    if (conn.readyState !== OPEN || except?.has(conn)) continue;
    const withId = byRoute.get(conn.route);
    if (withId) {
      if (recovery.isHeld(conn)) continue;
      let frame = frames.get(conn.route);
      if (!frame) frames.set(conn.route, (frame = frameMessage(withId, false)));
      if (conn.deliver(withId, false, frame, false)) delivered++;
      continue;
    }
    plainFrame ??= frameMessage(plain, binary);
    if (conn.deliver(plain, binary, plainFrame, false)) delivered++;
  }
  return delivered;
}

/** Joins, leaves or closes: on a copy of the recipients, since their sets change meanwhile. */
function applyAction(registry: WsConnectionRegistry, packet: BroadcastPacket): number {
  const targets: WsConnection[] = [];
  forEachRecipient(registry, packet, (conn) => targets.push(conn));
  const action = packet.action!;
  for (const conn of targets) {
    if (action.type === 'join') conn.join(...action.rooms);
    else if (action.type === 'leave') conn.leave(...action.rooms);
    else conn.close(action.code, action.reason);
  }
  return targets.length;
}

function forEachRecipient(
  registry: WsConnectionRegistry,
  packet: BroadcastPacket,
  visit: (conn: WsConnection) => void,
): void {
  const except = packet.except?.length ? connectionsOf(registry, packet.except) : undefined;
  for (const conn of recipients(registry, packet)) {
    if (conn.readyState === OPEN && !except?.has(conn)) visit(conn);
  }
}

function recipients(
  registry: WsConnectionRegistry,
  packet: BroadcastPacket,
): Iterable<WsConnection> {
  if (isForEveryone(packet)) return everyone(registry);
  const { rooms } = packet;
  // The most common target after a route: one room, nothing else.
  if (rooms?.length === 1 && !packet.routes?.length && !packet.users?.length)
    if (!packet.connections?.length) return registry.inRoom(rooms[0]);
  const groups: Iterable<WsConnection>[] = [];
  for (const route of packet.routes ?? []) groups.push(registry.byRoute(route));
  for (const room of packet.rooms ?? []) groups.push(registry.inRoom(room));
  for (const user of packet.users ?? []) groups.push(registry.byUser(user));
  if (packet.connections?.length) groups.push(connectionsOf(registry, packet.connections));
  if (groups.length === 1) return groups[0];
  const union = new Set<WsConnection>();
  for (const group of groups) for (const conn of group) union.add(conn);
  return union;
}

/**
 * The connections of one route that a packet addresses here (open or not; `except` not
 * applied): a recovery route's live feed delivers each entry to these.
 */
export function routeRecipients(
  registry: WsConnectionRegistry,
  packet: Pick<BroadcastPacket, 'routes' | 'rooms' | 'users' | 'connections'>,
  route: string,
): Iterable<WsConnection> {
  if (isForEveryone(packet as BroadcastPacket) || packet.routes?.includes(route))
    return registry.byRoute(route);
  const found = new Set<WsConnection>();
  const add = (group: Iterable<WsConnection>): void => {
    for (const conn of group) if (conn.route === route) found.add(conn);
  };
  for (const room of packet.rooms ?? []) add(registry.inRoom(room));
  for (const user of packet.users ?? []) add(registry.byUser(user));
  if (packet.connections?.length) add(connectionsOf(registry, packet.connections));
  return found;
}

/** The open connections of this process with these ids (an id names one process's connection). */
export function connectionsOf(
  registry: WsConnectionRegistry,
  ids: readonly string[],
): Set<WsConnection> {
  const found = new Set<WsConnection>();
  for (const id of ids) {
    const conn = registry.get(id);
    if (conn) found.add(conn);
  }
  return found;
}

/** Every connection: the route sets are disjoint, so one of them is iterated as it is. */
function everyone(registry: WsConnectionRegistry): Iterable<WsConnection> {
  const sets = [...registry.routeSets()];
  return sets.length === 1 ? sets[0] : registry;
}
