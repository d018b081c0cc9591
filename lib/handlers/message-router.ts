import { WsException } from '@nestjs/websockets';
import type { BoundHandler, RouteHandlers } from './ws-handler-factory.js';

/** Longest event name quoted back in an "unknown event" answer. */
const MAX_QUOTED_EVENT = 64;

/** A message and the handler that takes it. */
export interface Target {
  handler: BoundHandler;
  payload: unknown;
  /** The event name of an `@OnMessage('event')` handler, `undefined` for `@OnMessage()`. */
  pattern: string | undefined;
}

/** Why a message found no handler. */
export type Miss =
  /** The route cannot take this kind of message at all: close with 1003. */
  | { kind: 'unsupported'; reason: string }
  /** A text message the route could not place: answered with an `exception` message. */
  | { kind: 'unknown'; error: WsException; text: string; event: string | undefined };

/**
 * Finds the handler of each message of one route: `{"event": name, "data": …}` text goes to
 * `@OnMessage(name)`, everything else to `@OnMessage()`.
 */
export class MessageRouter {
  private readonly acceptsJsonEvents: boolean;

  constructor(private readonly handlers: RouteHandlers) {
    this.acceptsJsonEvents = handlers.events.size > 0;
  }

  route(data: Buffer, isBinary: boolean): Target | Miss {
    const { handlers } = this;
    if (isBinary) {
      if (handlers.message) return { handler: handlers.message, payload: data, pattern: undefined };
      return { kind: 'unsupported', reason: 'This route does not accept binary messages' };
    }
    const text = data.toString();
    if (this.acceptsJsonEvents) {
      const envelope = parseEnvelope(text);
      const handler = envelope && handlers.events.get(envelope.event);
      if (handler) return { handler, payload: envelope.data, pattern: envelope.event };
      if (!handlers.message) {
        const problem = envelope
          ? `Unknown event "${envelope.event.slice(0, MAX_QUOTED_EVENT)}"`
          : 'Malformed message: expected JSON {"event": string, "data": any}';
        return { kind: 'unknown', error: new WsException(problem), text, event: envelope?.event };
      }
    }
    if (handlers.message) return { handler: handlers.message, payload: text, pattern: undefined };
    return { kind: 'unsupported', reason: 'This route does not accept messages' };
  }
}

/** Parses `{"event": string, "data": any}`; anything else is `undefined`. */
function parseEnvelope(text: string): { event: string; data: unknown } | undefined {
  if (text.length < 2 || text.charCodeAt(0) !== 123 /* { */) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  const event = (value as { event?: unknown }).event;
  return typeof event === 'string'
    ? { event, data: (value as { data?: unknown }).data }
    : undefined;
}
