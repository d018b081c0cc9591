/**
 * Replay of missed broadcasts for a route (`@WsRoute(path, { recovery })`): a page that
 * reconnects with the id of the last message it saw (`?lastEventId=<id>`) gets every
 * broadcast it missed, in order, exactly once, then live traffic.
 */
export interface RecoveryOptions {
  /** Milliseconds a broadcast stays replayable. Default 120,000 (two minutes). */
  window?: number;
  /** Broadcasts kept per route; a page that missed more is told `too_many`. Default 1,000. */
  maxMessages?: number;
}

/** The defaults of {@link RecoveryOptions}. */
export const RECOVERY_DEFAULTS = { window: 120_000, maxMessages: 1_000 } as const;

/** The query parameter a reconnecting page presents its last id in. */
export const LAST_EVENT_ID_PARAM = 'lastEventId';

/** Why a connection's missed broadcasts could not be replayed (then none are). */
export type RecoveryFailure =
  /** The id is older than `window`: its successors are gone. */
  | 'too_old'
  /**
   * More than `maxMessages` broadcasts were missed, or more bytes than the connection may have
   * queued (`maxBufferedAmount`): a replay is sent whole or not at all.
   */
  | 'too_many'
  /** The id is not one this stream gave (malformed, or from the future). */
  | 'unknown_position'
  /** The history the id belongs to is gone (the server restarted). */
  | 'history_lost';
