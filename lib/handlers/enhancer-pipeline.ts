import {
  ForbiddenException,
  type ArgumentMetadata,
  type CallHandler,
  type CanActivate,
  type NestInterceptor,
  type PipeTransform,
} from '@nestjs/common';
import { ExecutionContextHost } from '@nestjs/core/helpers/execution-context-host.js';
import { WsException } from '@nestjs/websockets';
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
import { isThenable } from './error-policy.js';
import type { HandlerProgress, HandshakeInvoker, WsInvoker } from './ws-handler-factory.js';

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

/** What a message denied by a guard throws: what Nest's gateways throw, not an HTTP 403. */
function forbidden(): WsException {
  return new WsException(FORBIDDEN_MESSAGE);
}

/**
 * A handler behind its guards, pipes and interceptors, with the semantics of Nest's gateways
 * (guards in order, a denial is `WsException('Forbidden resource')`, pipes in order per
 * parameter, interceptors nested around the handler, `getType() === 'ws'`) but without their
 * per-message cost: everything that can be decided at start-up is, and the chain only turns
 * asynchronous where an enhancer or the handler actually returns a Promise. A synchronous
 * guard, pipe and interceptor around a synchronous handler answer within the same call.
 *
 * The result is the handler's (a value, a Promise or an Observable) or, with interceptors, the
 * outermost interceptor's Observable (or its Promise of one). `progress.handlerReturned()` is
 * told the handler's own result as soon as the method returns, before any interceptor sees it;
 * never when a guard denies or an interceptor answers without calling `next.handle()`.
 */
export function createPipelineInvoker(pipeline: EnhancerPipeline): WsInvoker {
  const { instance, callback, guards, interceptors, params, argsLength } = pipeline;
  const routeClass = instance.constructor;

  const call = (
    conn: WsConnection,
    payload: unknown,
    pattern: string | undefined,
    progress: HandlerProgress | undefined,
  ): unknown => {
    if (params.length === 0) {
      return returned(callback.call(instance, conn, payload, pattern), progress);
    }
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
    if (pending) {
      return Promise.all(pending).then(() => returned(callback.apply(instance, args), progress));
    }
    return returned(callback.apply(instance, args), progress);
  };

  const intercept = (
    context: ExecutionContextHost,
    conn: WsConnection,
    payload: unknown,
    pattern: string | undefined,
    progress: HandlerProgress | undefined,
    index: number,
  ): Observable<unknown> | Promise<Observable<unknown>> => {
    if (index === interceptors.length) return toObservable(call(conn, payload, pattern, progress));
    const next: CallHandler = {
      handle: () =>
        defer(() => flatten(intercept(context, conn, payload, pattern, progress, index + 1))),
    };
    return interceptors[index].intercept(context, next);
  };

  const proceed = (
    context: ExecutionContextHost | undefined,
    conn: WsConnection,
    payload: unknown,
    pattern: string | undefined,
    progress: HandlerProgress | undefined,
  ): unknown =>
    context && interceptors.length
      ? intercept(context, conn, payload, pattern, progress && once(progress), 0)
      : call(conn, payload, pattern, progress);

  /** The rest of the guards once one of them answered with a Promise or an Observable. */
  const guardAsync = async (
    context: ExecutionContextHost,
    answer: unknown,
    index: number,
  ): Promise<void> => {
    if (!(await settle(answer))) throw forbidden();
    for (let i = index + 1; i < guards.length; i++) {
      if (!(await settle(guards[i].canActivate(context)))) throw forbidden();
    }
  };

  return (conn, payload, pattern, progress) => {
    const context =
      guards.length || interceptors.length
        ? createContext([conn, payload, pattern], routeClass, callback)
        : undefined;
    for (let i = 0; i < guards.length; i++) {
      const answer = guards[i].canActivate(context!);
      if (answer === true) continue;
      if (answer === false) throw forbidden();
      return guardAsync(context!, answer, i).then(() =>
        proceed(context, conn, payload, pattern, progress),
      );
    }
    return proceed(context, conn, payload, pattern, progress);
  };
}

/**
 * The guards of the upgrade (global and class guards) with the request and a
 * `HandshakeResponse` as the context's arguments. Rejects with `ForbiddenException` on a
 * denial (an HTTP 403 refusal of the upgrade), or with whatever a guard threw.
 */
export function createHandshakeGuards(
  guards: CanActivate[],
  routeClass: Function,
  handler: Function,
): HandshakeInvoker {
  return async (request, response) => {
    if (!guards.length) return true;
    const context = createContext([request, response], routeClass, handler);
    for (const guard of guards) {
      if (!(await settle(guard.canActivate(context))))
        throw new ForbiddenException(FORBIDDEN_MESSAGE);
    }
    return true;
  };
}

/** Tells `progress` the handler's own result, and hands it on. */
function returned(result: unknown, progress: HandlerProgress | undefined): unknown {
  progress?.handlerReturned(result);
  return result;
}

/** An interceptor may subscribe to `next.handle()` more than once (a retry): report the first. */
function once(progress: HandlerProgress): HandlerProgress {
  let told = false;
  return {
    handlerReturned(result) {
      if (told) return;
      told = true;
      progress.handlerReturned(result);
    },
  };
}

function createContext(
  args: unknown[],
  routeClass: Function,
  handler: Function,
): ExecutionContextHost {
  const context = new ExecutionContextHost(args, routeClass as never, handler);
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
