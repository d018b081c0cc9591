/**
 * One broadcast, serialized once, as it travels from `BroadcastService` through a transport
 * to every node. It carries no object references, so a transport can ship it between
 * processes as it is.
 */
export interface BroadcastPacket {
  /** Id of the instance that sent it (`BroadcastService.instanceId`). */
  origin: string;
  /** Route patterns whose connections receive it. */
  routes?: string[];
  /** Rooms whose members receive it. */
  rooms?: string[];
  /** Ids of connections that receive it. */
  connections?: string[];
  /** Ids of connections that must not receive it. */
  except?: string[];
  /** The encoded message. */
  payload: string | Buffer;
  /** `true`: binary frame, `false`: text frame. */
  binary: boolean;
  /** Skip connections whose outgoing buffer is above the low watermark. */
  volatile?: boolean;
}

/** Whether the packet names no target and so goes to every connection. */
export function isForEveryone(packet: BroadcastPacket): boolean {
  return !packet.routes && !packet.rooms && !packet.connections;
}
