import { WebSocket, type ClientOptions } from 'ws';

export type Received = string | Buffer;

/** A real `ws` client that queues what it receives, for step-by-step assertions. */
export class TestClient {
  readonly received: Received[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  private waiters: ((message: Received) => void)[] = [];

  private constructor(readonly socket: WebSocket) {
    socket.on('message', (data: Buffer, isBinary: boolean) => {
      const message = isBinary ? data : data.toString();
      const waiter = this.waiters.shift();
      if (waiter) waiter(message);
      else this.received.push(message);
    });
    this.closed = new Promise((resolve) =>
      socket.on('close', (code: number, reason: Buffer) =>
        resolve({ code, reason: reason.toString() }),
      ),
    );
    socket.on('error', () => undefined);
  }

  static open(
    url: string,
    protocols?: string | string[],
    options?: ClientOptions,
  ): Promise<TestClient> {
    const socket = new WebSocket(url, protocols, options);
    const client = new TestClient(socket);
    return new Promise((resolve, reject) => {
      socket.once('open', () => resolve(client));
      socket.once('unexpected-response', (_request, response) =>
        reject(new Error(`unexpected response ${response.statusCode}`)),
      );
      socket.once('error', reject);
    });
  }

  /** The next message, or a rejection after `timeout` ms. */
  next(timeout = 3000): Promise<Received> {
    const queued = this.received.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((waiter) => waiter !== done);
        reject(new Error(`no message within ${timeout} ms`));
      }, timeout);
      const done = (message: Received) => {
        clearTimeout(timer);
        resolve(message);
      };
      this.waiters.push(done);
    });
  }

  async nextJson<T = any>(timeout?: number): Promise<T> {
    const message = await this.next(timeout);
    return JSON.parse(message.toString()) as T;
  }

  /** Resolves `true` if nothing arrives within `ms`. */
  async silentFor(ms: number): Promise<boolean> {
    try {
      const message = await this.next(ms);
      this.received.unshift(message);
      return false;
    } catch {
      return true;
    }
  }

  send(data: string | Buffer | object): void {
    this.socket.send(
      typeof data === 'string' || Buffer.isBuffer(data) ? data : JSON.stringify(data),
    );
  }

  emit(event: string, data?: unknown): void {
    this.socket.send(JSON.stringify({ event, data }));
  }

  close(code?: number, reason?: string): Promise<{ code: number; reason: string }> {
    this.socket.close(code, reason);
    return this.closed;
  }
}

/** The HTTP status a refused upgrade got, with its body. */
export function refusedUpgrade(
  url: string,
  options?: ClientOptions & { protocols?: string[] },
): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, options?.protocols, options);
    socket.on('open', () => {
      socket.terminate();
      reject(new Error('upgrade was accepted'));
    });
    socket.on('unexpected-response', (_request, response) => {
      let body = '';
      response.on('data', (chunk: Buffer) => (body += chunk.toString()));
      response.on('end', () =>
        resolve({ status: response.statusCode ?? 0, body, headers: response.headers }),
      );
    });
    socket.on('error', (error) => reject(error));
  });
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `condition` every 10 ms until it holds or `timeout` passes. */
export async function eventually(condition: () => boolean, timeout = 3000): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await delay(10);
  }
}

/** What a `ws` client saw of an upgrade refused with a close (`refuse: 'close'`). */
export interface ClosedRefusal {
  status: number;
  opened: boolean;
  protocol: string;
  headers: Record<string, unknown>;
  code: number;
  reason: string;
  /** A close frame arrived (the code is not 1006). */
  clean: boolean;
}

/** Opens `url` and resolves with the 101 and the close that follow; rejects on an HTTP answer. */
export function refusedWithClose(
  url: string,
  options: ClientOptions & { protocols?: string[] } = {},
): Promise<ClosedRefusal> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, options.protocols, options);
    let status = 0;
    let headers: Record<string, unknown> = {};
    let opened = false;
    socket.on('upgrade', (response) => {
      status = response.statusCode ?? 0;
      headers = response.headers;
    });
    socket.on('open', () => (opened = true));
    socket.on('unexpected-response', (_request, response) =>
      reject(new Error(`HTTP ${response.statusCode} instead of a 101 and a close`)),
    );
    socket.on('error', reject);
    socket.on('close', (code, reason) =>
      resolve({
        status,
        opened,
        protocol: socket.protocol,
        headers,
        code,
        reason: reason.toString(),
        clean: code !== 1006,
      }),
    );
  });
}
