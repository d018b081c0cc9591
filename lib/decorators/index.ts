export * from './ws-route.decorator.js';
export * from './ws-lifecycle.decorators.js';
export * from './ws-params.decorators.js';
