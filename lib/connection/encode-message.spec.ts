import { encodeMessage } from './encode-message.js';
import { truncateCloseReason } from './truncate-utf8.js';

describe('encodeMessage', () => {
  it('sends strings as text and bytes of every kind as binary', () => {
    expect(encodeMessage('hi')).toEqual({ payload: 'hi', binary: false });
    expect(encodeMessage(Buffer.from([1]))).toEqual({ payload: Buffer.from([1]), binary: true });
    expect(encodeMessage(new Uint8Array([1, 2]).buffer)).toEqual({
      payload: Buffer.from([1, 2]),
      binary: true,
    });
    const view = new Uint16Array([0x0102, 0x0304]).subarray(1);
    expect(encodeMessage(view)).toEqual({ payload: Buffer.from(view.buffer, 2, 2), binary: true });
  });

  it('sends anything else as JSON text, and lets the caller force the frame type', () => {
    expect(encodeMessage({ a: [1] })).toEqual({ payload: '{"a":[1]}', binary: false });
    expect(encodeMessage(7)).toEqual({ payload: '7', binary: false });
    expect(encodeMessage(Buffer.from('x'), false)).toEqual({
      payload: Buffer.from('x'),
      binary: false,
    });
    expect(encodeMessage('x', true)).toEqual({ payload: 'x', binary: true });
  });

  it('refuses values JSON cannot represent', () => {
    expect(() => encodeMessage(() => 1)).toThrow(TypeError);
  });
});

describe('truncateCloseReason', () => {
  it('keeps reasons within 123 bytes without splitting a character', () => {
    expect(truncateCloseReason('bye')).toBe('bye');
    const long = 'é'.repeat(100); // 200 bytes
    const cut = truncateCloseReason(long);
    expect(Buffer.byteLength(cut)).toBe(122);
    expect(cut).toBe('é'.repeat(61));
  });
});
