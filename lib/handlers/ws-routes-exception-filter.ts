import { HttpException } from '@nestjs/common';
import { BaseWsExceptionFilter, WsException } from '@nestjs/websockets';

/** The cause Nest attaches to exception messages, without echoing binary payloads back. */
function causeOf(pattern: string | undefined, data: unknown): { pattern?: string; data?: unknown } {
  return Buffer.isBuffer(data) ? { pattern } : { pattern, data };
}

/**
 * What a client receives when a handler throws and no filter of the application handled it:
 * the message Nest 12 gateways send, `{"event":"exception","data":{"status":"error",…}}`.
 *
 * - `WsException`: its error (a string becomes `message`, an object is sent as it is).
 * - `HttpException` (a `ValidationPipe`'s `BadRequestException`, a guard's
 *   `ForbiddenException`, …): its response message and status code, since these are written
 *   to be shown to clients.
 * - Anything else: `"Internal server error"`, no stack trace; the error is logged.
 */
export class WsRoutesExceptionFilter extends BaseWsExceptionFilter {
  constructor() {
    super({ includeCause: true, causeFactory: causeOf });
  }

  override handleError(
    client: any,
    exception: unknown,
    cause: { pattern: string; data: unknown },
  ): void {
    if (exception instanceof HttpException) {
      if (exception.getStatus() >= 500) BaseWsExceptionFilter.logger.error(exception);
      const response = exception.getResponse();
      const message =
        typeof response === 'object' && response !== null && 'message' in response
          ? (response as { message: unknown }).message
          : exception.message;
      return super.handleError(
        client,
        new WsException({
          status: 'error',
          statusCode: exception.getStatus(),
          message,
          cause: causeOf(cause.pattern, cause.data),
        }),
        cause,
      );
    }
    return super.handleError(client, exception, cause);
  }
}
