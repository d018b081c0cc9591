import {
  ForbiddenException,
  type CanActivate,
  type ExecutionContext,
  type Type,
} from '@nestjs/common';
import { ExecutionContextHost } from '@nestjs/core/helpers/execution-context-host.js';
import { validateHeaderName, validateHeaderValue, type IncomingMessage } from 'node:http';
import { isObservable, lastValueFrom } from 'rxjs';

/**
 * The response side of a handshake, as a guard sees it through
 * `context.switchToHttp().getResponse()`: headers set here go out with the refusal (a 401's
 * `WWW-Authenticate`, a 429's `Retry-After`) or, if the upgrade is accepted, with the 101
 * (a `Set-Cookie`). `header()` is the Express/Fastify spelling of `setHeader()`.
 */
export class HandshakeResponse {
  readonly headers: Record<string, string | number> = {};

  /**
   * Sets a response header. Name and value are checked as `node:http` checks them: a value
   * with `\r\n` (a header injection) or an invalid name throws a `TypeError`, and a guard that
   * lets it escape gets the handshake a logged 500.
   */
  setHeader(name: string, value: string | number): this {
    validateHeaderName(name);
    validateHeaderValue(name, String(value));
    this.headers[name] = value;
    return this;
  }

  header(name: string, value: string | number): this {
    return this.setHeader(name, value);
  }

  getHeader(name: string): string | number | undefined {
    return this.headers[name];
  }
}

/**
 * The upgrade request as handshake guards see it: Express-style `params`, `query`, `cookies`
 * and `ip` are attached, and whatever a guard puts in `user` becomes `conn.data.user`.
 */
export interface HandshakeRequest extends IncomingMessage {
  params: Record<string, string>;
  query: Record<string, string | string[]>;
  cookies: Record<string, string | undefined>;
  ip: string;
  user?: unknown;
}

/** Whether a guard is running at the upgrade (rather than before a message handler). */
export function isWsHandshake(context: ExecutionContext): boolean {
  return context.getArgByIndex(1) instanceof HandshakeResponse;
}

/** Runs a list of guard instances in order; the first that says no ends the handshake. */
export function createGuardChain(
  guards: CanActivate[],
  routeClass: Type,
  handler: Function,
): (request: HandshakeRequest, response: HandshakeResponse) => Promise<void> {
  return async (request, response) => {
    if (guards.length === 0) return;
    const context = new ExecutionContextHost([request, response], routeClass, handler);
    context.setType('ws');
    for (const guard of guards) {
      let allowed = guard.canActivate(context);
      if (isObservable(allowed)) allowed = lastValueFrom(allowed);
      if (!(await allowed)) throw new ForbiddenException('Forbidden resource');
    }
  };
}
