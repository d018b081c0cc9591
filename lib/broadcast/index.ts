export * from './broadcast.service.js';
export * from './broadcast-packet.interface.js';
export * from './broadcast-transport.interface.js';
export * from './memory-broadcast.transport.js';
