import {
  Injectable,
  type ArgumentMetadata,
  type ExceptionFilter,
  type PipeTransform,
} from '@nestjs/common';
import { ExternalContextCreator } from '@nestjs/core';
import { WsParamtype } from '@nestjs/websockets/enums/ws-paramtype.enum.js';
import { WsRouteParamtype } from '../decorators/ws-params.decorators.js';
import type { WsHandlerKind } from '../decorators/ws-lifecycle.decorators.js';
import type { WsConnection } from '../connection/ws-connection.js';
import type { WsRouteDefinition } from '../routing/ws-route-explorer.js';
import {
  EnhancerResolver,
  type ContextArgs,
  type ResolvedParam,
  type RouteEnhancers,
} from './enhancer-resolver.js';
import {
  createHandshakeGuards,
  createPipelineInvoker,
  type PipelineParam,
} from './enhancer-pipeline.js';

/**
 * Told by an invoker, synchronously, what the handler method itself returned (a value, a
 * Promise or an Observable), before any interceptor sees it. Not told when a guard denies, an
 * interceptor answers without calling the handler, or the handler throws. The connection's
 * executor uses it to keep replies in order behind interceptors without waiting on a quiet
 * Observable.
 */
export interface HandlerProgress {
  handlerReturned(result: unknown): void;
}

/**
 * A handler wrapped in Nest's guards, interceptors and pipes. Arguments are what
 * `ExecutionContext.switchToWs()` shows: the connection (`getClient()`), the payload
 * (`getData()`) and the event name or `undefined` (`getPattern()`); `progress` is told the
 * handler's own result (see {@link HandlerProgress}). Returns the handler's result, or the
 * interceptors' Observable: a value, a Promise or an Observable; a handler without enhancers is
 * called directly, so a synchronous one returns synchronously.
 */
export type WsInvoker = (
  conn: WsConnection,
  payload: unknown,
  pattern: string | undefined,
  progress?: HandlerProgress,
) => unknown;

/** An exception filter as Nest resolves it: the exception classes it catches and its `catch`. */
export interface WsFilterBinding {
  exceptionMetatypes: Function[];
  func: ExceptionFilter['catch'];
}

export interface BoundHandler {
  methodName: string;
  invoke: WsInvoker;
  /** The route's, the method's and the global exception filters, in Nest's order. */
  filters: WsFilterBinding[];
}

/** Runs the class and global guards at the upgrade, with the request and a `HandshakeResponse`. */
export type HandshakeInvoker = (request: object, response: object) => Promise<unknown>;

/** Every handler of one route, resolved at start-up. */
export interface RouteHandlers {
  handshake: HandshakeInvoker;
  open?: BoundHandler;
  /** `@OnMessage()`: messages no event handler claimed. */
  message?: BoundHandler;
  events: Map<string, BoundHandler>;
  close?: BoundHandler;
  error?: BoundHandler;
  ping?: BoundHandler;
  pong?: BoundHandler;
  drain?: BoundHandler;
}

/** The value of one parameter decorator for a connection and a payload. */
function paramValue(
  type: number,
  data: string | undefined,
  conn: WsConnection,
  payload: unknown,
): unknown {
  switch (type) {
    case WsParamtype.SOCKET:
      return conn;
    case WsParamtype.PAYLOAD:
      return data && payload && typeof payload === 'object'
        ? (payload as Record<string, unknown>)[data]
        : payload;
    case WsRouteParamtype.PARAM:
      return data ? conn.params[data] : conn.params;
    case WsRouteParamtype.QUERY:
      return data ? conn.query[data] : conn.query;
    case WsRouteParamtype.HEADERS:
      return data ? conn.headers[data] : conn.headers;
    case WsRouteParamtype.REQUEST:
      return conn.request;
    default:
      return undefined;
  }
}

/** Turns parameter metadata into values; `ExternalContextCreator` calls it once per argument. */
const paramsFactory = {
  exchangeKeyForValue: (type: number, key: unknown, [conn, payload]: ContextArgs): unknown =>
    paramValue(type, key as string | undefined, conn, payload),
};

/** Reads a parameter for one message: built-in decorators straight from the connection. */
function extractorOf(param: ResolvedParam): PipelineParam['extract'] {
  if (typeof param.type !== 'number') {
    const { extractValue } = param;
    return (conn, payload, pattern) => extractValue(conn, payload, pattern);
  }
  const { type } = param;
  const data = param.data as string | undefined;
  if (type === WsParamtype.SOCKET) return (conn) => conn;
  return (conn, payload) => paramValue(type, data, conn, payload);
}

/**
 * The `type` pipes see: `@MessageBody()` is the body, `@WsParam()` and `@WsQuery()` are route
 * params and query as in HTTP (so `ValidationPipe` validates them), the rest is `'custom'`.
 */
function tokenOf(type: number | string): ArgumentMetadata['type'] {
  switch (type) {
    case WsParamtype.PAYLOAD:
      return 'body';
    case WsRouteParamtype.PARAM:
      return 'param';
    case WsRouteParamtype.QUERY:
      return 'query';
    default:
      return 'custom';
  }
}

/**
 * A handler with no enhancers: called directly with its arguments read from the connection.
 * `progress` is passed through, not wrapped: this path allocates nothing per message.
 */
function directInvoker(
  instance: object,
  callback: Function,
  params: PipelineParam[],
  argsLength: number,
): WsInvoker {
  if (params.length === 0) {
    return (conn, payload, _pattern, progress) => {
      const result: unknown = callback.call(instance, conn, payload);
      progress?.handlerReturned(result);
      return result;
    };
  }
  return (conn, payload, pattern, progress) => {
    const args: unknown[] = new Array(argsLength);
    for (const param of params) args[param.index] = param.extract(conn, payload, pattern);
    const result: unknown = callback.apply(instance, args);
    progress?.handlerReturned(result);
    return result;
  };
}

/**
 * Wraps route methods in Nest's execution context, the way `@nestjs/websockets` wraps gateway
 * handlers: guards, interceptors and pipes (global, class and method), `getType() === 'ws'`, and
 * `@ConnectedSocket()`, `@MessageBody()`, `@WsParam()` and friends. All of it happens once per
 * handler at start-up.
 *
 * Class guards belong to the upgrade: they authenticate the connection once, with the request,
 * and never run per message (running them per message would hand guards written for the
 * request a connection, and verify a token per message). Messages run the global and the
 * method guards.
 *
 * The enhancers come from {@link EnhancerResolver}, which resolves them as Nest does and checks
 * them against the metadata: a handler never runs without a guard its metadata names.
 */
@Injectable()
export class WsHandlerFactory {
  private readonly enhancers: EnhancerResolver;

  constructor(externalContextCreator: ExternalContextCreator) {
    this.enhancers = new EnhancerResolver(externalContextCreator, paramsFactory);
  }

  createRouteHandlers(route: WsRouteDefinition): RouteHandlers {
    const { routeClass } = route;
    const enhancers = this.enhancers.forRoute(route);
    const handlers: RouteHandlers = {
      events: new Map(),
      handshake: this.createHandshakeGuards(route, enhancers),
    };
    const taken = new Map<string, string>();
    for (const definition of route.handlers) {
      const slot = definition.event === undefined ? definition.kind : `message:${definition.event}`;
      const previous = taken.get(slot);
      if (previous) {
        throw new Error(
          `${routeClass.name}: ${previous}() and ${definition.methodName}() both handle ${describe(definition.kind, definition.event)}`,
        );
      }
      taken.set(slot, definition.methodName);
      const bound = this.bind(route, enhancers, definition.methodName);
      if (definition.event !== undefined) handlers.events.set(definition.event, bound);
      else handlers[definition.kind as Exclude<WsHandlerKind, never>] = bound;
    }
    return handlers;
  }

  /**
   * The global guards and the route class's `@UseGuards()` (its own and those it inherits), to
   * run at the upgrade with the request and a `HandshakeResponse` as arguments. Rejects with
   * `ForbiddenException` when a guard says no, or with whatever a guard threw.
   */
  private createHandshakeGuards(
    route: WsRouteDefinition,
    enhancers: RouteEnhancers,
  ): HandshakeInvoker {
    const handshake = function handshake(): boolean {
      return true;
    };
    return createHandshakeGuards(enhancers.handshakeGuards(handshake), route.routeClass, handshake);
  }

  private bind(
    route: WsRouteDefinition,
    enhancers: RouteEnhancers,
    methodName: string,
  ): BoundHandler {
    const instance = route.instance as Record<string, Function>;
    const callback = instance[methodName] as (...args: unknown[]) => unknown;
    return {
      methodName,
      invoke: this.compile(route, enhancers, methodName, callback),
      filters: enhancers.filters(callback),
    };
  }

  /**
   * Builds what runs per message from a handler's guards, interceptors, pipes and parameters,
   * resolved once, at start-up:
   * - with no guard, interceptor or pipe anywhere (method, class or global) and only built-in
   *   parameter decorators, the handler itself, called with its arguments read from the
   *   connection: one function call, and a synchronous handler answers without a Promise;
   * - otherwise {@link createPipelineInvoker}: Nest's semantics, asynchronous only where an
   *   enhancer is.
   */
  private compile(
    route: WsRouteDefinition,
    enhancers: RouteEnhancers,
    methodName: string,
    callback: Function,
  ): WsInvoker {
    const { instance } = route;
    const {
      guards,
      interceptors,
      pipes,
      params: resolvedParams,
      argsLength,
      paramtypes,
    } = enhancers.handler(methodName, callback);

    const params: PipelineParam[] = resolvedParams.map((param) => ({
      index: param.index,
      extract: extractorOf(param),
      metadata: {
        type: tokenOf(param.type),
        metatype: paramtypes?.[param.index] as ArgumentMetadata['metatype'],
        data: param.data as string | undefined,
      },
      pipes: [...pipes, ...((param.pipes ?? []) as PipeTransform[])],
    }));

    const plain =
      params.every((param) => param.pipes.length === 0) &&
      resolvedParams.every((param) => typeof param.type === 'number');
    if (!guards.length && !interceptors.length && plain) {
      return directInvoker(instance, callback, params, argsLength);
    }
    return createPipelineInvoker({ instance, callback, guards, interceptors, params, argsLength });
  }
}

function describe(kind: WsHandlerKind, event: string | undefined): string {
  if (event !== undefined) return `@OnMessage('${event}')`;
  return `@On${kind[0].toUpperCase()}${kind.slice(1)}()`;
}
