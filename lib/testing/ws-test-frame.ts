import { inspect } from 'node:util';
import { WS_TEST_DEFAULTS } from './testing.constants.js';

/** A message a test client received. */
export interface WsTestFrame {
  /** `true` for a binary frame. */
  readonly isBinary: boolean;
  /** The text of a text frame; the bytes of a binary frame. */
  readonly data: string | Buffer;
  /**
   * What the expectations compare and return: the parsed JSON of a text frame, its text if it
   * is not JSON, the bytes of a binary frame.
   */
  readonly value: unknown;
  /** Milliseconds from the open of the connection to the arrival of the frame. */
  readonly at: number;
}

/** How a connection ended, as the client saw it. */
export interface WsCloseEvent {
  /** The close code: the peer's, 1005 for a close frame without one, 1006 for a dropped connection. */
  readonly code: number;
  readonly reason: string;
}

export function toFrame(data: Buffer, isBinary: boolean, at: number): WsTestFrame {
  if (isBinary) return { isBinary, data, value: data, at };
  const text = data.toString();
  return { isBinary, data: text, value: parseJson(text), at };
}

/** The JSON value of `text`, or `text` itself when it is not JSON. */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** A frame as a failure quotes it: text as a JSON string, binary as its length and first bytes. */
export function describeFrame(frame: WsTestFrame): string {
  if (!frame.isBinary) return `text ${quote(frame.data as string)}`;
  const bytes = frame.data as Buffer;
  const shown = bytes
    .subarray(0, 32)
    .toString('hex')
    .replace(/(..)(?!$)/g, '$1 ');
  return `binary (${bytes.length} bytes) <${shown}${bytes.length > 32 ? ' …' : ''}>`;
}

export function describeClose(close: WsCloseEvent, error?: Error): string {
  const reason = close.reason ? ` ${quote(close.reason)}` : ' (no reason)';
  return `${close.code}${reason}${error ? ` after the error "${error.message}"` : ''}`;
}

export function quote(text: string): string {
  const json = JSON.stringify(text);
  const max = WS_TEST_DEFAULTS.quoteLength;
  return json.length > max ? `${json.slice(0, max)}…" (${text.length} characters)` : json;
}

/** A value as a failure shows it: one line, deep enough for a message's shape. */
export function show(value: unknown): string {
  const text = inspect(value, { depth: 6, breakLength: Infinity, maxStringLength: 200 });
  const max = WS_TEST_DEFAULTS.quoteLength;
  return text.length > max ? `${text.slice(0, max)}…` : text;
}
