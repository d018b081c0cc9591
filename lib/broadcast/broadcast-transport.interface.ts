import type { MembershipKind } from '../connection/ws-connection-registry.js';
import type { BroadcastPacket } from './broadcast-packet.interface.js';
import type { RecoveryHistory } from '../recovery/recovery-history.interface.js';

export type { MembershipKind };

/** What a transport is given at start-up: how to reach this instance's connections. */
export interface TransportBinding {
  /** This instance's id: the `origin` of every packet it publishes. */
  readonly instanceId: string;
  /**
   * Delivers a packet that came from another instance to this one's connections (or applies
   * its action); returns how many it reached. A packet whose `origin` is this instance (the
   * echo of its own publish) is ignored.
   */
  deliver(packet: BroadcastPacket): number;
  /** How many connections of this instance a packet addresses (for a remote `count()`). */
  count(packet: BroadcastPacket): number;
  /**
   * The routes, rooms or users this instance has members of now: what a transport subscribes
   * to at start-up and again after it reconnected.
   */
  members(kind: MembershipKind): Iterable<string>;
}

/** The answer of the other instances to a `count()`. */
export interface RemoteCount {
  /** Addressed connections on the instances that answered. */
  count: number;
  /** Ids of the instances that answered. */
  answered: string[];
  /** Ids of the instances known to be up that did not answer in time. */
  missing: string[];
}

/**
 * Counters a transport keeps since start-up, each optional, read by `WsRoutesMetrics` when
 * the metrics are scraped (`ws_transport_*`). `RedisBroadcastTransport.stats` has them all.
 */
export interface TransportStats {
  /** Frames published. */
  readonly published?: number;
  /** Broadcast frames that arrived from the transport (the echoes of this instance's own included). */
  readonly received?: number;
  /** Times the transport lost the other instances. */
  readonly outages?: number;
  /** Other instances heard from lately. */
  readonly instances?: number;
}

/**
 * Carries broadcasts between the processes that serve the same routes. `BroadcastService`
 * delivers to this instance's connections itself, at once, before the transport sees the
 * packet; the transport only carries it to the other instances, each of which delivers it to
 * its own connections. The default {@link MemoryBroadcastTransport} has no other instance to
 * reach; `RedisBroadcastTransport` (`nestjs-ws-routes/redis`) reaches them through Redis.
 */
export interface BroadcastTransport {
  /** Called once at start-up, before the first publish and the first membership change. */
  bind(binding: TransportBinding): void | Promise<void>;
  /**
   * Carries a packet to the other instances. It may be asynchronous; a failure (a throw or a
   * rejection) is counted and logged by `BroadcastService`, never thrown into the code that
   * called `send()`.
   */
  publish(packet: BroadcastPacket): void | Promise<unknown>;
  /**
   * This instance got its first member of a route, room or user: from now on it needs the
   * packets addressed to it. Called synchronously inside `join()` and the like; it must not
   * throw or block.
   */
  subscribe?(kind: MembershipKind, name: string): void;
  /** This instance lost its last member of a route, room or user. */
  unsubscribe?(kind: MembershipKind, name: string): void;
  /**
   * Asks every other instance how many of its connections a packet addresses, waiting at most
   * `timeout` ms; instances that do not answer are listed in `missing`.
   */
  count?(packet: BroadcastPacket, timeout: number): Promise<RemoteCount>;
  /**
   * A history every instance shares, for recovery routes (`@WsRoute(path, { recovery })`): a
   * transport that reaches other instances must offer one for such routes to start.
   */
  recoveryHistory?(): RecoveryHistory;
  /** Whether the transport currently reaches the other instances (always, if absent). */
  isReady?(): boolean;
  /** Counters since start-up, for the metrics; read only when they are scraped. */
  readonly stats?: TransportStats;
  /** Releases connections and subscriptions at shutdown. */
  close?(): void | Promise<void>;
}
