import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { WS_TEST_DEFAULTS } from './testing.constants.js';
import { parseJson, quote } from './ws-test-frame.js';

/** The HTTP answer to an upgrade that was refused. */
export interface WsRefusal {
  status: number;
  /** The status line's text (`Forbidden`). */
  statusText: string;
  headers: IncomingHttpHeaders;
  /** The body as text (the package answers JSON: `{"statusCode":403,"message":"…"}`). */
  text: string;
  /** The body parsed as JSON, or its text if it is not JSON. */
  body: unknown;
}

/** Reads a refusal's body (at most `maxRefusalBody` bytes are kept). */
export function readRefusal(response: IncomingMessage): Promise<WsRefusal> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      const text = Buffer.concat(chunks).toString();
      resolve({
        status: response.statusCode ?? 0,
        statusText: response.statusMessage ?? '',
        headers: response.headers,
        text,
        body: parseJson(text),
      });
    };
    response.on('data', (chunk: Buffer) => {
      if (size < WS_TEST_DEFAULTS.maxRefusalBody) chunks.push(chunk);
      size += chunk.length;
    });
    response.once('end', done);
    // A server that drops the connection mid-body still gave its status.
    response.once('error', done);
    response.once('aborted', done);
  });
}

export function describeRefusal(refusal: WsRefusal): string {
  const body = refusal.text ? ` ${quote(refusal.text)}` : ' (empty body)';
  return `${refusal.status} ${refusal.statusText}${body}`;
}
