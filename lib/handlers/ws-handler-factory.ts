import {
  Injectable,
  type ArgumentMetadata,
  type CanActivate,
  type ExceptionFilter,
  type NestInterceptor,
  type PipeTransform,
} from '@nestjs/common';
import { ExternalContextCreator } from '@nestjs/core';
import { GUARDS_METADATA } from '@nestjs/common/constants.js';
import { STATIC_CONTEXT } from '@nestjs/core/injector/constants.js';
import { PARAM_ARGS_METADATA } from '@nestjs/websockets/constants.js';
import { WsParamtype } from '@nestjs/websockets/enums/ws-paramtype.enum.js';
import { WsRouteParamtype } from '../decorators/ws-params.decorators.js';
import type { WsHandlerKind } from '../decorators/ws-lifecycle.decorators.js';
import type { WsConnection } from '../connection/ws-connection.js';
import type { WsRouteDefinition } from '../routing/ws-route-explorer.js';
import { createPipelineInvoker, type PipelineParam } from './enhancer-pipeline.js';

/**
 * A handler wrapped in Nest's guards, interceptors and pipes. Arguments are what
 * `ExecutionContext.switchToWs()` shows: the connection (`getClient()`), the payload
 * (`getData()`) and the event name or `undefined` (`getPattern()`). Returns the handler's
 * result: a value, a Promise or an Observable; a handler without enhancers is called directly,
 * so a synchronous one returns synchronously.
 */
export type WsInvoker = (
  conn: WsConnection,
  payload: unknown,
  pattern: string | undefined,
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

type Args = [WsConnection, unknown, string | undefined];

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
  exchangeKeyForValue: (type: number, key: unknown, [conn, payload]: Args): unknown =>
    paramValue(type, key as string | undefined, conn, payload),
};

/** A parameter as `ExternalContextCreator.getMetadata()` resolves it. */
interface ResolvedParam {
  index: number;
  /** Ours or `@nestjs/websockets`'s number; `'custom'` for `createParamDecorator()`. */
  type: number | string;
  data?: unknown;
  pipes?: unknown[];
  extractValue: (...args: Args) => unknown;
}

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

/** A handler with no enhancers: called directly with its arguments read from the connection. */
function directInvoker(
  instance: object,
  callback: Function,
  params: PipelineParam[],
  argsLength: number,
): WsInvoker {
  if (params.length === 0) return (conn, payload) => callback.call(instance, conn, payload);
  return (conn, payload, pattern) => {
    const args: unknown[] = new Array(argsLength);
    for (const param of params) args[param.index] = param.extract(conn, payload, pattern);
    return callback.apply(instance, args);
  };
}

/** The enhancer lists Nest resolves for a handler (class, method and global ones). */
interface EnhancerSource {
  create(instance: object, callback: Function, moduleKey: string, contextId: unknown): unknown[];
}

interface FilterSource {
  create(
    instance: object,
    callback: Function,
    moduleKey: string,
    contextId: unknown,
  ): { filters?: WsFilterBinding[] };
}

/**
 * Wraps route methods in Nest's execution context, the way `@nestjs/websockets` wraps gateway
 * handlers, with `ExternalContextCreator` from `@nestjs/core`: guards, interceptors and pipes
 * (class, method and global), `getType() === 'ws'`, and `@ConnectedSocket()`,
 * `@MessageBody()`, `@WsParam()` and friends. All of it happens once per handler at start-up.
 */
@Injectable()
export class WsHandlerFactory {
  private readonly contextCreator: ExternalContextCreator;

  constructor(externalContextCreator: ExternalContextCreator) {
    // ExternalContextCreator turns an Observable result into its last value; a route's
    // Observable is a stream of replies, so this instance hands results through untouched.
    this.contextCreator = Object.create(externalContextCreator, {
      transformToResult: { value: async (result: unknown) => result },
    });
  }

  createRouteHandlers(route: WsRouteDefinition): RouteHandlers {
    // The class's guards belong to the handshake. Nest reads class guards from the class
    // itself, so they are taken off it while the handlers are bound (the bound handlers keep
    // what they saw) and put back after, for the next application built from this class.
    const { routeClass } = route;
    const classGuards: unknown[] | undefined = Reflect.getMetadata(GUARDS_METADATA, routeClass);
    if (classGuards?.length) Reflect.deleteMetadata(GUARDS_METADATA, routeClass);
    try {
      const handlers: RouteHandlers = {
        events: new Map(),
        handshake: this.createHandshakeGuards(route, classGuards ?? []),
      };
      const taken = new Map<string, string>();
      for (const definition of route.handlers) {
        const slot =
          definition.event === undefined ? definition.kind : `message:${definition.event}`;
        const previous = taken.get(slot);
        if (previous) {
          throw new Error(
            `${routeClass.name}: ${previous}() and ${definition.methodName}() both handle ${describe(definition.kind, definition.event)}`,
          );
        }
        taken.set(slot, definition.methodName);
        const bound = this.bind(route, definition.methodName);
        if (definition.event !== undefined) handlers.events.set(definition.event, bound);
        else handlers[definition.kind as Exclude<WsHandlerKind, never>] = bound;
      }
      return handlers;
    } finally {
      if (classGuards?.length) Reflect.defineMetadata(GUARDS_METADATA, classGuards, routeClass);
    }
  }

  /**
   * The route class's `@UseGuards()` and the global guards, to run at the upgrade with the
   * request and a `HandshakeResponse` as arguments. Rejects with `ForbiddenException` when a
   * guard says no, or with whatever a guard threw.
   *
   * Class guards authenticate the connection once, at the upgrade; running them again before
   * every handler would call guards written for the request with a connection, and verify a
   * token per message. So they are given to the handshake as if they were its own.
   */
  private createHandshakeGuards(
    route: WsRouteDefinition,
    classGuards: unknown[],
  ): HandshakeInvoker {
    const handshake = function handshake(): boolean {
      return true;
    };
    if (classGuards.length) Reflect.defineMetadata(GUARDS_METADATA, classGuards, handshake);
    return this.contextCreator.create(
      route.instance,
      handshake,
      HANDSHAKE_METHOD,
      PARAM_ARGS_METADATA,
      undefined,
      STATIC_CONTEXT,
      undefined,
      { guards: true, interceptors: false, filters: false },
      'ws',
    ) as HandshakeInvoker;
  }

  private bind(route: WsRouteDefinition, methodName: string): BoundHandler {
    const instance = route.instance as Record<string, Function>;
    const callback = instance[methodName] as (...args: unknown[]) => unknown;
    const invoke =
      this.compile(route, methodName, callback) ??
      (this.contextCreator.create(
        instance,
        callback,
        methodName,
        PARAM_ARGS_METADATA,
        paramsFactory,
        STATIC_CONTEXT,
        undefined,
        { guards: true, interceptors: true, filters: false },
        'ws',
      ) as unknown as WsInvoker);
    return { methodName, invoke, filters: this.filtersOf(route, callback) };
  }

  /**
   * Resolves a handler's guards, interceptors, pipes and parameters once, at start-up, and
   * returns what runs per message:
   * - with no guard, interceptor or pipe anywhere (method, class or global) and only built-in
   *   parameter decorators, the handler itself, called with its arguments read from the
   *   connection: one function call, and a synchronous handler answers without a Promise;
   * - otherwise {@link createPipelineInvoker}: Nest's semantics, asynchronous only where an
   *   enhancer is.
   *
   * `undefined` if this version of Nest does not expose the enhancer lists the way 11 and 12
   * do; `ExternalContextCreator` then wraps the handler (slower, same behaviour).
   */
  private compile(
    route: WsRouteDefinition,
    methodName: string,
    callback: Function,
  ): WsInvoker | undefined {
    const creator = this.contextCreator as unknown as Record<string, EnhancerSource | undefined>;
    const { guardsContextCreator, interceptorsContextCreator, pipesContextCreator } = creator;
    if (!guardsContextCreator || !interceptorsContextCreator || !pipesContextCreator)
      return undefined;
    const { instance, routeClass } = route;
    const moduleKey = this.contextCreator.getContextModuleKey(routeClass);
    const resolve = <T>(source: EnhancerSource) =>
      source.create(instance, callback, moduleKey, STATIC_CONTEXT) as T[];
    const guards = resolve<CanActivate>(guardsContextCreator);
    const interceptors = resolve<NestInterceptor>(interceptorsContextCreator);
    const pipes = resolve<PipeTransform>(pipesContextCreator);

    const { argsLength, paramtypes, getParamsMetadata } = this.contextCreator.getMetadata(
      instance as Record<string, Function>,
      methodName,
      PARAM_ARGS_METADATA,
      paramsFactory,
      'ws',
    );
    const resolved = (getParamsMetadata(moduleKey, STATIC_CONTEXT) ?? []) as ResolvedParam[];
    const params: PipelineParam[] = resolved.map((param) => ({
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
      resolved.every((param) => typeof param.type === 'number');
    if (!guards.length && !interceptors.length && plain) {
      return directInvoker(instance, callback, params, argsLength);
    }
    return createPipelineInvoker({ instance, callback, guards, interceptors, params, argsLength });
  }

  /**
   * Exception filters are applied by the dispatcher, not by ExternalContextCreator: Nest's
   * external handler treats a filter that returns nothing as "not handled" and rethrows, while
   * a WebSocket filter answers by sending and returns nothing.
   */
  private filtersOf(route: WsRouteDefinition, callback: Function): WsFilterBinding[] {
    const source = (this.contextCreator as unknown as { filtersContextCreator?: FilterSource })
      .filtersContextCreator;
    if (!source) return [];
    const moduleKey = this.contextCreator.getContextModuleKey(route.routeClass);
    return source.create(route.instance, callback, moduleKey, STATIC_CONTEXT).filters ?? [];
  }
}

/** Name under which the handshake's guard context is cached; no method of the route runs yet. */
const HANDSHAKE_METHOD = 'handshake';

function describe(kind: WsHandlerKind, event: string | undefined): string {
  if (event !== undefined) return `@OnMessage('${event}')`;
  return `@On${kind[0].toUpperCase()}${kind.slice(1)}()`;
}
