import {
  decodeFrame,
  encodeControl,
  encodeCountRequest,
  encodePacket,
  isPacketFrom,
  PacketFormatError,
  WIRE_FORMAT_VERSION,
} from './wire-format.js';
import type { BroadcastPacket } from './broadcast-packet.interface.js';

describe('wire format', () => {
  const full: BroadcastPacket = {
    origin: 'abcDEF012_-x',
    serial: 4_000_000_000,
    routes: ['/live/:id'],
    rooms: ['lobby', 'zimmer-ü', ''],
    users: ['42'],
    connections: ['abcDEF012_-x.0123456789abcdef'],
    except: [],
    payload: Buffer.from([0, 255, 1, 2]),
    binary: true,
    volatile: true,
  };

  it('carries every field of a packet, bytes intact, and keeps empty and absent lists apart', () => {
    const frame = decodeFrame(encodePacket(full));
    expect(frame.kind).toBe('packet');
    const packet = (frame as { packet: BroadcastPacket }).packet;
    expect({ ...packet, payload: [...(packet.payload as Buffer)] }).toEqual({
      ...full,
      payload: [0, 255, 1, 2],
    });
    const bare = decodeFrame(encodePacket({ origin: 'o', payload: 'héllo', binary: false }));
    const decoded = (bare as { packet: BroadcastPacket }).packet;
    expect(decoded.rooms).toBeUndefined();
    expect(decoded.except).toBeUndefined();
    expect(decoded.volatile).toBeUndefined();
    expect(decoded.binary).toBe(false);
    expect(decoded.payload.toString()).toBe('héllo');
  });

  it('marks a packet published to several channels, for the receivers to deduplicate', () => {
    expect(decodeFrame(encodePacket(full, true))).toMatchObject({ severalChannels: true });
    expect(decodeFrame(encodePacket(full))).toMatchObject({ severalChannels: false });
    const flags = (decodeFrame(encodePacket(full, true)) as { packet: BroadcastPacket }).packet;
    expect([flags.binary, flags.volatile]).toEqual([true, true]);
  });

  it('carries actions and count requests', () => {
    for (const action of [
      { type: 'join', rooms: ['a', 'b'] },
      { type: 'leave', rooms: ['a'] },
      { type: 'disconnect', code: 4001, reason: 'Logged out' },
    ] as const) {
      const frame = decodeFrame(
        encodePacket({ origin: 'o', users: ['7'], payload: '', binary: false, action }),
      );
      expect((frame as { packet: BroadcastPacket }).packet.action).toEqual(action);
    }
    const request = decodeFrame(
      encodeCountRequest('r-1', { origin: 'o', rooms: ['x'], payload: '', binary: false }),
    );
    expect(request).toMatchObject({
      kind: 'count-request',
      request: 'r-1',
      packet: { rooms: ['x'] },
    });
    const control = decodeFrame(
      encodeControl({ type: 'count-reply', request: 'r-1', instance: 'i', count: 3 }),
    );
    expect(control).toEqual({
      kind: 'control',
      control: { type: 'count-reply', request: 'r-1', instance: 'i', count: 3 },
    });
  });

  it('keeps names that are not well-formed UTF-16 (lone surrogates) apart from their U+FFFD twins', () => {
    const names = ['\ud800x', '\ufffdx', 'y\udfff', ''];
    const frame = decodeFrame(
      encodePacket({ origin: 'o', rooms: names, users: ['\udc00'], payload: '', binary: false }),
    ) as { packet: BroadcastPacket };
    expect(frame.packet.rooms).toEqual(names);
    expect(frame.packet.users).toEqual(['\udc00']);
  });

  it('tells a packet of one origin from its header alone', () => {
    const bytes = encodePacket(full);
    expect(isPacketFrom(bytes, Buffer.from(full.origin))).toBe(true);
    expect(isPacketFrom(bytes, Buffer.from('abcDEF012_-y'))).toBe(false);
    expect(isPacketFrom(bytes, Buffer.from('abcDEF012_-'))).toBe(false);
    expect(
      isPacketFrom(encodeControl({ type: 'bye', instance: full.origin }), Buffer.from(full.origin)),
    ).toBe(false);
    expect(isPacketFrom(bytes.subarray(0, 8), Buffer.from(full.origin))).toBe(false);
  });

  it('reads the kept routes (minor 1), and frames with fields a later minor version appended', () => {
    const kept = { ...full, kept: ['/board', '/b}o'] };
    expect((decodeFrame(encodePacket(kept)) as { packet: BroadcastPacket }).packet.kept).toEqual(
      kept.kept,
    );
    expect((decodeFrame(encodePacket(full)) as { packet: BroadcastPacket }).packet.kept).toBe(
      undefined,
    );
    // A later release writes the kept list (0: none) before its own fields.
    const later = Buffer.concat([encodePacket(kept), Buffer.from('future fields')]);
    expect((decodeFrame(later) as { packet: BroadcastPacket }).packet).toMatchObject({
      rooms: full.rooms,
      kept: kept.kept,
    });
    const none = Buffer.concat([encodePacket(full), Buffer.alloc(4), Buffer.from('future')]);
    const read = (decodeFrame(none) as { packet: BroadcastPacket }).packet;
    expect(read.rooms).toEqual(full.rooms);
    expect(read.kept).toBe(undefined);
  });

  it('refuses another major version, foreign bytes and truncated frames loudly', () => {
    const other = encodePacket(full);
    other[2] = WIRE_FORMAT_VERSION + 1;
    expect(() => decodeFrame(other)).toThrow(PacketFormatError);
    expect(() => decodeFrame(other)).toThrow(/version 2/);
    expect(() => decodeFrame(Buffer.from('{"json":true}'))).toThrow(/not a nestjs-ws-routes/);
    const bytes = encodePacket(full);
    for (let cut = 4; cut < bytes.length; cut += 7)
      expect(() => decodeFrame(bytes.subarray(0, cut))).toThrow(PacketFormatError);
  });

  it('refuses names longer than the format holds at the call site', () => {
    expect(() =>
      encodePacket({ origin: 'o', rooms: ['x'.repeat(70_000)], payload: '', binary: false }),
    ).toThrow(RangeError);
  });
});
