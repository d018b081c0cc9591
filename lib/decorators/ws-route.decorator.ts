import { WS_ROUTE_METADATA } from '../ws-routes.constants.js';
import type { WsRouteOptions } from '../interfaces/ws-route-options.interface.js';

/** What `@WsRoute` records on a class. */
export interface WsRouteMetadata {
  path: string;
  options: WsRouteOptions;
}

/**
 * Marks a provider class as a WebSocket endpoint at `path`, written in path-to-regexp syntax:
 * `/chat/:room`, optional parts `/feed{/:topic}`, wildcards `/files/*rest`. The class must also
 * be listed in a module's `providers`; it gets full constructor injection.
 *
 * @example
 * ```ts
 * @WsRoute('/rooms/:room', { maxPayload: 64 * 1024 })
 * export class ChatRoute { ... }
 * ```
 */
export function WsRoute(path: string, options: WsRouteOptions = {}): ClassDecorator {
  if (typeof path !== 'string' || !path.startsWith('/')) {
    throw new TypeError(
      `@WsRoute() needs a path that starts with "/", got ${JSON.stringify(path)}`,
    );
  }
  const metadata: WsRouteMetadata = { path, options };
  return (target) => {
    Reflect.defineMetadata(WS_ROUTE_METADATA, metadata, target);
  };
}
