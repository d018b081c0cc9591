import { WebSocket } from 'ws';

/**
 * The `WebSocket` class our `ws` servers create (`new WebSocketServer({ WebSocket })`), so that
 * every close, send, ping and terminate, whoever calls it, goes through this connection's
 * write batch first.
 */
export class RoutesWebSocket extends WebSocket {}
