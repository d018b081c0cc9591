import type { PipeTransform, Type } from '@nestjs/common';
import { PARAM_ARGS_METADATA } from '@nestjs/websockets/constants.js';

/**
 * Parameter kinds of this package. They share the metadata key of `@ConnectedSocket()` and
 * `@MessageBody()` (`WsParamtype` 0, 3 and 13), so numbers start well above those.
 */
export enum WsRouteParamtype {
  PARAM = 100,
  QUERY = 101,
  HEADERS = 102,
  REQUEST = 103,
}

type PipeArg = PipeTransform | Type<PipeTransform>;

function paramDecorator(
  type: WsRouteParamtype,
  data: string | undefined,
  pipes: PipeArg[],
): ParameterDecorator {
  return (target, key, index) => {
    const owner = target.constructor;
    const existing = Reflect.getMetadata(PARAM_ARGS_METADATA, owner, key!) ?? {};
    Reflect.defineMetadata(
      PARAM_ARGS_METADATA,
      { ...existing, [`${type}:${index}`]: { index, data, pipes } },
      owner,
      key!,
    );
  };
}

function split(
  nameOrPipe: string | PipeArg | undefined,
  pipes: PipeArg[],
): [string | undefined, PipeArg[]] {
  return typeof nameOrPipe === 'string' || nameOrPipe === undefined
    ? [nameOrPipe, pipes]
    : [undefined, [nameOrPipe, ...pipes]];
}

/**
 * A path parameter of the route (`@WsRoute('/rooms/:room')` → `@WsParam('room')`), or all of
 * them as an object without a name. Pipes apply: `@WsParam('id', ParseIntPipe)`.
 */
export function WsParam(name?: string | PipeArg, ...pipes: PipeArg[]): ParameterDecorator {
  return paramDecorator(WsRouteParamtype.PARAM, ...split(name, pipes));
}

/**
 * A query-string value of the upgrade URL (`?token=…` → `@WsQuery('token')`), or the whole
 * query object. A repeated key gives an array.
 */
export function WsQuery(name?: string | PipeArg, ...pipes: PipeArg[]): ParameterDecorator {
  return paramDecorator(WsRouteParamtype.QUERY, ...split(name, pipes));
}

/** A header of the upgrade request (lower-case name), or all headers. */
export function WsHeaders(name?: string): ParameterDecorator {
  return paramDecorator(WsRouteParamtype.HEADERS, name?.toLowerCase(), []);
}

/**
 * The upgrade request (`IncomingMessage`) of the connection: in `@OnOpen`; elsewhere only on routes
 * with `keepUpgradeRequest` (otherwise `undefined`).
 */
export function WsRequest(): ParameterDecorator {
  return paramDecorator(WsRouteParamtype.REQUEST, undefined, []);
}
