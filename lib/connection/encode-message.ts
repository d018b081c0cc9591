/** A message ready for `ws`: the payload and whether it goes out as a binary frame. */
export interface EncodedMessage {
  payload: string | Buffer;
  binary: boolean;
}

/**
 * The one place where a value becomes a frame, shared by replies, `conn.send()` and broadcasts:
 * a string is text, bytes (Buffer, ArrayBuffer, any typed array or DataView) are binary,
 * anything else is JSON text. `binary` overrides the frame type (e.g. bytes sent as text).
 */
export function encodeMessage(message: unknown, binary?: boolean): EncodedMessage {
  if (typeof message === 'string') {
    return { payload: message, binary: binary ?? false };
  }
  if (Buffer.isBuffer(message)) {
    return { payload: message, binary: binary ?? true };
  }
  if (message instanceof ArrayBuffer) {
    return { payload: Buffer.from(message), binary: binary ?? true };
  }
  if (ArrayBuffer.isView(message)) {
    return {
      payload: Buffer.from(message.buffer, message.byteOffset, message.byteLength),
      binary: binary ?? true,
    };
  }
  const json = JSON.stringify(message);
  if (json === undefined) {
    throw new TypeError(`Cannot send a value of type ${typeof message} as a WebSocket message`);
  }
  return { payload: json, binary: binary ?? false };
}
