import {
  Inject,
  Injectable,
  Logger,
  type OnApplicationShutdown,
  type OnModuleInit,
  type Type,
} from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { WsConnection, type WsSendOptions } from '../connection/ws-connection.js';
import { routePattern, WsConnectionRegistry } from '../connection/ws-connection-registry.js';
import { encodeMessage } from '../connection/encode-message.js';
import type { BroadcastPacket } from './broadcast-packet.interface.js';
import type { BroadcastTransport, LocalDelivery } from './broadcast-transport.interface.js';
import { createLocalDelivery } from './local-delivery.js';

/** Injection token of the {@link BroadcastTransport} in use. */
export const BROADCAST_TRANSPORT = Symbol('nestjs-ws-routes:broadcast-transport');

type Target = Pick<BroadcastPacket, 'routes' | 'rooms' | 'connections' | 'except'>;

/** Where an operator hands its packet: the `BroadcastService`. */
interface PacketSink {
  readonly instanceId: string;
  dispatch(packet: BroadcastPacket): number;
}

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
   * **this instance** it was written to (other instances count their own).
   */
  send(message: unknown, options?: WsSendOptions): number {
    const { payload, binary } = encodeMessage(message, options?.binary);
    const packet: BroadcastPacket = {
      origin: this.sink.instanceId,
      ...this.target,
      payload,
      binary,
    };
    if (options?.volatile) packet.volatile = true;
    return this.sink.dispatch(packet);
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
  /** This instance's id, the `origin` of the packets it sends; new at every start. */
  readonly instanceId: string = randomUUID();
  private readonly logger = new Logger('WsRoutes');
  private readonly everyone: BroadcastOperator;
  private readonly deliverLocally: LocalDelivery;
  private failures = 0;
  private failuresLogged = 0;
  private failureLoggedAt = -Infinity;

  constructor(
    @Inject(BROADCAST_TRANSPORT) private readonly transport: BroadcastTransport,
    registry: WsConnectionRegistry,
  ) {
    this.everyone = new BroadcastOperator(this, {});
    this.deliverLocally = createLocalDelivery(registry);
  }

  async onModuleInit(): Promise<void> {
    const { instanceId, deliverLocally } = this;
    await this.transport.bind({
      instanceId,
      // Another instance's packet; our own echo was delivered already, when it was sent.
      deliver: (packet) => (packet.origin === instanceId ? 0 : deliverLocally(packet)),
    });
  }

  /** Publishes that failed (threw or rejected) since start-up; each is logged, in summary. */
  get publishFailures(): number {
    return this.failures;
  }

  /** @internal Delivers here, then hands the packet to the transport for the other instances. */
  dispatch(packet: BroadcastPacket): number {
    const delivered = this.deliverLocally(packet);
    try {
      const publishing = this.transport.publish(packet);
      if (publishing && typeof publishing.then === 'function')
        publishing.then(undefined, this.publishFailed);
    } catch (error) {
      this.publishFailed(error);
    }
    return delivered;
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

  /** Addresses these connections (ids or connections). */
  toConnection(...connections: (WsConnection | string)[]): BroadcastOperator {
    return this.everyone.toConnection(...connections);
  }

  /** Everyone but these connections. */
  except(...connections: (WsConnection | string)[]): BroadcastOperator {
    return this.everyone.except(...connections);
  }
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
