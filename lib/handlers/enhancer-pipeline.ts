import {
  ForbiddenException,
  type ArgumentMetadata,
  type CallHandler,
  type CanActivate,
  type NestInterceptor,
  type PipeTransform,
} from '@nestjs/common';
import { ExecutionContextHost } from '@nestjs/core/helpers/execution-context-host.js';
import {
  defer,
  from,
  isObservable,
  lastValueFrom,
  mergeAll,
  mergeMap,
  of,
  type Observable,
} from 'rxjs';
import type { WsConnection } from '../connection/ws-connection.js';
import type { WsInvoker } from './ws-handler-factory.js';

/** One parameter of a handler: where its value comes from and the pipes it goes through. */
export interface PipelineParam {
  index: number;
  /** Reads the raw value for one message (a custom decorator's factory may return a Promise). */
  extract: (conn: WsConnection, payload: unknown, pattern: string | undefined) => unknown;
  /** What pipes see as their second argument (`type` is `'body'`, `'param'`, `'query'`, `'custom'`). */
  metadata: ArgumentMetadata;
  /** Global, class and method pipes, then the parameter's own. */
  pipes: PipeTransform[];
}

/** Everything a handler needs per message, resolved once at start-up. */
export interface EnhancerPipeline {
  instance: object;
  callback: Function;
  guards: CanActivate[];
  interceptors: NestInterceptor[];
  params: PipelineParam[];
  argsLength: number;
}

/** The message Nest gives a guard's denial. */
const FORBIDDEN_MESSAGE = 'Forbidden resource';

/**
 * A handler behind its guards, pipes and interceptors, with the semantics of Nest's
 * `ExternalContextCreator` (guards in order, a denial is `ForbiddenException`, pipes in order per
 * parameter, interceptors nested around the handler, `getType() === 'ws'`) but without its
 * per-message cost: everything that can be decided at start-up is, and the chain only turns
 * asynchronous where an enhancer or the handler actually returns a Promise. A synchronous
 * guard, pipe and interceptor around a synchronous handler answer within the same call.
 *
 * The result is the handler's (a value, a Promise or an Observable) or, with interceptors, the
 * outermost interceptor's Observable (or its Promise of one).
 */
export function createPipelineInvoker(pipeline: EnhancerPipeline): WsInvoker {
  const { instance, callback, guards, interceptors, params, argsLength } = pipeline;
  const routeClass = instance.constructor;

  const call = (conn: WsConnection, payload: unknown, pattern: string | undefined): unknown => {
    if (params.length === 0) return callback.call(instance, conn, payload, pattern);
    const args: unknown[] = new Array(argsLength);
    let pending: PromiseLike<void>[] | undefined;
    for (const param of params) {
      const value = transform(param, param.extract(conn, payload, pattern));
      if (isThenable(value)) {
        (pending ??= []).push(value.then((resolved) => void (args[param.index] = resolved)));
      } else {
        args[param.index] = value;
      }
    }
    if (pending) return Promise.all(pending).then(() => callback.apply(instance, args));
    return callback.apply(instance, args);
  };

  const intercept = (
    context: ExecutionContextHost,
    conn: WsConnection,
    payload: unknown,
    pattern: string | undefined,
    index: number,
  ): Observable<unknown> | Promise<Observable<unknown>> => {
    if (index === interceptors.length) return toObservable(call(conn, payload, pattern));
    const next: CallHandler = {
      handle: () => defer(() => flatten(intercept(context, conn, payload, pattern, index + 1))),
    };
    return interceptors[index].intercept(context, next);
  };

  const proceed = (
    context: ExecutionContextHost | undefined,
    conn: WsConnection,
    payload: unknown,
    pattern: string | undefined,
  ): unknown =>
    context && interceptors.length
      ? intercept(context, conn, payload, pattern, 0)
      : call(conn, payload, pattern);

  /** The rest of the guards once one of them answered with a Promise or an Observable. */
  const guardAsync = async (
    context: ExecutionContextHost,
    answer: unknown,
    index: number,
  ): Promise<void> => {
    if (!(await settle(answer))) throw new ForbiddenException(FORBIDDEN_MESSAGE);
    for (let i = index + 1; i < guards.length; i++) {
      if (!(await settle(guards[i].canActivate(context))))
        throw new ForbiddenException(FORBIDDEN_MESSAGE);
    }
  };

  return (conn, payload, pattern) => {
    const context =
      guards.length || interceptors.length
        ? createContext(conn, payload, pattern, routeClass, callback)
        : undefined;
    for (let i = 0; i < guards.length; i++) {
      const answer = guards[i].canActivate(context!);
      if (answer === true) continue;
      if (answer === false) throw new ForbiddenException(FORBIDDEN_MESSAGE);
      return guardAsync(context!, answer, i).then(() => proceed(context, conn, payload, pattern));
    }
    return proceed(context, conn, payload, pattern);
  };
}

function createContext(
  conn: WsConnection,
  payload: unknown,
  pattern: string | undefined,
  routeClass: Function,
  handler: Function,
): ExecutionContextHost {
  const context = new ExecutionContextHost([conn, payload, pattern], routeClass as never, handler);
  context.setType('ws');
  return context;
}

/** Runs a parameter's pipes in order; synchronous until a pipe (or the value) is a Promise. */
function transform(param: PipelineParam, value: unknown, start = 0): unknown {
  if (isThenable(value)) return value.then((resolved) => transform(param, resolved, start));
  const { pipes, metadata } = param;
  for (let i = start; i < pipes.length; i++) {
    value = pipes[i].transform(value, metadata);
    if (isThenable(value)) return value.then((resolved) => transform(param, resolved, i + 1));
  }
  return value;
}

/** What `CallHandler.handle()` emits: the handler's values, whatever form its result took. */
function toObservable(result: unknown): Observable<unknown> {
  if (isObservable(result)) return result;
  if (isThenable(result)) {
    return from(result as PromiseLike<unknown>).pipe(
      mergeMap((value) => (isObservable(value) ? value : of(value))),
    );
  }
  return of(result);
}

/** An interceptor may return a Promise of its Observable (an `async intercept()`). */
function flatten(result: Observable<unknown> | Promise<Observable<unknown>>): Observable<unknown> {
  return isObservable(result) ? result : from(result).pipe(mergeAll());
}

/** A guard's answer that was not a plain boolean: a Promise, an Observable, or a truthy value. */
async function settle(answer: unknown): Promise<unknown> {
  const value = await answer;
  return isObservable(value) ? lastValueFrom(value) : value;
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    value !== null &&
    (typeof value === 'object' || typeof value === 'function') &&
    typeof (value as PromiseLike<unknown>).then === 'function'
  );
}
