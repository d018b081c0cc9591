import type { BroadcastPacket } from './broadcast-packet.interface.js';
import type { BroadcastTransport, LocalDelivery } from './broadcast-transport.interface.js';

/** The default transport: broadcasts reach the connections of this process only. */
export class MemoryBroadcastTransport implements BroadcastTransport {
  private deliver: LocalDelivery = () => 0;

  bind(deliverLocally: LocalDelivery): void {
    this.deliver = deliverLocally;
  }

  publish(packet: BroadcastPacket): number {
    return this.deliver(packet);
  }
}
