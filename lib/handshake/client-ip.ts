import type { IncomingMessage } from 'node:http';

/**
 * The client's IP address: the TCP peer, or with `trustProxy` the address a trusted proxy put
 * in `X-Forwarded-For` (`true`: its left-most entry; `n`: `n` hops from the right, as Express's
 * `trust proxy` counts). IPv4-mapped IPv6 addresses are shown as IPv4, so one client is one key.
 */
export function clientIp(request: IncomingMessage, trustProxy: boolean | number = false): string {
  const peer = normalize(request.socket.remoteAddress ?? '');
  if (!trustProxy) return peer;
  const header = request.headers['x-forwarded-for'];
  const forwarded = (Array.isArray(header) ? header.join(',') : (header ?? ''))
    .split(',')
    .map((entry) => entry.trim())
    .filter(Boolean);
  if (forwarded.length === 0) return peer;
  if (trustProxy === true) return normalize(forwarded[0]);
  const chain = [...forwarded, peer];
  return normalize(chain[Math.max(0, chain.length - 1 - trustProxy)]);
}

function normalize(address: string): string {
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}
