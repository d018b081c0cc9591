import type { IncomingMessage } from 'node:http';

/** Why an upgrade request is malformed: the HTTP answer it gets. */
export interface UpgradeProblem {
  status: number;
  message: string;
  headers?: Record<string, string>;
}

const KEY = /^[+/0-9A-Za-z]{22}==$/;

/**
 * The RFC 6455 §4.2.1 checks, done before any guard runs, so that garbage costs no database
 * lookup. `ws` repeats them in `handleUpgrade`; these only answer earlier, and a wrong version
 * gets 426 with the supported version, as §4.4 asks.
 */
export function validateUpgrade(request: IncomingMessage): UpgradeProblem | undefined {
  if (request.method !== 'GET') {
    return { status: 405, message: 'WebSocket upgrades must use GET', headers: { Allow: 'GET' } };
  }
  if (request.headers.upgrade?.toLowerCase() !== 'websocket') {
    return { status: 400, message: 'Invalid Upgrade header' };
  }
  const key = request.headers['sec-websocket-key'];
  if (!key || !KEY.test(key)) {
    return { status: 400, message: 'Missing or invalid Sec-WebSocket-Key header' };
  }
  const version = request.headers['sec-websocket-version'];
  if (version !== '13' && version !== '8') {
    return {
      status: 426,
      message: 'Unsupported Sec-WebSocket-Version',
      headers: { 'Sec-WebSocket-Version': '13, 8' },
    };
  }
  return undefined;
}
