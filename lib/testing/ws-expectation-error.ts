import type { WsCloseEvent, WsTestFrame } from './ws-test-frame.js';

/**
 * A failed expectation of the testing kit. A plain `Error`, so every runner (jest, vitest,
 * `node:test`) reports its message as it is. It is created when the expectation is called, so
 * its stack points at the test's line, not at the timer that gave up.
 */
export class WsExpectationError extends Error {
  /** The message that failed the expectation, if one did. */
  received: WsTestFrame | undefined;
  /** How the connection closed, if it had by then. */
  close: WsCloseEvent | undefined;

  /** @internal `above`: the kit's function the test called; the stack starts at its caller. */
  constructor(above?: Function) {
    super('');
    this.name = 'WsExpectationError';
    if (above) Error.captureStackTrace(this, above);
  }

  /**
   * Fills in the message (V8 reads it lazily for the stack's first line) and returns the error.
   * The first failure of an expectation is its failure: later calls change nothing.
   */
  with(message: string, details: { received?: WsTestFrame; close?: WsCloseEvent } = {}): this {
    if (this.message) return this;
    this.message = message;
    this.received = details.received;
    this.close = details.close;
    return this;
  }
}
