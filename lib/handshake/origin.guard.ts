import { ForbiddenException, type CanActivate, type ExecutionContext } from '@nestjs/common';
import type { IncomingMessage } from 'node:http';
import type { OriginPolicy } from '../interfaces/handshake-options.interface.js';

/** The answer to a refused cross-origin upgrade. */
export const ORIGIN_REFUSED_MESSAGE = 'Cross-origin WebSocket upgrade refused';

/**
 * Refuses browser upgrades from origins the policy does not allow, with 403. It runs first in
 * every route's handshake guards. A Tornado `check_origin` that returns `True` is
 * `origins: '*'` here, and it is not the default: a page on another site could otherwise open
 * a connection that carries the visitor's cookies (cross-site WebSocket hijacking).
 */
export class OriginGuard implements CanActivate {
  constructor(
    private readonly policy: OriginPolicy | undefined,
    private readonly trustProxy: boolean | number = false,
  ) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    const request = context.switchToHttp().getRequest<IncomingMessage>();
    const origin = request.headers.origin;
    if (origin === undefined || (await this.allows(origin, request))) return true;
    throw new ForbiddenException(ORIGIN_REFUSED_MESSAGE);
  }

  private async allows(origin: string, request: IncomingMessage): Promise<boolean> {
    const { policy } = this;
    if (policy === '*') return true;
    if (typeof policy === 'function') return policy(origin, request);
    if (policy) {
      return policy.some((allowed) =>
        typeof allowed === 'string' ? allowed === origin : allowed.test(origin),
      );
    }
    return isSameOrigin(origin, this.host(request));
  }

  private host(request: IncomingMessage): string | undefined {
    const forwarded = this.trustProxy ? request.headers['x-forwarded-host'] : undefined;
    const host = (Array.isArray(forwarded) ? forwarded[0] : forwarded)?.split(',')[0].trim();
    return host || request.headers.host;
  }
}

/**
 * Same origin as far as the server can tell: the `Origin`'s host and port equal the `Host`
 * header's. The scheme is not compared, since behind a TLS-terminating proxy the server cannot
 * see it. `Origin: null` (sandboxed frames, `file:` pages) never matches.
 */
export function isSameOrigin(origin: string, host: string | undefined): boolean {
  if (!host) return false;
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    return false;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return false;
  return stripDefaultPort(url.host) === stripDefaultPort(host.toLowerCase());
}

function stripDefaultPort(host: string): string {
  return host.replace(/:(80|443)$/, '');
}
