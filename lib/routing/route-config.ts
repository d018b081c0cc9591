import type { PerMessageDeflateOptions } from 'ws';
import { WS_ROUTES_DEFAULTS } from '../ws-routes.constants.js';
import type { OutboundPolicy } from '../connection/outbound.js';
import type { RateLimitOptions, RefusalMode } from '../interfaces/handshake-options.interface.js';
import type { HeartbeatOptions } from '../interfaces/heartbeat-options.interface.js';
import type { WsRouteOptions } from '../interfaces/ws-route-options.interface.js';
import type { WsRoutesModuleOptions } from '../interfaces/ws-routes-module-options.interface.js';
import { RECOVERY_DEFAULTS } from '../recovery/recovery-options.js';

/**
 * A route's settings as it runs: every option resolved (route option, else module option,
 * else `WS_ROUTES_DEFAULTS`) and checked once, at start-up.
 */
export interface RouteConfig {
  pattern: string;
  maxPayload: number;
  perMessageDeflate: boolean | PerMessageDeflateOptions;
  /** `undefined`: no heartbeat on this route. */
  heartbeat: HeartbeatOptions | undefined;
  /** `undefined`: no rate limit on this route. */
  rateLimit: RateLimitOptions | undefined;
  outbound: OutboundPolicy;
  /** Received messages waiting for a busy handler, by count and by bytes, before reading pauses. */
  inbound: { maxMessages: number; maxBytes: number };
  keepUpgradeRequest: boolean;
  /** Open connections on this route (`Infinity`: only the process limit applies). */
  maxConnections: number;
  requireProtocol: boolean;
  /** How a refused upgrade of this route is answered: an HTTP status, or a 101 and a close. */
  refuse: RefusalMode;
  /** How long `@OnClose` waits for the messages accepted before the close: `shutdownTimeout`. */
  closeTimeout: number;
  /** `undefined`: broadcasts are not kept for replay on this route. */
  recovery: { window: number; maxMessages: number } | undefined;
}

/** The module-wide settings of the upgrade pipeline, resolved and checked the same way. */
export interface GatewayConfig {
  maxConnections: number;
  maxConnectionsPerIp: number;
  trustProxy: boolean | number;
  /** `0`: neither the slowloris watch nor the guard timer runs. */
  handshakeTimeout: number;
  shutdownTimeout: number;
  /** How long a shutdown serves on, reporting down, before it refuses and closes. */
  drainDelay: number;
}

/**
 * Resolves every option of one route and validates it, so that a bad value fails the
 * application's start with an Error naming the route and the option, instead of failing (or
 * silently doing nothing) on the first connection.
 */
export function resolveRouteConfig(
  pattern: string,
  route: WsRouteOptions,
  module: WsRoutesModuleOptions,
): RouteConfig {
  const check = new OptionCheck(`@WsRoute('${pattern}')`);
  const maxPayload = check.size('maxPayload', route.maxPayload ?? module.maxPayload, 1);
  const maxBufferedAmount = check.size(
    'maxBufferedAmount',
    route.maxBufferedAmount ?? module.maxBufferedAmount,
    1,
  );
  const lowWatermark = check.size('lowWatermark', route.lowWatermark ?? module.lowWatermark, 0);
  if (lowWatermark >= maxBufferedAmount) {
    check.fail(
      'lowWatermark',
      `must be below maxBufferedAmount (${maxBufferedAmount})`,
      lowWatermark,
    );
  }
  const maxQueuedBytes = check.size(
    'maxQueuedBytes',
    route.maxQueuedBytes ?? module.maxQueuedBytes,
    1,
    WS_ROUTES_DEFAULTS.maxQueuedPayloads * maxPayload,
  );
  const closeTimeout = check.size('shutdownTimeout', module.shutdownTimeout, 0);
  const maxConnections = check.size('maxConnections', route.maxConnections, 1, Infinity);
  if (route.selectProtocol !== undefined && typeof route.selectProtocol !== 'function') {
    check.fail('selectProtocol', 'must be a function', route.selectProtocol);
  }
  const requireProtocol = check.flag('requireProtocol', route.requireProtocol, false);
  if (requireProtocol && !route.selectProtocol && !route.subprotocols?.length) {
    check.fail(
      'requireProtocol',
      'needs subprotocols or selectProtocol (otherwise every upgrade is refused)',
      requireProtocol,
    );
  }
  return {
    pattern,
    maxPayload,
    perMessageDeflate: check.deflate(route.perMessageDeflate ?? module.perMessageDeflate),
    heartbeat: check.heartbeat(route.heartbeat, module.heartbeat),
    rateLimit: check.rateLimit(route.rateLimit ?? module.rateLimit),
    outbound: {
      maxBufferedAmount,
      lowWatermark,
      slowConsumer: check.oneOf(
        'slowConsumer',
        route.slowConsumer ?? module.slowConsumer,
        ['close', 'drop'] as const,
        WS_ROUTES_DEFAULTS.slowConsumer,
      ),
    },
    inbound: { maxMessages: WS_ROUTES_DEFAULTS.maxQueuedMessages, maxBytes: maxQueuedBytes },
    keepUpgradeRequest: check.flag(
      'keepUpgradeRequest',
      route.keepUpgradeRequest ?? module.keepUpgradeRequest,
      WS_ROUTES_DEFAULTS.keepUpgradeRequest,
    ),
    maxConnections,
    requireProtocol,
    refuse: check.oneOf(
      'refuse',
      route.refuse ?? module.refuse,
      ['http', 'close'] as const,
      WS_ROUTES_DEFAULTS.refuse,
    ),
    closeTimeout,
    recovery: check.recovery(route.recovery),
  };
}

/** Resolves and validates the module-wide options the upgrade pipeline and the shutdown use. */
export function resolveGatewayConfig(module: WsRoutesModuleOptions): GatewayConfig {
  const check = new OptionCheck('WsRoutesModule');
  const { trustProxy = false } = module;
  if (
    typeof trustProxy !== 'boolean' &&
    !(typeof trustProxy === 'number' && Number.isInteger(trustProxy) && trustProxy >= 0)
  ) {
    check.fail('trustProxy', 'must be a boolean or a number of proxy hops', trustProxy);
  }
  const drainDelay = check.size('drainDelay', module.drainDelay, 0);
  // A timer longer than this fires at once (Node clamps it to 1 ms).
  if (drainDelay > MAX_TIMER)
    check.fail('drainDelay', `must be at most ${MAX_TIMER} ms`, drainDelay);
  return {
    maxConnections: check.size('maxConnections', module.maxConnections, 1),
    maxConnectionsPerIp: check.size('maxConnectionsPerIp', module.maxConnectionsPerIp, 1),
    trustProxy,
    handshakeTimeout: check.size('handshakeTimeout', module.handshakeTimeout, 0),
    shutdownTimeout: check.size('shutdownTimeout', module.shutdownTimeout, 0),
    drainDelay,
  };
}

/** The longest delay `setTimeout` keeps (2^31 - 1 ms, about 24.8 days). */
const MAX_TIMER = 2 ** 31 - 1;

/** Checks of one route's (or the module's) options; every failure names `owner` and the option. */
class OptionCheck {
  constructor(private readonly owner: string) {}

  fail(option: string, problem: string, value: unknown): never {
    throw new Error(`${this.owner}: option ${option} ${problem}, got ${show(value)}`);
  }

  /** A count of bytes, connections or milliseconds: an integer (or `Infinity`) >= `min`. */
  size(
    option: string,
    value: number | undefined,
    min: number,
    fallback = (WS_ROUTES_DEFAULTS as Record<string, unknown>)[option] as number,
  ): number {
    const resolved = value ?? fallback;
    if (
      typeof resolved !== 'number' ||
      !(Number.isInteger(resolved) || resolved === Infinity) ||
      resolved < min
    ) {
      this.fail(
        option,
        min > 0 ? `must be an integer >= ${min}` : 'must be an integer >= 0',
        value,
      );
    }
    return resolved;
  }

  recovery(value: WsRouteOptions['recovery']): { window: number; maxMessages: number } | undefined {
    if (value === undefined || value === false) return undefined;
    if (value !== true && (typeof value !== 'object' || value === null))
      this.fail('recovery', 'must be true, false or { window, maxMessages }', value);
    const options = value === true ? {} : value;
    const window = this.size('recovery.window', options.window, 1, RECOVERY_DEFAULTS.window);
    const maxMessages = this.size(
      'recovery.maxMessages',
      options.maxMessages,
      1,
      RECOVERY_DEFAULTS.maxMessages,
    );
    if (maxMessages === Infinity) this.fail('recovery.maxMessages', 'must be finite', maxMessages);
    return { window, maxMessages };
  }

  flag(option: string, value: boolean | undefined, fallback: boolean): boolean {
    const resolved = value ?? fallback;
    if (typeof resolved !== 'boolean') this.fail(option, 'must be true or false', value);
    return resolved;
  }

  oneOf<T extends string>(
    option: string,
    value: T | undefined,
    allowed: readonly T[],
    fallback: T,
  ): T {
    const resolved = value ?? fallback;
    if (!allowed.includes(resolved)) {
      this.fail(option, `must be ${allowed.map((a) => `'${a}'`).join(' or ')}`, value);
    }
    return resolved;
  }

  deflate(
    value: boolean | PerMessageDeflateOptions | undefined,
  ): boolean | PerMessageDeflateOptions {
    const resolved = value ?? WS_ROUTES_DEFAULTS.perMessageDeflate;
    if (typeof resolved !== 'boolean' && (typeof resolved !== 'object' || resolved === null)) {
      this.fail('perMessageDeflate', 'must be a boolean or ws PerMessageDeflateOptions', value);
    }
    return resolved;
  }

  /** The route's heartbeat merged over the module's over the default; `false` turns it off. */
  heartbeat(
    routeLevel: Partial<HeartbeatOptions> | false | undefined,
    moduleLevel: Partial<HeartbeatOptions> | false | undefined,
  ): HeartbeatOptions | undefined {
    if (routeLevel === false || (routeLevel === undefined && moduleLevel === false)) {
      return undefined;
    }
    const { interval, timeout } = {
      ...WS_ROUTES_DEFAULTS.heartbeat,
      ...(moduleLevel || {}),
      ...(routeLevel || {}),
    };
    // timeout == interval is ws's own pattern: each ping judges the answer to the previous one.
    if (!(
      Number.isFinite(interval) &&
      Number.isFinite(timeout) &&
      timeout > 0 &&
      timeout <= interval
    )) {
      this.fail('heartbeat', 'needs 0 < timeout <= interval (ms)', { interval, timeout });
    }
    return { interval, timeout };
  }

  rateLimit(value: RateLimitOptions | false | undefined): RateLimitOptions | undefined {
    const resolved = value ?? WS_ROUTES_DEFAULTS.rateLimit;
    if (resolved === false) return undefined;
    const { messages, per, action = 'close' } = resolved;
    if (
      !(Number.isFinite(messages) && messages > 0 && Number.isFinite(per) && per > 0) ||
      (action !== 'close' && action !== 'drop')
    ) {
      this.fail(
        'rateLimit',
        "needs messages > 0, per > 0 (ms) and action 'close' or 'drop'",
        resolved,
      );
    }
    return { messages, per, action };
  }
}

function show(value: unknown): string {
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
