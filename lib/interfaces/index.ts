export * from './heartbeat-options.interface.js';
export * from './ws-route-options.interface.js';
export * from './ws-routes-module-options.interface.js';
export * from './handshake-options.interface.js';
export * from './metrics-options.interface.js';
