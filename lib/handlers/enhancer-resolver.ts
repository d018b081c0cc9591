import { Logger, type CanActivate, type NestInterceptor, type PipeTransform } from '@nestjs/common';
import type { ExternalContextCreator } from '@nestjs/core';
import type { ParamsFactory } from '@nestjs/core/helpers/external-context-creator.js';
import {
  GUARDS_METADATA,
  INTERCEPTORS_METADATA,
  PIPES_METADATA,
} from '@nestjs/common/constants.js';
import { STATIC_CONTEXT } from '@nestjs/core/injector/constants.js';
import { PARAM_ARGS_METADATA } from '@nestjs/websockets/constants.js';
import type { WsConnection } from '../connection/ws-connection.js';
import type { WsRouteDefinition } from '../routing/ws-route-explorer.js';
import type { WsFilterBinding } from './ws-handler-factory.js';

/** What a route handler's context is built from: `switchToWs()`'s client, data and pattern. */
export type ContextArgs = [WsConnection, unknown, string | undefined];

/** A parameter as `ExternalContextCreator.getMetadata()` resolves it. */
export interface ResolvedParam {
  index: number;
  /** Ours or `@nestjs/websockets`'s number; `'custom'` for `createParamDecorator()`. */
  type: number | string;
  data?: unknown;
  pipes?: unknown[];
  extractValue: (...args: ContextArgs) => unknown;
}

/** One handler's enhancers and parameters, resolved and verified at start-up. */
export interface HandlerEnhancers {
  /** The global and the method guards (the class's run at the upgrade). */
  guards: CanActivate[];
  interceptors: NestInterceptor[];
  /** The global, class and method pipes, run for every parameter before its own. */
  pipes: PipeTransform[];
  params: ResolvedParam[];
  /** The handler's arity and its parameters' design types, from `getMetadata()`. */
  argsLength: number;
  paramtypes: unknown[] | undefined;
}

/**
 * The enhancers of one route, resolved in the module that holds its provider. Each call either
 * returns a complete chain or throws an error naming the class, the method and the enhancer.
 */
export interface RouteEnhancers {
  /**
   * The global guards and the route class's `@UseGuards()` (its own and those it inherits), for
   * the upgrade; `handshake` stands in for the handler Nest resolves them for.
   */
  handshakeGuards(handshake: Function): CanActivate[];
  /** The guards, interceptors, pipes and parameters of the route's method `methodName`. */
  handler(methodName: string, callback: Function): HandlerEnhancers;
  /** The route's, the method's and the global exception filters, in Nest's order. */
  filters(callback: Function): WsFilterBinding[];
}

/** The part of Nest's `GuardsContextCreator` & co. that resolves enhancers (Nest 11 and 12). */
interface EnhancerSource {
  create(
    instance: object,
    callback: Function,
    moduleKey: string,
    contextId: unknown,
    inquirerId?: string,
  ): unknown[];
  getGlobalMetadata?(contextId: unknown, inquirerId?: string): unknown[] | undefined;
  config?: Record<string, (() => unknown[]) | undefined>;
}

interface FilterSource {
  create(
    instance: object,
    callback: Function,
    moduleKey: string,
    contextId: unknown,
    inquirerId?: string,
  ): { filters?: WsFilterBinding[] };
}

/** A provider as the container holds it; only what finding a route's host needs. */
interface ProviderWrapper {
  id: string;
  name?: string;
  instance: unknown;
  isAlias?: boolean;
  isNotMetatype?: boolean;
  getInstanceByContextId?(
    contextId: unknown,
    inquirerId?: string,
  ): { instance: unknown; isConstructorCalled?: boolean } | undefined;
}

/** The members of `ExternalContextCreator` this resolver reads (public in JS, private in TS). */
interface NestInternals {
  guardsContextCreator?: EnhancerSource;
  interceptorsContextCreator?: EnhancerSource;
  pipesContextCreator?: EnhancerSource;
  filtersContextCreator?: FilterSource;
  modulesContainer?: Map<string, { providers: Map<unknown, ProviderWrapper> }>;
  contextUtils?: { reflectCallbackMetadata?(instance: object, name: string, key: string): unknown };
  getHostModuleKey?(instance: object, classRef: Function, inquirerId?: string): string;
  exchangeKeysForValues(...args: unknown[]): ResolvedParam[];
}

/** Where Nest resolves a route's enhancers: the module that holds its provider, and that provider. */
interface RouteHost {
  moduleKey: string;
  /** The route's provider: transient enhancers exist once per host, under this id. */
  inquirerId: string | undefined;
}

type EnhancerKind = 'guard' | 'interceptor' | 'pipe';

/** One enhancer the metadata names, and where it was named (for the start-up error). */
interface NamedEnhancer {
  entry: unknown;
  where: string;
  /** For a request-scoped or transient global enhancer: its instance for this host. */
  scoped?: { instance: unknown; isConstructorCalled?: boolean };
}

/** The enhancers of one handler, as resolved (by us, or by `ExternalContextCreator.create()`). */
interface Recording {
  guards?: unknown[];
  interceptors?: unknown[];
  pipes?: unknown[];
  params?: ResolvedParam[];
}

const METADATA_KEYS: Record<EnhancerKind, string> = {
  guard: GUARDS_METADATA,
  interceptor: INTERCEPTORS_METADATA,
  pipe: PIPES_METADATA,
};

const GLOBAL_REQUEST_GETTERS: Record<EnhancerKind, string> = {
  guard: 'getGlobalRequestGuards',
  interceptor: 'getGlobalRequestInterceptors',
  pipe: 'getGlobalRequestPipes',
};

/**
 * Resolves the Nest enhancers of route handlers once, at start-up, and verifies them.
 *
 * Enhancers are resolved the way `ExternalContextCreator.create()` resolves an entry provider's
 * (in the module that holds the route's provider, with that provider as the inquirer, which
 * finds the transient enhancers Nest created for the route), and then checked: every
 * guard, interceptor and pipe the metadata names must be in the resolved chain, since Nest drops
 * an enhancer it cannot resolve without a word. A handler whose chain misses one falls back to
 * what `ExternalContextCreator.create()` itself resolves, and the application does not start if
 * that misses one too: a handler never runs without a guard its metadata names.
 */
export class EnhancerResolver {
  private readonly logger = new Logger('WsRoutes');
  private readonly internals: NestInternals;
  /** Global and method guards: the class's are left to the upgrade, the metadata untouched. */
  private readonly messageGuards: EnhancerSource | undefined;
  /** `ExternalContextCreator` with the message guards and results handed through. */
  private readonly contextCreator: ExternalContextCreator;
  /** The same with the global and class guards: the upgrade's. */
  private readonly handshakeContextCreator: ExternalContextCreator;
  /** What the enhancer sources resolve while `resolveLikeNest()` watches them. */
  private recording: Recording | undefined;

  /** `paramsFactory` turns parameter metadata into values, as `ExternalContextCreator` asks. */
  constructor(
    externalContextCreator: ExternalContextCreator,
    private readonly paramsFactory: ParamsFactory,
  ) {
    const internals = externalContextCreator as unknown as NestInternals;
    this.internals = internals;
    const { guardsContextCreator, interceptorsContextCreator, pipesContextCreator } = internals;
    this.messageGuards =
      guardsContextCreator &&
      (Object.create(guardsContextCreator, {
        reflectClassMetadata: { value: () => undefined },
      }) as EnhancerSource);
    const prototype = Object.getPrototypeOf(externalContextCreator) as NestInternals;
    const record = <K extends keyof Recording>(kind: K, list: Recording[K]) => {
      if (this.recording) this.recording[kind] = list;
    };
    // Each source tells `record` what it resolved: see `resolveLikeNest()`.
    const recorded = (source: EnhancerSource | undefined, kind: EnhancerListKind) =>
      source &&
      (Object.create(source, {
        create: {
          value(this: EnhancerSource, ...args: Parameters<EnhancerSource['create']>) {
            const list = source.create.apply(this, args);
            record(kind, list);
            return list;
          },
        },
      }) as EnhancerSource);
    // ExternalContextCreator turns an Observable result into its last value; a route's
    // Observable is a stream of replies, so this instance hands results through untouched.
    this.contextCreator = Object.create(externalContextCreator, {
      transformToResult: { value: async (result: unknown) => result },
      guardsContextCreator: { value: recorded(this.messageGuards, 'guards') },
      interceptorsContextCreator: { value: recorded(interceptorsContextCreator, 'interceptors') },
      pipesContextCreator: { value: recorded(pipesContextCreator, 'pipes') },
      exchangeKeysForValues: {
        value(this: NestInternals, ...args: unknown[]) {
          const params = prototype.exchangeKeysForValues.apply(this, args);
          record('params', params);
          return params;
        },
      },
    }) as ExternalContextCreator;
    this.handshakeContextCreator = Object.create(this.contextCreator, {
      guardsContextCreator: { value: recorded(guardsContextCreator, 'guards') },
    }) as ExternalContextCreator;
  }

  /** Finds the route's host once; what it returns resolves the route's enhancers there. */
  forRoute(route: WsRouteDefinition): RouteEnhancers {
    const host = this.hostOf(route);
    return {
      handshakeGuards: (handshake) => this.handshakeGuards(route, host, handshake),
      handler: (methodName, callback) => this.handler(route, host, methodName, callback),
      filters: (callback) => this.filtersOf(route, host, callback),
    };
  }

  /**
   * The module that holds the route's provider and that provider's id, found as
   * `ExternalContextCreator.create()` finds them: a provider Nest created from its class wins
   * over a factory or value provider that returns the same instance.
   */
  private hostOf(route: WsRouteDefinition): RouteHost {
    const { instance, routeClass } = route;
    let found: { moduleKey: string; id: string } | undefined;
    search: for (const [moduleKey, moduleRef] of this.internals.modulesContainer ?? []) {
      for (const wrapper of moduleRef.providers.values()) {
        if (wrapper.isAlias || wrapper.instance !== instance) continue;
        found ??= { moduleKey, id: wrapper.id };
        if (!wrapper.isNotMetatype) {
          found = { moduleKey, id: wrapper.id };
          break search;
        }
      }
    }
    const inquirerId = found?.id;
    const moduleKey =
      this.internals.getHostModuleKey?.call(this.internals, instance, routeClass, inquirerId) ||
      found?.moduleKey ||
      this.contextCreator.getContextModuleKey(routeClass);
    return { moduleKey, inquirerId };
  }

  /** The upgrade's guards: the global guards and the class's, checked against the metadata. */
  private handshakeGuards(
    route: WsRouteDefinition,
    host: RouteHost,
    handshake: Function,
  ): CanActivate[] {
    const { instance, routeClass } = route;
    const source = this.sources().guards;
    const named = [
      ...this.globalEnhancers('guard', host),
      ...this.classEnhancers('guard', routeClass),
    ];
    let guards = source.create(
      instance,
      handshake,
      host.moduleKey,
      STATIC_CONTEXT,
      host.inquirerId,
    );
    let missing = findMissing(named, guards);
    if (missing) {
      this.warnFallback(routeClass, 'the upgrade', missing);
      guards =
        this.resolveLikeNest(
          this.handshakeContextCreator,
          instance,
          handshake,
          HANDSHAKE_METHOD,
          undefined,
        ).guards ?? [];
      missing = findMissing(named, guards);
      if (missing) throw unresolved(routeClass, 'the upgrade', missing);
    }
    return guards as CanActivate[];
  }

  /** A handler's guards, interceptors, pipes and parameters, checked against the metadata. */
  private handler(
    route: WsRouteDefinition,
    host: RouteHost,
    methodName: string,
    callback: Function,
  ): HandlerEnhancers {
    const { instance, routeClass } = route;
    const { argsLength, paramtypes, getParamsMetadata } = this.contextCreator.getMetadata(
      instance as Record<string, Function>,
      methodName,
      PARAM_ARGS_METADATA,
      this.paramsFactory,
      'ws',
    );
    const sources = this.sources();
    const resolve = (source: EnhancerSource) =>
      source.create(instance, callback, host.moduleKey, STATIC_CONTEXT, host.inquirerId);
    let resolved: Recording = {
      guards: resolve(sources.messageGuards),
      interceptors: resolve(sources.interceptors),
      pipes: resolve(sources.pipes),
      params: (getParamsMetadata(host.moduleKey, STATIC_CONTEXT, host.inquirerId) ??
        []) as ResolvedParam[],
    };
    const where = `${methodName}()`;
    let missing = this.findMissingInHandler(route, host, methodName, callback, resolved);
    if (missing) {
      this.warnFallback(routeClass, where, missing);
      resolved = this.resolveLikeNest(
        this.contextCreator,
        instance,
        callback,
        methodName,
        this.paramsFactory,
      );
      missing = this.findMissingInHandler(route, host, methodName, callback, resolved);
      if (missing) throw unresolved(routeClass, where, missing);
    }
    // Verified: a list that is not there had nothing to hold.
    return {
      guards: (resolved.guards ?? []) as CanActivate[],
      interceptors: (resolved.interceptors ?? []) as NestInterceptor[],
      pipes: (resolved.pipes ?? []) as PipeTransform[],
      params: resolved.params ?? [],
      argsLength,
      paramtypes,
    };
  }

  /** The first enhancer a handler's metadata names that `resolved` lacks, described. */
  private findMissingInHandler(
    route: WsRouteDefinition,
    host: RouteHost,
    methodName: string,
    callback: Function,
    resolved: Recording,
  ): string | undefined {
    const { routeClass, instance } = route;
    const named = (kind: EnhancerKind, withClass: boolean) => [
      ...this.globalEnhancers(kind, host),
      ...(withClass ? this.classEnhancers(kind, routeClass) : []),
      ...listOf(Reflect.getMetadata(METADATA_KEYS[kind], callback)).map((entry) => ({
        entry,
        where: `the method's @Use${USE_DECORATOR[kind]}()`,
      })),
    ];
    const missing =
      findMissing(named('guard', false), resolved.guards) ??
      findMissing(named('interceptor', true), resolved.interceptors) ??
      findMissing(named('pipe', true), resolved.pipes);
    if (missing) return missing;
    if (!resolved.params) return 'its parameters (they were not resolved)';
    const metadata = (this.internals.contextUtils?.reflectCallbackMetadata?.(
      instance,
      methodName,
      PARAM_ARGS_METADATA,
    ) ?? Reflect.getMetadata(PARAM_ARGS_METADATA, routeClass, methodName)) as
      Record<string, { index: number; pipes?: unknown[] }> | undefined;
    for (const { index, pipes } of Object.values(metadata ?? {})) {
      const param = resolved.params.find((candidate) => candidate.index === index);
      const missingPipe = findMissing(
        listOf(pipes).map((entry) => ({ entry, where: `parameter ${index}` })),
        param?.pipes,
      );
      if (missingPipe) return missingPipe;
      if (!param) return `parameter ${index} (its decorator was not resolved)`;
    }
    return undefined;
  }

  /**
   * What `ExternalContextCreator.create()` itself resolves for a handler: it is asked to build
   * its wrapper, and its enhancer sources tell `recording` what it resolved. Only the lists are
   * kept: the pipeline runs them with the same semantics (and a denial that is a `WsException`).
   */
  private resolveLikeNest(
    contextCreator: ExternalContextCreator,
    instance: object,
    callback: Function,
    methodName: string,
    factory: ParamsFactory | undefined,
  ): Recording {
    this.recording = {};
    try {
      contextCreator.create(
        instance,
        callback as never,
        methodName,
        PARAM_ARGS_METADATA,
        factory,
        STATIC_CONTEXT,
        undefined,
        { guards: true, interceptors: true, filters: false },
        'ws',
      );
      return this.recording;
    } finally {
      this.recording = undefined;
    }
  }

  /** The global enhancers of one kind: the application's instances and its scoped providers. */
  private globalEnhancers(kind: EnhancerKind, host: RouteHost): NamedEnhancer[] {
    const source = this.sources()[KIND_SOURCES[kind]];
    const instances = listOf(source.getGlobalMetadata?.(STATIC_CONTEXT));
    const scoped = listOf(
      source.config?.[GLOBAL_REQUEST_GETTERS[kind]]?.call(source.config),
    ) as ProviderWrapper[];
    return [
      ...instances.map((entry) => ({ entry, where: `the global ${kind}s` })),
      ...scoped.map((wrapper) => ({
        entry: wrapper,
        where: `a request-scoped or transient global ${kind}`,
        scoped: wrapper.getInstanceByContextId?.(STATIC_CONTEXT, host.inquirerId) ?? {
          instance: undefined,
        },
      })),
    ];
  }

  /** The route class's enhancers of one kind, its own or inherited from a base class. */
  private classEnhancers(kind: EnhancerKind, routeClass: Function): NamedEnhancer[] {
    return listOf(Reflect.getMetadata(METADATA_KEYS[kind], routeClass)).map((entry) => ({
      entry,
      where: `the class's @Use${USE_DECORATOR[kind]}()`,
    }));
  }

  private warnFallback(routeClass: Function, where: string, missing: string): void {
    this.logger.warn(
      `${routeClass.name}, ${where}: ${missing} did not resolve in the route's module; trying ExternalContextCreator's own resolution`,
    );
  }

  /** The enhancer sources; the application does not start without them. */
  private sources(): Record<'guards' | 'messageGuards' | 'interceptors' | 'pipes', EnhancerSource> {
    const { guardsContextCreator, interceptorsContextCreator, pipesContextCreator } =
      this.internals;
    if (!guardsContextCreator || !interceptorsContextCreator || !pipesContextCreator) {
      throw new Error(
        'nestjs-ws-routes: this version of @nestjs/core does not expose its guard, interceptor and pipe resolution on ExternalContextCreator, so route handlers cannot be checked for missing enhancers',
      );
    }
    return {
      guards: guardsContextCreator,
      messageGuards: this.messageGuards!,
      interceptors: interceptorsContextCreator,
      pipes: pipesContextCreator,
    };
  }

  /**
   * Exception filters are applied by the dispatcher, not by ExternalContextCreator: Nest's
   * external handler treats a filter that returns nothing as "not handled" and rethrows, while
   * a WebSocket filter answers by sending and returns nothing.
   */
  private filtersOf(
    route: WsRouteDefinition,
    host: RouteHost,
    callback: Function,
  ): WsFilterBinding[] {
    const source = this.internals.filtersContextCreator;
    if (!source) return [];
    return (
      source.create(route.instance, callback, host.moduleKey, STATIC_CONTEXT, host.inquirerId)
        .filters ?? []
    );
  }
}

/** Which list of `Recording` each kind of enhancer goes to. */
type EnhancerListKind = 'guards' | 'interceptors' | 'pipes';

const KIND_SOURCES: Record<EnhancerKind, 'guards' | 'interceptors' | 'pipes'> = {
  guard: 'guards',
  interceptor: 'interceptors',
  pipe: 'pipes',
};

const USE_DECORATOR: Record<EnhancerKind, string> = {
  guard: 'Guards',
  interceptor: 'Interceptors',
  pipe: 'Pipes',
};

/**
 * The first enhancer of `named` that `resolved` lacks, described; `undefined` if every one is
 * there. Nest resolves in the metadata's order and only ever drops entries, so the two lists
 * are walked side by side: a class entry is matched by its instance (or the class itself, for
 * a static method), an instance by itself, a scoped global by its constructed instance.
 */
function findMissing(named: NamedEnhancer[], resolved: unknown[] | undefined): string | undefined {
  const list = resolved ?? [];
  let next = 0;
  for (const enhancer of named) {
    if (next < list.length && matches(enhancer, list[next])) {
      next++;
      continue;
    }
    return `${describeEnhancer(enhancer.entry)} (${enhancer.where})`;
  }
  // More than the metadata names: the lists are not what this check reads (a Nest that
  // resolves class guards another way would run them per message), so trust neither.
  if (list.length > named.length) {
    return `${list.length - named.length} enhancer(s) beyond the ${named.length} the metadata names`;
  }
  return undefined;
}

function matches({ entry, scoped }: NamedEnhancer, candidate: unknown): boolean {
  if (scoped) return scoped.isConstructorCalled === true && candidate === scoped.instance;
  if (candidate === entry) return true;
  return typeof entry === 'function' && candidate instanceof entry;
}

function describeEnhancer(entry: unknown): string {
  if (typeof entry === 'function') return entry.name || 'an anonymous class';
  const wrapper = entry as ProviderWrapper | undefined;
  if (wrapper && typeof wrapper.getInstanceByContextId === 'function')
    return wrapper.name ?? 'a provider';
  const name = (entry as { constructor?: Function } | undefined)?.constructor?.name;
  return name ? `an instance of ${name}` : String(entry);
}

function unresolved(routeClass: Function, where: string, missing: string): Error {
  return new Error(
    `${routeClass.name}, ${where}: ${missing} cannot be resolved, by this package or by Nest's ExternalContextCreator; the route is not started without it. A route has no instance of an enhancer added to the metadata after Nest scanned the application, nor of a request-scoped or transient global one`,
  );
}

function listOf(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

/** Name under which the handshake's guard context is cached; no method of the route runs yet. */
const HANDSHAKE_METHOD = '__wsRoutesHandshake__';
