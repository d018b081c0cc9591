import type { BroadcastPacket } from './broadcast-packet.interface.js';

/** Delivers a packet to the connections of this process; returns how many it reached. */
export type LocalDelivery = (packet: BroadcastPacket) => number;

/**
 * Carries broadcasts between the processes that serve the same routes. The default
 * {@link MemoryBroadcastTransport} delivers in this process only; a Redis transport publishes
 * each packet to every instance, which delivers it to its own connections.
 */
export interface BroadcastTransport {
  /** Called once at start-up with the function that delivers to this process's connections. */
  bind(deliverLocally: LocalDelivery): void | Promise<void>;
  /**
   * Sends a packet to every process, this one included. Returns the number of connections of
   * this process that it reached.
   */
  publish(packet: BroadcastPacket): number;
  /** Releases connections and subscriptions at shutdown. */
  close?(): void | Promise<void>;
}
