import { createHash, randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';

/** The sample key of RFC 6455 §1.3; any 16 bytes in base64 will do. */
export const WS_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';

export const Opcode = {
  Continuation: 0x0,
  Text: 0x1,
  Binary: 0x2,
  Close: 0x8,
  Ping: 0x9,
  Pong: 0xa,
} as const;

/** The `Sec-WebSocket-Accept` a server must answer to `key` (RFC 6455 §4.2.2). */
export function acceptKey(key: string): string {
  return createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
}

/**
 * A raw TCP client: writes whatever bytes it is given and records every byte the server sends
 * and when the server closed the connection. For input a `ws` client refuses to produce.
 */
export class RawSocket {
  /** When the TCP connection was established. */
  readonly openedAt = Date.now();
  /** When the socket closed, if it has. */
  closedAt: number | undefined;
  /** Where the first WebSocket frame starts in `received`, once a 101 arrived. */
  frameStart: number | undefined;
  readonly errors: Error[] = [];
  private readonly chunks: Buffer[] = [];
  private readonly closedPromise: Promise<void>;

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => this.chunks.push(chunk));
    // Writes racing the server's close (EPIPE, ECONNRESET) are expected here.
    socket.on('error', (error) => this.errors.push(error));
    this.closedPromise = new Promise((resolve) =>
      socket.once('close', () => {
        this.closedAt = Date.now();
        resolve();
      }),
    );
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawSocket> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, host);
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawSocket(socket));
      });
    });
  }

  /** Every byte received so far. */
  get received(): Buffer {
    return Buffer.concat(this.chunks);
  }

  get closed(): boolean {
    return this.closedAt !== undefined;
  }

  /** Writes unless the socket can no longer be written to; `false` then. */
  write(data: string | Buffer): boolean {
    if (!this.socket.writable) return false;
    this.socket.write(data);
    return true;
  }

  /** Polls until `condition(received)` holds; rejects after `timeout` ms, quoting what came. */
  async waitFor(
    condition: (received: Buffer) => boolean,
    timeout = 2000,
    what = 'the expected bytes',
  ): Promise<void> {
    const deadline = Date.now() + timeout;
    while (!condition(this.received)) {
      if (Date.now() > deadline) {
        throw new Error(`no ${what} within ${timeout} ms; received ${quote(this.received)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** Waits for the server to close the socket; resolves with ms from connect to close. */
  async waitClosed(timeout = 2000): Promise<number> {
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<false>((resolve) => (timer = setTimeout(resolve, timeout, false)));
    const closed = await Promise.race([this.closedPromise.then(() => true as const), expired]);
    clearTimeout(timer);
    if (!closed) {
      throw new Error(`socket still open after ${timeout} ms; received ${quote(this.received)}`);
    }
    return this.closedAt! - this.openedAt;
  }

  /** The server's WebSocket frames received after the 101 (complete ones only). */
  frames(): FrameSummary[] {
    if (this.frameStart === undefined) throw new Error('no WebSocket upgrade on this socket');
    return parseFrames(this.received.subarray(this.frameStart)).frames.map(summarizeFrame);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Bytes as a JSON string, binary shown as `\u00xx`, cut at 300 characters. */
function quote(data: Buffer): string {
  const text = JSON.stringify(data.toString('latin1'));
  return text.length > 300 ? `${text.slice(0, 300)}…` : text;
}

/**
 * An HTTP/1.1 upgrade request. `headers` are added to (or replace, by exact name) the usual
 * ones; a header given as `undefined` is left out.
 */
export function upgradeRequest(
  path: string,
  options: { method?: string; headers?: Record<string, string | undefined> } = {},
): string {
  const headers: Record<string, string | undefined> = {
    Host: '127.0.0.1',
    Upgrade: 'websocket',
    Connection: 'Upgrade',
    'Sec-WebSocket-Key': WS_KEY,
    'Sec-WebSocket-Version': '13',
    ...options.headers,
  };
  const lines = Object.entries(headers)
    .filter(([, value]) => value !== undefined)
    .map(([name, value]) => `${name}: ${value}\r\n`);
  return `${options.method ?? 'GET'} ${path} HTTP/1.1\r\n${lines.join('')}\r\n`;
}

/** Connects, upgrades `path` and checks the 101 and its `Sec-WebSocket-Accept`. */
export async function openRawWebSocket(port: number, path: string): Promise<RawSocket> {
  const raw = await RawSocket.connect(port);
  raw.write(upgradeRequest(path));
  try {
    await raw.waitFor((data) => data.includes('\r\n\r\n'), 2000, 'upgrade response');
  } catch (error) {
    raw.destroy();
    throw error;
  }
  const response = parseHttpResponse(raw.received)!;
  if (response.status !== 101 || response.headers['sec-websocket-accept'] !== acceptKey(WS_KEY)) {
    raw.destroy();
    throw new Error(`upgrade of ${path} refused: ${JSON.stringify(response.head)}`);
  }
  raw.frameStart = response.headLength;
  return raw;
}

export interface RawHttpResponse {
  /** The status line and header lines, without the blank line. */
  head: string;
  statusLine: string;
  status: number;
  /** Lower-case names; repeated headers joined with `, `. */
  headers: Record<string, string>;
  headLength: number;
  body: Buffer;
  /** A `Content-Length` was given and that many body bytes arrived. */
  complete: boolean;
}

/** Parses an HTTP response head; `undefined` until the blank line after the headers arrived. */
export function parseHttpResponse(data: Buffer): RawHttpResponse | undefined {
  const end = data.indexOf('\r\n\r\n');
  if (end === -1) return undefined;
  const head = data.subarray(0, end).toString('latin1');
  const [statusLine, ...lines] = head.split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  const body = data.subarray(end + 4);
  const length = headers['content-length'];
  return {
    head,
    statusLine,
    status: Number(statusLine.split(' ')[1]),
    headers,
    headLength: end + 4,
    body,
    complete: length !== undefined && body.length >= Number(length),
  };
}

/** A client frame built by hand; masked with a random key unless `mask: false`. */
export function clientFrame(
  opcode: number,
  payload: Buffer | string = Buffer.alloc(0),
  { fin = true, mask = true }: { fin?: boolean; mask?: boolean } = {},
): Buffer {
  const data = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const maskBit = mask ? 0x80 : 0;
  let header: Buffer;
  if (data.length < 126) {
    header = Buffer.from([(fin ? 0x80 : 0) | opcode, maskBit | data.length]);
  } else if (data.length < 0x10000) {
    header = Buffer.alloc(4);
    header.writeUInt16BE(data.length, 2);
    header[1] = maskBit | 126;
  } else {
    header = Buffer.alloc(10);
    header.writeBigUInt64BE(BigInt(data.length), 2);
    header[1] = maskBit | 127;
  }
  header[0] = (fin ? 0x80 : 0) | opcode;
  if (!mask) return Buffer.concat([header, data]);
  const key = randomBytes(4);
  const masked = Buffer.alloc(data.length);
  for (let i = 0; i < data.length; i++) masked[i] = data[i] ^ key[i & 3];
  return Buffer.concat([header, key, masked]);
}

/** A masked close frame with a status code (any number, valid or not) and a reason. */
export function clientCloseFrame(code: number, reason = ''): Buffer {
  const payload = Buffer.alloc(2 + Buffer.byteLength(reason));
  payload.writeUInt16BE(code, 0);
  payload.write(reason, 2);
  return clientFrame(Opcode.Close, payload);
}

export interface RawFrame {
  fin: boolean;
  opcode: number;
  masked: boolean;
  payload: Buffer;
}

/** Splits bytes into frames; `rest` is an incomplete frame at the end, if any. */
export function parseFrames(data: Buffer): { frames: RawFrame[]; rest: Buffer } {
  const frames: RawFrame[] = [];
  let offset = 0;
  while (offset + 2 <= data.length) {
    const first = data[offset];
    const second = data[offset + 1];
    let at = offset + 2;
    let length = second & 0x7f;
    if (length === 126) {
      if (at + 2 > data.length) break;
      length = data.readUInt16BE(at);
      at += 2;
    } else if (length === 127) {
      if (at + 8 > data.length) break;
      length = Number(data.readBigUInt64BE(at));
      at += 8;
    }
    const masked = (second & 0x80) !== 0;
    let key: Buffer | undefined;
    if (masked) {
      if (at + 4 > data.length) break;
      key = data.subarray(at, at + 4);
      at += 4;
    }
    if (at + length > data.length) break;
    const payload = Buffer.from(data.subarray(at, at + length));
    if (key) for (let i = 0; i < payload.length; i++) payload[i] ^= key[i & 3];
    frames.push({ fin: (first & 0x80) !== 0, opcode: first & 0x0f, masked, payload });
    offset = at + length;
  }
  return { frames, rest: data.subarray(offset) };
}

/** A frame as a test asserts it: close code and reason, text, or other payload as hex. */
export type FrameSummary = { fin: boolean; opcode: number; masked: boolean } & (
  { code: number | undefined; reason: string } | { text: string } | { hex: string }
);

export function summarizeFrame({ fin, opcode, masked, payload }: RawFrame): FrameSummary {
  if (opcode === Opcode.Close) {
    return {
      fin,
      opcode,
      masked,
      code: payload.length >= 2 ? payload.readUInt16BE(0) : undefined,
      reason: payload.subarray(2).toString(),
    };
  }
  if (opcode === Opcode.Text) return { fin, opcode, masked, text: payload.toString() };
  return { fin, opcode, masked, hex: payload.toString('hex') };
}

/** Deterministic pseudo-random bytes (xorshift32), so a failure can be replayed. */
export function pseudoRandomBytes(length: number, seed = 0x9e3779b9): Buffer {
  const bytes = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    bytes[i] = x & 0xff;
  }
  return bytes;
}
