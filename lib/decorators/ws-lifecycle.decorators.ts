import { WS_ROUTE_HANDLER_METADATA } from '../ws-routes.constants.js';

/** Which moment of a connection's life a handler answers. */
export type WsHandlerKind = 'open' | 'message' | 'close' | 'error' | 'ping' | 'pong' | 'drain';

/** What the lifecycle decorators record on a method. */
export interface WsHandlerMetadata {
  kind: WsHandlerKind;
  /** For `@OnMessage('event')`: the event name. */
  event?: string;
}

function handlerDecorator(metadata: WsHandlerMetadata): MethodDecorator {
  return (_target, _key, descriptor) => {
    const method = descriptor.value as object;
    const existing: WsHandlerMetadata[] =
      Reflect.getMetadata(WS_ROUTE_HANDLER_METADATA, method) ?? [];
    Reflect.defineMetadata(WS_ROUTE_HANDLER_METADATA, [...existing, metadata], method);
    return descriptor;
  };
}

/**
 * Runs once the handshake succeeded and the connection is registered. May be async: messages
 * that arrive before it settles are handled after it, in order. A throw closes the connection
 * with 1011 (or 1008 with the message for a `WsException`).
 *
 * Arguments without parameter decorators: `(conn: WsConnection, request: IncomingMessage)`.
 */
export const OnOpen = (): MethodDecorator => handlerDecorator({ kind: 'open' });

/**
 * `@OnMessage()` receives every message that no `@OnMessage('event')` handler of the route
 * claimed: a `string` for a text frame, a `Buffer` for a binary frame.
 *
 * `@OnMessage('chat')` receives the `data` of JSON text messages `{"event":"chat","data":…}`.
 *
 * The return value is the reply to the sender: `undefined` sends nothing, a string a text
 * frame, a Buffer/ArrayBuffer/typed array a binary frame, anything else JSON text; a Promise
 * is awaited and an Observable sends each value until the connection closes.
 *
 * Arguments without parameter decorators: `(conn: WsConnection, body)`.
 */
export const OnMessage = (event?: string): MethodDecorator =>
  handlerDecorator(event === undefined ? { kind: 'message' } : { kind: 'message', event });

/**
 * Runs once after the connection closed, for any reason (client close, `conn.close()`,
 * heartbeat timeout, shutdown). `conn.closeCode` and `conn.closeReason` tell why.
 *
 * Arguments without parameter decorators: `(conn: WsConnection, { code, reason })`.
 */
export const OnClose = (): MethodDecorator => handlerDecorator({ kind: 'close' });

/**
 * Runs for socket errors (protocol violations such as invalid UTF-8 or an oversized frame,
 * which then close the connection) and for unexpected handler errors that no exception
 * filter handled.
 *
 * Arguments without parameter decorators: `(conn: WsConnection, error: Error)`.
 */
export const OnError = (): MethodDecorator => handlerDecorator({ kind: 'error' });

/**
 * Runs when the client sends a ping (the pong reply is automatic).
 * Arguments without parameter decorators: `(conn: WsConnection, payload: Buffer)`.
 */
export const OnPing = (): MethodDecorator => handlerDecorator({ kind: 'ping' });

/**
 * Runs when the client answers a ping (heartbeat or `conn.ping()`).
 * Arguments without parameter decorators: `(conn: WsConnection, payload: Buffer)`.
 */
export const OnPong = (): MethodDecorator => handlerDecorator({ kind: 'pong' });

/**
 * Runs when a connection's outgoing buffer has drained after passing the low watermark: the
 * moment to resume a stream that was paused for a slow consumer.
 * Arguments without parameter decorators: `(conn: WsConnection)`.
 */
export const OnDrain = (): MethodDecorator => handlerDecorator({ kind: 'drain' });
