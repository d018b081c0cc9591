import { Injectable, type ExceptionFilter } from '@nestjs/common';
import { ExternalContextCreator } from '@nestjs/core';
import { GUARDS_METADATA } from '@nestjs/common/constants.js';
import { STATIC_CONTEXT } from '@nestjs/core/injector/constants.js';
import { PARAM_ARGS_METADATA } from '@nestjs/websockets/constants.js';
import { WsParamtype } from '@nestjs/websockets/enums/ws-paramtype.enum.js';
import { WsRouteParamtype } from '../decorators/ws-params.decorators.js';
import type { WsHandlerKind } from '../decorators/ws-lifecycle.decorators.js';
import type { WsConnection } from '../connection/ws-connection.js';
import type { WsRouteDefinition } from '../routing/ws-route-explorer.js';

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

/** A parameter of a handler with no pipes, read straight from the connection and payload. */
interface PlainParam {
  index: number;
  type: number;
  data: string | undefined;
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
      this.directInvoker(route, methodName, callback) ??
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
   * The per-message fast path: a handler with no guard, interceptor or pipe anywhere (method,
   * class or global) and only built-in parameter decorators is called directly with its
   * arguments read from the connection. `ExternalContextCreator` would add an async wrapper,
   * an interceptor chain and a pipe pass per message to do nothing; here the same handler
   * costs one function call, and a synchronous one answers without a Promise.
   * `undefined` when Nest's full pipeline is needed.
   */
  private directInvoker(
    route: WsRouteDefinition,
    methodName: string,
    callback: Function,
  ): WsInvoker | undefined {
    const creator = this.contextCreator as unknown as Record<string, EnhancerSource | undefined>;
    const sources = [
      creator.guardsContextCreator,
      creator.interceptorsContextCreator,
      creator.pipesContextCreator,
    ];
    if (sources.some((source) => !source)) return undefined;
    const moduleKey = this.contextCreator.getContextModuleKey(route.routeClass);
    for (const source of sources) {
      if (source!.create(route.instance, callback, moduleKey, STATIC_CONTEXT).length)
        return undefined;
    }
    const metadata: Record<string, { index: number; data?: unknown; pipes?: unknown[] }> =
      Reflect.getMetadata(PARAM_ARGS_METADATA, route.routeClass, methodName) ?? {};
    const params: PlainParam[] = [];
    for (const [key, { index, data, pipes }] of Object.entries(metadata)) {
      const type = Number(key.split(':')[0]);
      // Custom decorators (createParamDecorator) and parameter pipes need Nest's pipeline.
      if (Number.isNaN(type) || pipes?.length || (data !== undefined && typeof data !== 'string'))
        return undefined;
      params.push({ index, type, data });
    }
    const { instance } = route;
    if (params.length === 0) {
      return (conn, payload) => callback.call(instance, conn, payload);
    }
    const length = Math.max(...params.map((param) => param.index)) + 1;
    return (conn, payload) => {
      const args: unknown[] = new Array(length);
      for (const param of params)
        args[param.index] = paramValue(param.type, param.data, conn, payload);
      return callback.apply(instance, args);
    };
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
