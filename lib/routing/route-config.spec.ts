import { WS_ROUTES_DEFAULTS } from '../ws-routes.constants.js';
import { resolveGatewayConfig, resolveRouteConfig } from './route-config.js';

describe('resolveRouteConfig', () => {
  it('takes the route option, else the module option, else the default', () => {
    const config = resolveRouteConfig(
      '/a',
      { maxPayload: 10, heartbeat: { timeout: 5 }, slowConsumer: 'drop' },
      { maxPayload: 20, lowWatermark: 2, heartbeat: { interval: 50 }, shutdownTimeout: 7 },
    );
    expect(config).toEqual({
      pattern: '/a',
      maxPayload: 10,
      perMessageDeflate: false,
      heartbeat: { interval: 50, timeout: 5 },
      rateLimit: { ...WS_ROUTES_DEFAULTS.rateLimit },
      outbound: {
        maxBufferedAmount: WS_ROUTES_DEFAULTS.maxBufferedAmount,
        lowWatermark: 2,
        slowConsumer: 'drop',
      },
      inbound: { maxMessages: WS_ROUTES_DEFAULTS.maxQueuedMessages, maxBytes: 40 },
      keepUpgradeRequest: false,
      maxConnections: Infinity,
      requireProtocol: false,
      refuse: 'http',
      closeTimeout: 7,
    });
  });

  it("answers refusals with HTTP unless the route or the module says 'close'", () => {
    expect(resolveRouteConfig('/a', {}, { refuse: 'close' }).refuse).toBe('close');
    expect(resolveRouteConfig('/a', { refuse: 'close' }, {}).refuse).toBe('close');
    expect(resolveRouteConfig('/a', { refuse: 'http' }, { refuse: 'close' }).refuse).toBe('http');
  });

  it('turns the heartbeat and the rate limit off with false, at either level', () => {
    expect(resolveRouteConfig('/a', {}, { heartbeat: false, rateLimit: false })).toMatchObject({
      heartbeat: undefined,
      rateLimit: undefined,
    });
    expect(resolveRouteConfig('/a', { heartbeat: false }, {}).heartbeat).toBeUndefined();
    expect(resolveRouteConfig('/a', { heartbeat: {} }, { heartbeat: false }).heartbeat).toEqual(
      WS_ROUTES_DEFAULTS.heartbeat,
    );
  });

  it('accepts a heartbeat timeout equal to the interval', () => {
    expect(
      resolveRouteConfig('/a', { heartbeat: { interval: 300, timeout: 300 } }, {}).heartbeat,
    ).toEqual({ interval: 300, timeout: 300 });
  });

  it.each([
    [{ heartbeat: { interval: 300, timeout: 301 } }, 'heartbeat'],
    [{ heartbeat: { interval: 300, timeout: 0 } }, 'heartbeat'],
    [{ heartbeat: { interval: NaN, timeout: 10 } }, 'heartbeat'],
    [{ maxPayload: 0 }, 'maxPayload'],
    [{ maxPayload: -1 }, 'maxPayload'],
    [{ maxPayload: 1.5 }, 'maxPayload'],
    [{ maxBufferedAmount: 0 }, 'maxBufferedAmount'],
    [{ lowWatermark: -1 }, 'lowWatermark'],
    [{ maxBufferedAmount: 1000, lowWatermark: 1000 }, 'lowWatermark'],
    [{ maxQueuedBytes: 0 }, 'maxQueuedBytes'],
    [{ maxConnections: 0 }, 'maxConnections'],
    [{ rateLimit: { messages: 0, per: 1000 } }, 'rateLimit'],
    [{ rateLimit: { messages: 10, per: 1000, action: 'ignore' } }, 'rateLimit'],
    [{ slowConsumer: 'wait' }, 'slowConsumer'],
    [{ refuse: 'drop' }, 'refuse'],
    [{ requireProtocol: true }, 'requireProtocol'],
    [{ perMessageDeflate: 'yes' }, 'perMessageDeflate'],
  ])('refuses %j, naming the route and %s', (route, option) => {
    expect(() => resolveRouteConfig('/rooms/:room', route as never, {})).toThrow(
      new RegExp(`^@WsRoute\\('/rooms/:room'\\): option ${option} `),
    );
  });

  it('refuses bad module options on every route, naming the route', () => {
    expect(() => resolveRouteConfig('/a', {}, { maxQueuedBytes: 0 })).toThrow(
      /@WsRoute\('\/a'\): option maxQueuedBytes must be an integer >= 1, got 0/,
    );
    expect(() => resolveRouteConfig('/a', {}, { shutdownTimeout: -5 })).toThrow(/shutdownTimeout/);
  });
});

describe('resolveGatewayConfig', () => {
  it('has per-IP limits off and the handshake timeout on by default', () => {
    expect(resolveGatewayConfig({})).toEqual({
      maxConnections: WS_ROUTES_DEFAULTS.maxConnections,
      maxConnectionsPerIp: Infinity,
      trustProxy: false,
      handshakeTimeout: WS_ROUTES_DEFAULTS.handshakeTimeout,
      shutdownTimeout: WS_ROUTES_DEFAULTS.shutdownTimeout,
      drainDelay: 0,
    });
    expect(resolveGatewayConfig({ handshakeTimeout: 0 }).handshakeTimeout).toBe(0);
  });

  it.each([
    [{ maxConnections: 0 }, 'maxConnections'],
    [{ maxConnectionsPerIp: -1 }, 'maxConnectionsPerIp'],
    [{ handshakeTimeout: -1 }, 'handshakeTimeout'],
    [{ drainDelay: -1 }, 'drainDelay'],
    [{ drainDelay: Infinity }, 'drainDelay'],
    [{ trustProxy: 'yes' }, 'trustProxy'],
  ])('refuses %j', (options, option) => {
    expect(() => resolveGatewayConfig(options as never)).toThrow(
      new RegExp(`^WsRoutesModule: option ${option} `),
    );
  });
});
