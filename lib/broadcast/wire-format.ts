import type { BroadcastAction, BroadcastPacket } from './broadcast-packet.interface.js';

/**
 * The wire format of packets between instances: binary, versioned, payload copied in once.
 *
 * ```
 * 'W' 'R'  major(u8)  kind(u8)  body…  [fields of later minor versions, ignored by older readers]
 * packet body:  flags(u8: binary|volatile|several channels)  origin(str8)  serial(u32)
 *               routes rooms users connections except (list: u32 count, then str16 each)
 *               action(u8: 0 none, 1 join + list, 2 leave + list, 3 disconnect + code u16 + str16)
 *               payload(u32 length + bytes)
 *               [minor 1: kept (list): the recovery routes whose history has this broadcast;
 *                omitted when there is none and nothing follows: a later minor version writes
 *                it (count 0 for none) before its own fields]
 * count request body: request id(str8), then a packet body
 * control body: JSON (UTF-8) to the end
 * entry body:   route(str16)  epoch(str8)  seq(str8, decimal digits)  then a whole packet frame
 * ```
 * An entry is one broadcast of a recovery route's history, as the Redis script that stored it
 * publishes it: the script writes the epoch and seq it gave between the header (from
 * {@link entryHeader}) and the packet frame.
 * A reader accepts its own major version and refuses any other loudly
 * ({@link PacketFormatError}); a new minor version only appends fields after the body, so
 * instances of two releases in a rolling deploy understand each other.
 */
export const WIRE_FORMAT_VERSION = 1;

const MAGIC_0 = 0x57; // 'W'
const MAGIC_1 = 0x52; // 'R'
const KIND_PACKET = 1;
const KIND_COUNT_REQUEST = 2;
const KIND_CONTROL = 3;
const KIND_ENTRY = 4;
const FLAG_BINARY = 1;
const FLAG_VOLATILE = 2;
/** Published to several channels: a receiver may get it more than once and must deduplicate. */
const FLAG_SEVERAL_CHANNELS = 4;
const ACTION_NONE = 0;
const ACTION_JOIN = 1;
const ACTION_LEAVE = 2;
const ACTION_DISCONNECT = 3;
const HEADER = 4;
/**
 * First byte of a name that is not well-formed UTF-16 (a lone surrogate, as `JSON.parse`
 * gives from `"\ud800"`): the rest is UTF-16LE, so no name is ever changed on the way. UTF-8
 * never contains 0xFF.
 */
const UTF16_MARK = 0xff;
const MAX_STR16 = 0xffff;
const MAX_STR8 = 0xff;

/** Messages between instances that are not broadcasts: presence, `count()` answers, probes. */
export type ControlMessage =
  | { type: 'hello'; instance: string; interval: number }
  | { type: 'bye'; instance: string }
  | { type: 'count-reply'; request: string; instance: string; count: number }
  | { type: 'probe'; instance: string; n: number };

/** A decoded frame of the wire format. */
export type WireFrame =
  | { kind: 'packet'; packet: BroadcastPacket; severalChannels: boolean }
  | { kind: 'count-request'; request: string; packet: BroadcastPacket }
  | { kind: 'control'; control: ControlMessage }
  | { kind: 'entry'; route: string; epoch: string; seq: number; packet: BroadcastPacket };

/** Bytes that are not a frame of this wire format, or of a major version this one cannot read. */
export class PacketFormatError extends Error {
  constructor(
    message: string,
    /** The frame's major version, when it had one. */
    readonly version?: number,
  ) {
    super(message);
    this.name = 'PacketFormatError';
  }
}

type Lists = Pick<BroadcastPacket, 'routes' | 'rooms' | 'users' | 'connections' | 'except'>;
const LISTS = ['routes', 'rooms', 'users', 'connections', 'except'] as const;

/**
 * A broadcast packet's wire form. `severalChannels`: it is published to more than one channel,
 * so an instance subscribed to two of them gets it twice and delivers it once (by origin and
 * serial); receivers remember only such packets.
 */
export function encodePacket(packet: BroadcastPacket, severalChannels = false): Buffer {
  const writer = new Writer(HEADER + packetSize(packet));
  writer.header(KIND_PACKET);
  writer.packet(packet, severalChannels ? FLAG_SEVERAL_CHANNELS : 0);
  return writer.done();
}

/** The wire form of a `count()` question about `packet`'s targets, with a request id. */
export function encodeCountRequest(request: string, packet: BroadcastPacket): Buffer {
  const writer = new Writer(HEADER + 1 + Buffer.byteLength(request) + packetSize(packet));
  writer.header(KIND_COUNT_REQUEST);
  writer.str8(request);
  writer.packet(packet);
  return writer.done();
}

/** A control message's wire form. */
export function encodeControl(control: ControlMessage): Buffer {
  const body = Buffer.from(JSON.stringify(control));
  const writer = new Writer(HEADER + body.length);
  writer.header(KIND_CONTROL);
  writer.bytes(body);
  return writer.done();
}

/**
 * The first bytes of a history entry of `route`: header and route. The script that appends to
 * the route's stream adds the epoch and seq (as str8 each) and the packet frame.
 */
export function entryHeader(route: string): Buffer {
  const writer = new Writer(HEADER + 2 + str16Size(route));
  writer.header(KIND_ENTRY);
  writer.str16(route);
  return writer.done();
}

/**
 * Whether `bytes` is a broadcast packet of this format sent by `origin` (given as its bytes),
 * read from the header alone: a receiver drops the echo of its own publishes without decoding.
 */
export function isPacketFrom(bytes: Buffer, origin: Buffer): boolean {
  const at = HEADER + 2; // after the flags and the origin's length
  return (
    bytes.length >= at + origin.length &&
    bytes[0] === MAGIC_0 &&
    bytes[1] === MAGIC_1 &&
    bytes[2] === WIRE_FORMAT_VERSION &&
    bytes[3] === KIND_PACKET &&
    bytes[HEADER + 1] === origin.length &&
    bytes.compare(origin, 0, origin.length, at, at + origin.length) === 0
  );
}

/**
 * Reads one frame. The payload of a packet is a view of `bytes`, not a copy. Throws
 * {@link PacketFormatError} for anything else, naming the version when it is another one.
 */
export function decodeFrame(bytes: Buffer): WireFrame {
  if (bytes.length < HEADER || bytes[0] !== MAGIC_0 || bytes[1] !== MAGIC_1)
    throw new PacketFormatError('not a nestjs-ws-routes broadcast frame');
  const version = bytes[2];
  if (version !== WIRE_FORMAT_VERSION)
    throw new PacketFormatError(
      `wire format version ${version}, this release reads version ${WIRE_FORMAT_VERSION} ` +
        '(instances of incompatible releases share the transport)',
      version,
    );
  const reader = new Reader(bytes, HEADER);
  try {
    switch (bytes[3]) {
      case KIND_PACKET: {
        const severalChannels = (bytes[HEADER] & FLAG_SEVERAL_CHANNELS) !== 0;
        return { kind: 'packet', packet: reader.packet(), severalChannels };
      }
      case KIND_COUNT_REQUEST: {
        const request = reader.str8();
        return { kind: 'count-request', request, packet: reader.packet() };
      }
      case KIND_CONTROL:
        return { kind: 'control', control: parseControl(reader.rest()) };
      case KIND_ENTRY: {
        const route = reader.str16();
        const epoch = reader.str8();
        const digits = reader.str8();
        const inner = decodeFrame(reader.rest());
        if (!/^\d{1,15}$/.test(digits) || inner.kind !== 'packet')
          throw new PacketFormatError('malformed history entry', version);
        return { kind: 'entry', route, epoch, seq: Number(digits), packet: inner.packet };
      }
      default:
        throw new PacketFormatError(`unknown frame kind ${bytes[3]}`, version);
    }
  } catch (error) {
    if (error instanceof PacketFormatError) throw error;
    throw new PacketFormatError(`truncated or malformed frame: ${(error as Error).message}`);
  }
}

function parseControl(body: Buffer): ControlMessage {
  const control = JSON.parse(body.toString()) as ControlMessage;
  if (typeof control !== 'object' || control === null || typeof control.type !== 'string')
    throw new PacketFormatError('malformed control message');
  return control;
}

function packetSize(packet: BroadcastPacket): number {
  let size = 1 + 1 + Buffer.byteLength(packet.origin) + 4;
  for (const key of LISTS) size += listSize(packet[key]);
  size += 1 + actionSize(packet.action);
  const payload = packet.payload;
  size += 4 + (typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length);
  if (packet.kept?.length) size += listSize(packet.kept);
  return size;
}

function listSize(list: readonly string[] | undefined): number {
  let size = 4;
  if (list) for (const item of list) size += 2 + str16Size(item);
  return size;
}

function str16Size(value: string): number {
  return isWellFormed(value) ? Buffer.byteLength(value) : 1 + 2 * value.length;
}

function isWellFormed(value: string): boolean {
  return (value as unknown as { isWellFormed(): boolean }).isWellFormed();
}

function actionSize(action: BroadcastAction | undefined): number {
  if (!action) return 0;
  if (action.type === 'disconnect') return 2 + 2 + str16Size(action.reason);
  return listSize(action.rooms);
}

class Writer {
  private readonly buffer: Buffer;
  private at = 0;

  constructor(size: number) {
    this.buffer = Buffer.allocUnsafe(size);
  }

  header(kind: number): void {
    this.buffer[0] = MAGIC_0;
    this.buffer[1] = MAGIC_1;
    this.buffer[2] = WIRE_FORMAT_VERSION;
    this.buffer[3] = kind;
    this.at = HEADER;
  }

  packet(packet: BroadcastPacket, flags = 0): void {
    this.u8(flags | (packet.binary ? FLAG_BINARY : 0) | (packet.volatile ? FLAG_VOLATILE : 0));
    this.str8(packet.origin);
    this.buffer.writeUInt32LE(packet.serial ?? 0, this.at);
    this.at += 4;
    for (const key of LISTS) this.list((packet as Lists)[key]);
    const action = packet.action;
    if (!action) this.u8(ACTION_NONE);
    else if (action.type === 'disconnect') {
      this.u8(ACTION_DISCONNECT);
      this.buffer.writeUInt16LE(action.code, this.at);
      this.at += 2;
      this.str16(action.reason);
    } else {
      this.u8(action.type === 'join' ? ACTION_JOIN : ACTION_LEAVE);
      this.list(action.rooms);
    }
    const payload = packet.payload;
    if (typeof payload === 'string') {
      const length = this.buffer.write(payload, this.at + 4);
      this.buffer.writeUInt32LE(length, this.at);
      this.at += 4 + length;
    } else {
      this.buffer.writeUInt32LE(payload.length, this.at);
      this.at += 4;
      this.bytes(payload);
    }
    if (packet.kept?.length) this.list(packet.kept);
  }

  u8(value: number): void {
    this.buffer[this.at++] = value;
  }

  str8(value: string): void {
    const length = this.buffer.write(value, this.at + 1);
    if (length > MAX_STR8) throw new RangeError(`instance or request id too long: ${value}`);
    this.buffer[this.at] = length;
    this.at += 1 + length;
  }

  str16(value: string): void {
    if (!isWellFormed(value)) {
      this.buffer[this.at + 2] = UTF16_MARK;
      const length = 1 + this.buffer.write(value, this.at + 3, 'utf16le');
      if (length > MAX_STR16)
        throw new RangeError('a room, user, route or connection name is longer than 65535 bytes');
      this.buffer.writeUInt16LE(length, this.at);
      this.at += 2 + length;
      return;
    }
    const length = this.buffer.write(value, this.at + 2);
    if (length > MAX_STR16)
      throw new RangeError('a room, user, route or connection name is longer than 65535 bytes');
    this.buffer.writeUInt16LE(length, this.at);
    this.at += 2 + length;
  }

  list(list: readonly string[] | undefined): void {
    // 0 items and "no such target" differ: an empty list still names a target kind.
    this.buffer.writeUInt32LE(list ? list.length + 1 : 0, this.at);
    this.at += 4;
    if (list) for (const item of list) this.str16(item);
  }

  bytes(bytes: Buffer): void {
    bytes.copy(this.buffer, this.at);
    this.at += bytes.length;
  }

  done(): Buffer {
    return this.at === this.buffer.length ? this.buffer : this.buffer.subarray(0, this.at);
  }
}

class Reader {
  constructor(
    private readonly buffer: Buffer,
    private at: number,
  ) {}

  packet(): BroadcastPacket {
    const flags = this.u8();
    const origin = this.str8();
    const serial = this.u32();
    const packet: BroadcastPacket = { origin, serial, payload: '', binary: false };
    for (const key of LISTS) {
      const list = this.list();
      if (list) (packet as Lists)[key] = list;
    }
    const action = this.u8();
    if (action === ACTION_JOIN || action === ACTION_LEAVE)
      packet.action = { type: action === ACTION_JOIN ? 'join' : 'leave', rooms: this.list() ?? [] };
    else if (action === ACTION_DISCONNECT) {
      const code = this.u16();
      packet.action = { type: 'disconnect', code, reason: this.str16() };
    } else if (action !== ACTION_NONE) throw new PacketFormatError(`unknown action ${action}`);
    const length = this.u32();
    packet.payload = this.take(length);
    packet.binary = (flags & FLAG_BINARY) !== 0;
    if (flags & FLAG_VOLATILE) packet.volatile = true;
    // Fields of later minor versions: absent in frames of older releases.
    if (this.at < this.buffer.length) {
      const kept = this.list();
      if (kept?.length) packet.kept = kept;
    }
    return packet;
  }

  rest(): Buffer {
    return this.take(this.buffer.length - this.at);
  }

  u8(): number {
    this.need(1);
    return this.buffer[this.at++];
  }

  u16(): number {
    this.need(2);
    const value = this.buffer.readUInt16LE(this.at);
    this.at += 2;
    return value;
  }

  u32(): number {
    this.need(4);
    const value = this.buffer.readUInt32LE(this.at);
    this.at += 4;
    return value;
  }

  str8(): string {
    const length = this.u8();
    return this.take(length).toString();
  }

  str16(): string {
    const bytes = this.take(this.u16());
    return bytes.length && bytes[0] === UTF16_MARK
      ? bytes.toString('utf16le', 1)
      : bytes.toString();
  }

  list(): string[] | undefined {
    const marked = this.u32();
    if (marked === 0) return undefined;
    const list: string[] = [];
    for (let i = 1; i < marked; i++) list.push(this.str16());
    return list;
  }

  take(length: number): Buffer {
    this.need(length);
    const bytes = this.buffer.subarray(this.at, this.at + length);
    this.at += length;
    return bytes;
  }

  private need(length: number): void {
    if (this.at + length > this.buffer.length)
      throw new PacketFormatError('truncated frame', WIRE_FORMAT_VERSION);
  }
}
