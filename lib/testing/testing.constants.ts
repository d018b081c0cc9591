/** Defaults of the testing kit; every one can be overridden per client and per call. */
export const WS_TEST_DEFAULTS = {
  /** How long an expectation, a connect or a close waits before it fails (ms). */
  timeout: 2000,
  /** How many characters of a message a failure quotes before it cuts. */
  quoteLength: 300,
  /** Body bytes of a refused upgrade kept for the assertion; the rest is discarded. */
  maxRefusalBody: 64 * 1024,
} as const;
