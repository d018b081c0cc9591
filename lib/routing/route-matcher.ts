import { match, type MatchFunction } from 'path-to-regexp';

/** A matched route and its decoded path parameters. */
export interface RouteMatch<T> {
  route: T;
  params: Record<string, string>;
}

const DYNAMIC = /[:*{}()?+!\\]/;

/**
 * Finds the route of an upgrade path. Static patterns are one map lookup; patterns with
 * parameters are compiled once at start-up by path-to-regexp and tried in declaration order.
 * Both kinds match case-sensitively (`/DEMAND` is not `/demand`, as a static map lookup and
 * Nest's WsAdapter have it), and a trailing slash is accepted either way, as Nest's HTTP
 * router does.
 */
export class RouteMatcher<T extends { pattern: string }> {
  private readonly statics = new Map<string, T>();
  private readonly dynamics: {
    route: T;
    match: MatchFunction<Partial<Record<string, string | string[]>>>;
  }[] = [];
  private readonly patterns = new Set<string>();

  add(route: T): void {
    if (this.patterns.has(route.pattern)) {
      throw new Error(`Two @WsRoute classes use the same path "${route.pattern}"`);
    }
    this.patterns.add(route.pattern);
    if (DYNAMIC.test(route.pattern)) {
      this.dynamics.push({
        route,
        match: match(route.pattern, { decode: decodeURIComponent, sensitive: true }),
      });
    } else {
      this.statics.set(stripTrailingSlash(route.pattern), route);
    }
  }

  get size(): number {
    return this.patterns.size;
  }

  /** Throws `URIError` for a malformed percent-encoding in a parameter. */
  match(pathname: string): RouteMatch<T> | undefined {
    const route = this.statics.get(stripTrailingSlash(pathname));
    if (route) return { route, params: {} };
    for (const candidate of this.dynamics) {
      const result = candidate.match(pathname);
      if (result) return { route: candidate.route, params: flattenParams(result.params) };
    }
    return undefined;
  }
}

function stripTrailingSlash(path: string): string {
  return path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
}

/** Wildcard parameters come back as segment arrays; a route parameter is easier as one string. */
function flattenParams(params: Partial<Record<string, string | string[]>>): Record<string, string> {
  const flat: Record<string, string> = {};
  for (const key of Object.keys(params)) {
    const value = params[key];
    if (value !== undefined) flat[key] = Array.isArray(value) ? value.join('/') : value;
  }
  return flat;
}
