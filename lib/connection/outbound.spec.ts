import { frameMessage, frameParts, payloadOf } from './outbound.js';

/** `ws`'s own framing of the same bytes: what every frame we build must equal. */
function wsFrame(payload: Buffer, binary: boolean): Buffer {
  return Buffer.concat(frameParts(payload, binary));
}

describe('frameMessage', () => {
  const sizes = [0, 1, 125, 126, 127, 1000, 0xffff, 0x10000, 70_000];
  it.each(sizes)('frames a %i-byte string as ws frames its bytes', (size) => {
    const text = 'x'.repeat(size);
    for (const binary of [false, true]) {
      const frame = frameMessage(text, binary);
      expect(frame.equals(wsFrame(Buffer.from(text), binary))).toBe(true);
      expect(payloadOf(frame).toString()).toBe(text);
    }
  });

  it('counts multi-byte characters and lone surrogates as UTF-8 bytes', () => {
    for (const text of ['é€😀', 'a\ud800b', '€'.repeat(42), '😀'.repeat(20_000)]) {
      const frame = frameMessage(text, false);
      expect(frame.equals(wsFrame(Buffer.from(text), false))).toBe(true);
      expect(payloadOf(frame).equals(Buffer.from(text))).toBe(true);
    }
  });

  it('frames bytes through ws', () => {
    const bytes = Buffer.from([1, 2, 3, 250]);
    const frame = frameMessage(bytes, true);
    expect(frame.equals(wsFrame(bytes, true))).toBe(true);
    expect(payloadOf(frame).equals(bytes)).toBe(true);
  });
});
