import type { BroadcastPacket } from './broadcast-packet.interface.js';

/** Delivers a packet to the connections of this process; returns how many it reached. */
export type LocalDelivery = (packet: BroadcastPacket) => number;

/** What a transport is given at start-up. */
export interface TransportBinding {
  /** This instance's id: the `origin` of every packet it publishes. */
  readonly instanceId: string;
  /**
   * Delivers a packet that came from another instance to this one's connections. A packet
   * whose `origin` is this instance (the echo of its own publish) is ignored.
   */
  readonly deliver: LocalDelivery;
}

/**
 * Carries broadcasts between the processes that serve the same routes. `BroadcastService`
 * delivers to this instance's connections itself, at once, before the transport sees the
 * packet; the transport only carries it to the other instances, each of which delivers it to
 * its own connections. The default {@link MemoryBroadcastTransport} has no other instance to
 * reach.
 */
export interface BroadcastTransport {
  /** Called once at start-up, before the first publish. */
  bind(binding: TransportBinding): void | Promise<void>;
  /**
   * Carries a packet to the other instances. It may be asynchronous; a failure (a throw or a
   * rejection) is counted and logged by `BroadcastService`, never thrown into the code that
   * called `send()`.
   */
  publish(packet: BroadcastPacket): void | Promise<void>;
  /** Releases connections and subscriptions at shutdown. */
  close?(): void | Promise<void>;
}
