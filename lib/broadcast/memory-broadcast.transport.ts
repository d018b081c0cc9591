import type { BroadcastTransport } from './broadcast-transport.interface.js';

/**
 * The default transport, for a single instance: `BroadcastService` has already delivered to
 * this process's connections, and there is no other instance to carry a packet to.
 */
export class MemoryBroadcastTransport implements BroadcastTransport {
  bind(): void {}

  publish(): void {}
}
