import {
  Inject,
  Injectable,
  Logger,
  type OnApplicationShutdown,
  type OnModuleInit,
  type Type,
} from '@nestjs/common';
import { WsConnection, type WsSendOptions } from '../connection/ws-connection.js';
import { routePattern, WsConnectionRegistry } from '../connection/ws-connection-registry.js';
import { encodeMessage } from '../connection/encode-message.js';
import { CloseCode } from '../ws-routes.constants.js';
import type { BroadcastAction, BroadcastPacket } from './broadcast-packet.interface.js';
import type { BroadcastTransport } from './broadcast-transport.interface.js';
import { createLocalDelivery, type LocalDelivery } from './local-delivery.js';
import { MemoryBroadcastTransport } from './memory-broadcast.transport.js';
import { RecoveryHub } from '../recovery/recovery-hub.js';
import { MetricsStore } from '../metrics/metrics-store.js';

/** Injection token of the {@link BroadcastTransport} in use. */
export const BROADCAST_TRANSPORT = Symbol('nestjs-ws-routes:broadcast-transport');

type Target = Pick<BroadcastPacket, 'routes' | 'rooms' | 'users' | 'connections' | 'except'>;

/** Where an operator hands its packet: the `BroadcastService`. */
interface PacketSink {
  readonly instanceId: string;
  dispatch(packet: BroadcastPacket, message?: unknown): number;
  countPacket(packet: BroadcastPacket, timeout: number): Promise<BroadcastCount>;
}

/** The answer of `BroadcastOperator.count()`. */
export interface BroadcastCount {
  /** Connections addressed, on this instance and every instance that answered. */
  count: number;
  /** Instances that answered, this one included. */
  instances: number;
  /** Ids of the instances known to be up that did not answer in time (empty: complete). */
  missing: string[];
}

/** Options of `BroadcastOperator.count()`. */
export interface BroadcastCountOptions {
  /** Milliseconds to wait for the other instances. Default 1000. */
  timeout?: number;
}

const DEFAULT_COUNT_TIMEOUT = 1_000;
const NO_PAYLOAD = Buffer.alloc(0);

/** How often a run of failed publishes is logged again (one line per interval, with a count). */
const FAILURE_LOG_INTERVAL = 10_000;

/**
 * A broadcast being addressed. Every method returns a new operator, so a partly addressed
 * one can be kept and reused: `const lobby = broadcast.to('lobby'); lobby.send(a); lobby.send(b)`.
 * Targets add up (a connection in several of them gets the message once); `except` removes.
 */
export class BroadcastOperator {
  /** @internal */
  constructor(
    private readonly sink: PacketSink,
    private readonly target: Target,
  ) {}

  /** Adds every connection of these routes (route classes or path patterns). */
  toRoute(...routes: (Type | string)[]): BroadcastOperator {
    return this.with('routes', routes.map(routePattern));
  }

  /** Adds every member of these rooms. */
  to(...rooms: string[]): BroadcastOperator {
    return this.with('rooms', rooms);
  }

  /**
   * Adds every connection (tab, device) of these users, on every instance. A connection's user
   * id is read by the `userId` option: by default `conn.user` when a string or number, else
   * `conn.user.id`, else `conn.user.sub`.
   */
  toUser(...users: (string | number)[]): BroadcastOperator {
    return this.with('users', users.map(String));
  }

  /** Adds these connections (ids or connections). */
  toConnection(...connections: (WsConnection | string)[]): BroadcastOperator {
    return this.with('connections', connections.map(idOf));
  }

  /** Leaves these connections out (typically the sender). */
  except(...connections: (WsConnection | string)[]): BroadcastOperator {
    return this.with('except', connections.map(idOf));
  }

  /**
   * Sends the message to every addressed connection: serialized and encoded once, whatever the
   * number of recipients. A string is text, bytes binary, anything else JSON text. With
   * `volatile`, connections that are behind (buffer above the low watermark) are skipped.
   *
   * This instance's connections get it at once; the transport carries it to the other
   * instances without this call waiting for the network. Returns how many connections of
   * **this instance** it was written to (other instances count their own). A broadcast to
   * whole routes (or everyone) without `except` or `volatile` is written at the end of the
   * turn, and counts every open connection of those routes, one that `slowConsumer: 'drop'`
   * skips then included.
   */
  send(message: unknown, options?: WsSendOptions): number {
    const { payload, binary } = encodeMessage(message, options?.binary);
    const packet = this.packet(payload, binary);
    if (options?.volatile) packet.volatile = true;
    return this.sink.dispatch(packet, message);
  }

  /**
   * Makes the addressed connections join these rooms, on every instance (Socket.IO's
   * `socketsJoin`). Returns how many connections of this instance joined.
   */
  join(...rooms: string[]): number {
    return this.act({ type: 'join', rooms: checkRooms(rooms) });
  }

  /** Makes the addressed connections leave these rooms, on every instance. */
  leave(...rooms: string[]): number {
    return this.act({ type: 'leave', rooms: checkRooms(rooms) });
  }

  /**
   * Closes the addressed connections, on every instance (log a user out of every tab
   * everywhere: `broadcast.toUser(id).disconnect(4001, 'Logged out')`). `@OnClose` runs on
   * each. Default code 1000; the reason is cut to 123 bytes. Returns how many connections of
   * this instance it closed.
   */
  disconnect(code: number = CloseCode.Normal, reason = ''): number {
    if (!isSendableCloseCode(code))
      throw new RangeError(`disconnect(): ${code} is not a close code a server may send`);
    return this.act({ type: 'disconnect', code, reason: String(reason) });
  }

  /**
   * Counts the addressed connections on every instance. Instances that do not answer within
   * `timeout` (default 1000 ms) are listed in `missing`, and their connections are not counted.
   */
  count(options?: BroadcastCountOptions): Promise<BroadcastCount> {
    const timeout = options?.timeout ?? DEFAULT_COUNT_TIMEOUT;
    return this.sink.countPacket(this.packet(NO_PAYLOAD, false), timeout);
  }

  private act(action: BroadcastAction): number {
    const packet = this.packet(NO_PAYLOAD, false);
    packet.action = action;
    return this.sink.dispatch(packet);
  }

  private packet(payload: string | Buffer, binary: boolean): BroadcastPacket {
    return { origin: this.sink.instanceId, ...this.target, payload, binary };
  }

  private with(key: keyof Target, values: string[]): BroadcastOperator {
    const current = this.target[key] ?? [];
    return new BroadcastOperator(this.sink, {
      ...this.target,
      [key]: [...current, ...values],
    });
  }
}

/**
 * Pushes messages to many connections at once: to everyone, a route, a room, a user's
 * connections, one connection, on this instance or, with a Redis transport, on all of them.
 *
 * @example
 * ```ts
 * broadcast.send({ event: 'tick', data: Date.now() });            // everyone
 * broadcast.toRoute(DemandRoute).send(update);                     // Tornado's send_demand_updates
 * broadcast.to(conn.params.room).except(conn).send({ event: 'chat', data: text });
 * ```
 */
@Injectable()
export class BroadcastService implements OnModuleInit, OnApplicationShutdown, PacketSink {
  /**
   * This instance's id, the `origin` of the packets it sends and the first part of its
   * connections' ids; new at every start.
   */
  readonly instanceId: string;
  private readonly logger = new Logger('WsRoutes');
  private readonly everyone: BroadcastOperator;
  private readonly local: LocalDelivery;
  private serial = 0;
  private failures = 0;
  private failuresLogged = 0;
  private failureLoggedAt = -Infinity;

  constructor(
    @Inject(BROADCAST_TRANSPORT) private readonly transport: BroadcastTransport,
    private readonly registry: WsConnectionRegistry,
    private readonly recovery: RecoveryHub,
    metrics: MetricsStore,
  ) {
    this.instanceId = registry.instanceId;
    this.everyone = new BroadcastOperator(this, {});
    const history = transport.recoveryHistory?.();
    if (history) recovery.useHistory(history, registry);
    else recovery.sharedTransport = !(transport instanceof MemoryBroadcastTransport);
    this.local = metrics.countDeliveries(createLocalDelivery(registry, recovery));
  }

  async onModuleInit(): Promise<void> {
    const { instanceId, local, registry, transport } = this;
    await transport.bind({
      instanceId,
      // Another instance's packet; our own echo was delivered already, when it was sent.
      deliver: (packet) => (packet.origin === instanceId ? 0 : local.deliver(packet)),
      count: (packet) => local.count(packet),
      members: (kind) => registry.names(kind),
    });
    if (transport.subscribe || transport.unsubscribe) {
      registry.membership = {
        subscribe: (kind, name) => this.guard(() => transport.subscribe?.(kind, name)),
        unsubscribe: (kind, name) => this.guard(() => transport.unsubscribe?.(kind, name)),
      };
    }
  }

  /** Whether the transport reaches the other instances now (always `true` in memory). */
  get transportReady(): boolean {
    return this.transport.isReady?.() ?? true;
  }

  /** Publishes that failed (threw or rejected) since start-up; each is logged, in summary. */
  get publishFailures(): number {
    return this.failures;
  }

  /** @internal Delivers here, then hands the packet to the transport for the other instances. */
  dispatch(packet: BroadcastPacket, message?: unknown): number {
    packet.serial = this.serial = (this.serial % 0xffffffff) + 1;
    // Then: a broadcast that a recovery route cannot take throws before anything is sent.
    const byRoute = this.recovery.active ? this.recovery.record(packet, message) : undefined;
    const delivered = this.local.deliver(packet, byRoute);
    try {
      const publishing = this.transport.publish(packet);
      if (publishing && typeof publishing.then === 'function')
        publishing.then(undefined, this.publishFailed);
    } catch (error) {
      this.publishFailed(error);
    }
    return delivered;
  }

  /** @internal This instance's count, plus the other instances' answers. */
  async countPacket(packet: BroadcastPacket, timeout: number): Promise<BroadcastCount> {
    const here = this.local.count(packet);
    if (!this.transport.count) return { count: here, instances: 1, missing: [] };
    try {
      const remote = await this.transport.count(packet, timeout);
      return {
        count: here + remote.count,
        instances: 1 + remote.answered.length,
        missing: remote.missing,
      };
    } catch (error) {
      this.logger.warn(`count(): the other instances could not be asked: ${describe(error)}`);
      return { count: here, instances: 1, missing: ['*'] };
    }
  }

  /** A membership hook of the transport threw: logged, never thrown into `join()`. */
  private guard(hook: () => void): void {
    try {
      hook();
    } catch (error) {
      this.logger.error(`Broadcast transport: a subscription change failed: ${describe(error)}`);
    }
  }

  /** Counted, and logged once per interval with how many failed since the last line. */
  private readonly publishFailed = (error: unknown): void => {
    this.failures++;
    const now = Date.now();
    if (now - this.failureLoggedAt < FAILURE_LOG_INTERVAL) return;
    const since = this.failures - this.failuresLogged;
    this.failureLoggedAt = now;
    this.failuresLogged = this.failures;
    this.logger.error(
      `Broadcast transport: ${since} publish(es) failed (${this.failures} since start-up); ` +
        'this instance delivered to its own connections, other instances missed them: ' +
        describe(error),
    );
  };

  async onApplicationShutdown(): Promise<void> {
    await this.transport.close?.();
  }

  /** Sends to every connection of every route. */
  send(message: unknown, options?: WsSendOptions): number {
    return this.everyone.send(message, options);
  }

  /** Addresses every connection of these routes (route classes or path patterns). */
  toRoute(...routes: (Type | string)[]): BroadcastOperator {
    return this.everyone.toRoute(...routes);
  }

  /** Addresses every member of these rooms. */
  to(...rooms: string[]): BroadcastOperator {
    return this.everyone.to(...rooms);
  }

  /** Addresses every connection of these users, on every instance. */
  toUser(...users: (string | number)[]): BroadcastOperator {
    return this.everyone.toUser(...users);
  }

  /** Addresses these connections (ids or connections). */
  toConnection(...connections: (WsConnection | string)[]): BroadcastOperator {
    return this.everyone.toConnection(...connections);
  }

  /** Makes every connection of every instance join these rooms. */
  join(...rooms: string[]): number {
    return this.everyone.join(...rooms);
  }

  /** Makes every connection of every instance leave these rooms. */
  leave(...rooms: string[]): number {
    return this.everyone.leave(...rooms);
  }

  /** Closes every connection of every instance (default code 1000). */
  disconnect(code?: number, reason?: string): number {
    return this.everyone.disconnect(code, reason);
  }

  /** Counts every connection of every instance (see {@link BroadcastOperator.count}). */
  count(options?: BroadcastCountOptions): Promise<BroadcastCount> {
    return this.everyone.count(options);
  }

  /** Everyone but these connections. */
  except(...connections: (WsConnection | string)[]): BroadcastOperator {
    return this.everyone.except(...connections);
  }
}

function checkRooms(rooms: string[]): string[] {
  for (const room of rooms)
    if (typeof room !== 'string') throw new TypeError('join()/leave(): rooms are strings');
  return rooms;
}

/** A code a close frame may carry (RFC 6455 §7.4; `ws`'s rule): not 1004–1006, not 1015. */
function isSendableCloseCode(code: number): boolean {
  if (!Number.isInteger(code)) return false;
  if (code >= 3000 && code <= 4999) return true;
  return code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006;
}

function idOf(connection: WsConnection | string): string {
  return typeof connection === 'string' ? connection : connection.id;
}

function describe(error: unknown): string {
  if (error instanceof Error) return error.message;
  try {
    return String(error);
  } catch {
    return 'an error that cannot be printed';
  }
}
