/**
 * What a packet does to the connections it addresses, other than receive a message: the remote
 * actions of `BroadcastOperator` (`join`, `leave`, `disconnect`).
 */
export type BroadcastAction =
  | { readonly type: 'join'; readonly rooms: readonly string[] }
  | { readonly type: 'leave'; readonly rooms: readonly string[] }
  | { readonly type: 'disconnect'; readonly code: number; readonly reason: string };

/**
 * One broadcast, serialized once, as it travels from `BroadcastService` through a transport
 * to every instance. It carries no object references, so a transport can ship it between
 * processes as it is (`encodePacket` gives its wire form).
 */
export interface BroadcastPacket {
  /** Id of the instance that sent it (`BroadcastService.instanceId`). */
  origin: string;
  /**
   * Number of the packet among those of its origin (1, 2, …): with `origin`, it identifies
   * the packet, so a receiver that gets it on several channels delivers it once.
   */
  serial?: number;
  /** Route patterns whose connections receive it. */
  routes?: string[];
  /** Rooms whose members receive it. */
  rooms?: string[];
  /** User ids whose connections receive it. */
  users?: string[];
  /** Ids of connections that receive it. */
  connections?: string[];
  /** Ids of connections that must not receive it. */
  except?: string[];
  /** The encoded message (empty for an action). */
  payload: string | Buffer;
  /** `true`: binary frame, `false`: text frame. */
  binary: boolean;
  /** Skip connections whose outgoing buffer is above the low watermark. */
  volatile?: boolean;
  /** Instead of a message: what the addressed connections do. */
  action?: BroadcastAction;
  /**
   * Recovery routes whose shared history has this broadcast (set by the sender): their
   * connections get it from the history's feed, with its id, so delivery of the packet leaves
   * them out. Absent from an instance where the route has no recovery (a rolling deploy that
   * turns it on): that instance's connections of the route get the packet itself.
   */
  kept?: string[];
}

/** Whether the packet names no target and so goes to every connection. */
export function isForEveryone(packet: BroadcastPacket): boolean {
  return !packet.routes && !packet.rooms && !packet.users && !packet.connections;
}

/** The instance part of a connection id (`<instanceId>.<random>`), or `undefined`. */
export function instanceOfConnection(connectionId: string): string | undefined {
  const dot = connectionId.indexOf('.');
  return dot > 0 ? connectionId.slice(0, dot) : undefined;
}
