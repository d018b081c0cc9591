import type { IncomingMessage } from 'node:http';

/**
 * The upgrade's request target as Nest's `WsAdapter` reads it:
 * `new URL(request.url, 'ws://' + host + '/')`. Absolute-form targets (`ws://host/path`) give
 * their path, dot segments (`/a/../b`, also percent-encoded) are resolved, and the path stays
 * percent-encoded. `undefined` for a target (or `Host`) that is not a URL: the caller answers 400.
 */
export function requestUrl(request: IncomingMessage): URL | undefined {
  try {
    return new URL(request.url ?? '/', `ws://${request.headers.host}/`);
  } catch {
    return undefined;
  }
}

/** What a log line may say about the request target: its path, never the query (tokens). */
export function loggablePath(request: IncomingMessage): string {
  return requestUrl(request)?.pathname ?? '(malformed request target)';
}
