import {
  Inject,
  Injectable,
  type OnApplicationShutdown,
  type OnModuleInit,
  type Type,
} from '@nestjs/common';
import { WsConnection, type WsSendOptions } from '../connection/ws-connection.js';
import { routePattern, WsConnectionRegistry } from '../connection/ws-connection-registry.js';
import { encodeMessage } from '../connection/encode-message.js';
import type { BroadcastPacket } from './broadcast-packet.interface.js';
import type { BroadcastTransport } from './broadcast-transport.interface.js';
import { createLocalDelivery } from './local-delivery.js';

/** Injection token of the {@link BroadcastTransport} in use. */
export const BROADCAST_TRANSPORT = Symbol('nestjs-ws-routes:broadcast-transport');

type Target = Pick<BroadcastPacket, 'routes' | 'rooms' | 'connections' | 'except'>;

/**
 * A broadcast being addressed. Every method returns a new operator, so a partly addressed
 * one can be kept and reused: `const lobby = broadcast.to('lobby'); lobby.send(a); lobby.send(b)`.
 * Targets add up (a connection in several of them gets the message once); `except` removes.
 */
export class BroadcastOperator {
  /** @internal */
  constructor(
    private readonly transport: BroadcastTransport,
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
   * Returns how many connections of this process it was written to.
   */
  send(message: unknown, options?: WsSendOptions): number {
    const { payload, binary } = encodeMessage(message, options?.binary);
    const packet: BroadcastPacket = { ...this.target, payload, binary };
    if (options?.volatile) packet.volatile = true;
    return this.transport.publish(packet);
  }

  private with(key: keyof Target, values: string[]): BroadcastOperator {
    const current = this.target[key] ?? [];
    return new BroadcastOperator(this.transport, {
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
export class BroadcastService implements OnModuleInit, OnApplicationShutdown {
  private readonly everyone: BroadcastOperator;

  constructor(
    @Inject(BROADCAST_TRANSPORT) private readonly transport: BroadcastTransport,
    private readonly registry: WsConnectionRegistry,
  ) {
    this.everyone = new BroadcastOperator(transport, {});
  }

  async onModuleInit(): Promise<void> {
    await this.transport.bind(createLocalDelivery(this.registry));
  }

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
