import { HttpException, type Logger } from '@nestjs/common';
import { ExecutionContextHost } from '@nestjs/core/helpers/execution-context-host.js';
import { WsException } from '@nestjs/websockets';
import { INTERNAL_ERROR_MESSAGE } from '../ws-routes.constants.js';
import type { WsConnection } from '../connection/ws-connection.js';
import { truncateCloseReason } from '../connection/truncate-utf8.js';
import type { BoundHandler, WsFilterBinding } from './ws-handler-factory.js';
import type { WsRoutesExceptionFilter } from './ws-routes-exception-filter.js';

/** The answer when even the error message could not be sent (its data would not serialize). */
const FALLBACK_ANSWER = { status: 'error', message: INTERNAL_ERROR_MESSAGE } as const;

/**
 * What happens when a handler fails: the route's exception filters first, then Nest 12's
 * `{"event":"exception",…}` message. Unexpected errors are logged and reach `@OnError`; the
 * client only ever sees a generic message for them, never a stack. Nothing here throws: a
 * filter that throws, or an answer that cannot be serialized (a `BigInt`, a cycle in a
 * `WsException`'s data), ends in the generic answer and a log line.
 */
export class ErrorPolicy {
  constructor(
    private readonly routeName: string,
    private readonly defaultFilter: WsRoutesExceptionFilter,
    private readonly logger: Logger,
    /** Runs `@OnError` for unexpected errors. */
    private readonly onUnexpected: (conn: WsConnection, error: unknown) => void,
  ) {}

  /** A message handler threw or rejected. */
  handlerFailed(
    conn: WsConnection,
    handler: BoundHandler,
    error: unknown,
    payload: unknown,
    pattern: string | undefined,
  ): void {
    const filter = selectFilter(handler.filters, error);
    if (filter) {
      try {
        const handled = filter.func(error, contextOf(conn, payload, pattern)) as unknown;
        if (isThenable(handled)) {
          handled.then(undefined, (filterError: unknown) =>
            this.answer(conn, filterError, payload, pattern),
          );
        }
        return;
      } catch (filterError) {
        error = filterError;
      }
    }
    this.answer(conn, error, payload, pattern);
  }

  /** The default answer: an `exception` message, generic for unexpected errors, which are logged. */
  answer(conn: WsConnection, error: unknown, payload: unknown, pattern: string | undefined): void {
    if (!isClientError(error)) this.onUnexpected(conn, error);
    try {
      this.defaultFilter.catch(error, contextOf(conn, payload, pattern));
    } catch (answerError) {
      this.logger.error(
        `${this.routeName}: the error answer to connection ${conn.id} could not be sent`,
        stackOf(answerError),
      );
      try {
        conn.emit('exception', FALLBACK_ANSWER);
      } catch {
        // Nothing left to tell the client; the log line above has the cause.
      }
    }
  }

  /** A lifecycle hook failed: there is no client to answer, so it is logged. */
  hookFailed(conn: WsConnection, handler: BoundHandler, error: unknown): void {
    this.logger.error(
      `${this.routeName}: ${handler.methodName}() failed for connection ${conn.id}`,
      stackOf(error),
    );
  }
}

function contextOf(
  conn: WsConnection,
  payload: unknown,
  pattern: string | undefined,
): ExecutionContextHost {
  const host = new ExecutionContextHost([conn, payload, pattern]);
  host.setType('ws');
  return host;
}

function selectFilter(filters: WsFilterBinding[], error: unknown): WsFilterBinding | undefined {
  return filters.find(
    ({ exceptionMetatypes }) =>
      !exceptionMetatypes.length || exceptionMetatypes.some((type) => error instanceof type),
  );
}

/** Errors written to be shown to the client; everything else is a bug that gets logged. */
export function isClientError(error: unknown): error is WsException | HttpException {
  return (
    error instanceof WsException || (error instanceof HttpException && error.getStatus() < 500)
  );
}

/** The close reason for a client error (at most 123 bytes). */
export function closeReasonOf(error: WsException | HttpException): string {
  return truncateCloseReason(error.message);
}

export function stackOf(error: unknown): string | undefined {
  if (error instanceof Error) return error.stack;
  try {
    return String(error);
  } catch {
    return 'an error that cannot be printed';
  }
}

export function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as PromiseLike<unknown> | null)?.then === 'function';
}
