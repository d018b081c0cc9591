// nestjs-ws-routes/testing: a test client for WebSocket routes, for jest, vitest and node:test
// alike (no runner globals here: failures are thrown errors). Only test code imports it.
export { wsTestClient, WsTestClient } from './ws-test-client.js';
export type { WsExpectOptions, WsTestClientOptions } from './ws-test-client.js';
export { expectRefused, type WsExpectRefusedOptions } from './expect-refused.js';
export type { WsRefusal } from './refused-upgrade.js';
export { closeWsTestClients, openWsTestClients } from './open-sockets.js';
export { partial, PartialMatch, type WsMatcher } from './ws-matchers.js';
export type { WsCloseEvent, WsTestFrame } from './ws-test-frame.js';
export { WsExpectationError } from './ws-expectation-error.js';
export type { WsTestTarget } from './test-target.js';
export { WS_TEST_DEFAULTS } from './testing.constants.js';
