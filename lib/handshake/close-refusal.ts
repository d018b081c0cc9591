import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type ServerOptions, type WebSocket } from 'ws';
import { truncateCloseReason } from '../connection/truncate-utf8.js';
import { WS_ROUTES_DEFAULTS } from '../ws-routes.constants.js';
import { offeredProtocols } from './select-protocol.js';
import { ignoreError, releaseSocketErrors } from './socket-errors.js';

/** The close code of a refusal with HTTP `status`: RFC 6455 §7.4.2 leaves 4000–4999 to us. */
export function refusalCloseCode(status: number): number {
  return 4000 + status;
}

/** What one close-refusal's 101 says besides the protocol's own headers. */
interface Answer {
  protocol: string | false;
  headers: readonly string[];
}

/**
 * Refusals a browser page can read (`refuse: 'close'`): the handshake is completed with a 101
 * and closed at once with `4000 + status` and the reason. The 101 costs a `ws` socket, so:
 * - nothing else is set up: no registry entry, no dispatcher, no heartbeat, no deflate, a
 *   125-byte `maxPayload` for whatever the client sends before it reads the close;
 * - the client has `refusalCloseTimeout` to answer the close, then its socket is destroyed;
 * - at most `maxClosingRefusals` wait at once; beyond, {@link refuse} returns `false` and the
 *   caller answers with the HTTP status, which costs nothing after it is written. A flood of
 *   refused upgrades that never read holds at most that many sockets, for at most that long.
 */
export class CloseRefusals {
  private readonly wss: WebSocketServer;
  /** Refusals waiting for the client's close, to destroy at shutdown. */
  private readonly waiting = new Set<Duplex>();
  private readonly answers = new WeakMap<IncomingMessage, Answer>();

  constructor(
    private readonly max: number = WS_ROUTES_DEFAULTS.maxClosingRefusals,
    closeTimeout: number = WS_ROUTES_DEFAULTS.refusalCloseTimeout,
  ) {
    // `closeTimeout` is ws's (8.23, our minimum); @types/ws does not list it yet.
    const options: ServerOptions & { closeTimeout: number } = {
      noServer: true,
      clientTracking: false,
      perMessageDeflate: false,
      maxPayload: 125,
      closeTimeout,
      handleProtocols: (_offered, request) => this.answers.get(request)?.protocol ?? false,
    };
    this.wss = new WebSocketServer(options);
    this.wss.on('headers', (lines: string[], request: IncomingMessage) => {
      const answer = this.answers.get(request);
      if (answer) for (const line of answer.headers) lines.push(line);
    });
  }

  /** Refusals whose socket is still open. */
  get size(): number {
    return this.waiting.size;
  }

  /**
   * Answers `request` with a 101 and the close `code`/`reason`, and `true`; or `false` when it
   * cannot: too many are waiting already, or the request's `Sec-WebSocket-Protocol` is
   * malformed (no 101 could satisfy it). `protocol` is the route's choice; without one the
   * client's first offer is echoed, since a browser fails a 101 that names none of its offers
   * (Chromium also fails one that names none at all) before it reads any close.
   */
  refuse(
    request: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    code: number,
    reason: string,
    protocol: string | false,
    headers: readonly string[],
  ): boolean {
    if (this.waiting.size >= this.max || !socket.writable) return false;
    const offered = offeredProtocols(request);
    if (!offered) return false;
    this.answers.set(request, { protocol: protocol || (offered[0] ?? false), headers });
    this.waiting.add(socket);
    socket.once('close', () => this.waiting.delete(socket));
    try {
      this.wss.handleUpgrade(request, socket, head, (ws: WebSocket) => {
        releaseSocketErrors(socket); // ws listens now
        ws.on('error', ignoreError);
        ws.close(code, truncateCloseReason(reason));
      });
    } finally {
      this.answers.delete(request);
    }
    return true;
  }

  /** At shutdown: refusals still waiting for their client's close go now. */
  dropAll(): void {
    for (const socket of this.waiting) socket.destroy();
  }
}
