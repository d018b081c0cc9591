import {
  Controller,
  Get,
  Header,
  type INestApplication,
  type NestApplicationOptions,
  type Type,
} from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';

/**
 * Browser tests drive Debian's Chromium through playwright-core: no browser is ever
 * downloaded. `.ci/run` installs the `chromium` package when it is missing; elsewhere
 * `apt-get install chromium` (or point CHROMIUM_PATH at another Chromium).
 */
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/**
 * Headless, and quiet on the network: without the `--disable-*` flags Chromium phones home
 * (component updates, sync, field trials) and waits on a network that is not there.
 */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/** Screenshots and other files a test run leaves for people to look at (gitignored). */
export const ARTIFACTS_DIR = resolve(process.cwd(), 'test-artifacts');

/**
 * `describe` for specs that need Chromium. Without it the specs are skipped with a loud
 * message, except in CI (`CI=true`), where a missing browser fails the run instead: a green
 * CI must mean the browser tests ran.
 */
export function describeWithChromium(name: string, body: () => void): void {
  if (existsSync(CHROMIUM_PATH)) {
    describe(name, body);
    return;
  }
  const message =
    `Chromium not found at ${CHROMIUM_PATH}: install it with \`apt-get install chromium\` ` +
    '(or set CHROMIUM_PATH)';
  if (process.env.CI === 'true') {
    describe(name, () => {
      it('needs Chromium (CI=true: a missing browser fails the run)', () => {
        throw new Error(message);
      });
    });
    return;
  }
  const bar = '!'.repeat(78);
  console.warn(`\n${bar}\n!! SKIPPED browser tests "${name}"\n!! ${message}\n${bar}\n`);
  describe.skip(name, body);
}

/**
 * One Chromium with a fresh profile (a new `--user-data-dir`, deleted on close). Pages get
 * the helpers of {@link installPageHelpers}; uncaught errors in any page are collected in
 * `pageErrors`, for the specs to assert there were none.
 */
export class TestBrowser {
  readonly pageErrors: string[] = [];

  private constructor(
    private readonly context: BrowserContext,
    private readonly userDataDir: string,
  ) {}

  static async launch(): Promise<TestBrowser> {
    const userDataDir = await mkdtemp(join(tmpdir(), 'ws-routes-chromium-'));
    try {
      const context = await chromium.launchPersistentContext(userDataDir, {
        executablePath: CHROMIUM_PATH,
        headless: true,
        args: CHROMIUM_FLAGS,
        viewport: { width: 900, height: 760 },
        locale: 'en-US',
        timeout: 30_000,
      });
      await context.addInitScript(installPageHelpers);
      return new TestBrowser(context, userDataDir);
    } catch (error) {
      await rm(userDataDir, { recursive: true, force: true });
      throw error;
    }
  }

  async newPage(url?: string): Promise<Page> {
    const page = await this.context.newPage();
    page.on('pageerror', (error) => this.pageErrors.push(`${page.url()}: ${error.message}`));
    if (url) await page.goto(url);
    return page;
  }

  /** Closes every page, so the next test starts with none (their sockets close too). */
  async closePages(): Promise<void> {
    await Promise.all(this.context.pages().map((page) => page.close()));
  }

  async close(): Promise<void> {
    try {
      await this.context.close();
    } finally {
      await rm(this.userDataDir, { recursive: true, force: true });
    }
  }
}

/** A running app for browser tests; `url()` for WebSockets, `http()` for pages and the API. */
export interface BrowserTestApp {
  app: INestApplication;
  port: number;
  url(path: string): string;
  http(path: string): string;
}

/** Creates a Nest application (not yet listening) with the options it is given. */
export type AppFactory = (options: NestApplicationOptions) => Promise<INestApplication>;

/** An {@link AppFactory} for a module on either platform. */
export function appOf(module: Type, platform: 'express' | 'fastify' = 'express'): AppFactory {
  return (options) =>
    platform === 'fastify'
      ? NestFactory.create(module, new FastifyAdapter(), options)
      : NestFactory.create(module, options);
}

/**
 * Starts an app on 127.0.0.1, on an ephemeral port or on `port` (to restart a server where
 * its pages expect it), without logs and with `forceCloseConnections`: Chromium opens spare
 * HTTP connections ahead of need, and without it `app.close()` waits until the server's
 * handshake timeout cuts them off (10 s).
 */
export async function startBrowserApp(create: AppFactory, port = 0): Promise<BrowserTestApp> {
  const app = await create({ logger: false, forceCloseConnections: true });
  await app.listen(port, '127.0.0.1');
  const { port: actual } = app.getHttpServer().address() as AddressInfo;
  return {
    app,
    port: actual,
    url: (path) => `ws://127.0.0.1:${actual}${path}`,
    http: (path) => `http://127.0.0.1:${actual}${path}`,
  };
}

/** A minimal same-origin page for tests that script WebSockets from the page. */
export const BLANK_PAGE = '<!doctype html><meta charset="utf-8"><title>ws test</title><body>';

/** Serves {@link BLANK_PAGE} at `/blank`, so page scripts run on the app's own origin. */
@Controller()
export class BlankPageController {
  @Get('blank')
  @Header('Content-Type', 'text/html; charset=utf-8')
  page(): string {
    return BLANK_PAGE;
  }
}

/** A plain HTTP server on another port of 127.0.0.1 serving {@link BLANK_PAGE}: another origin. */
export async function startOtherOrigin(): Promise<{ origin: string; close(): Promise<void> }> {
  const server = createServer((_request, response) => {
    response.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    response.end(BLANK_PAGE);
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((done) => {
        server.close(() => done());
        server.closeAllConnections();
      }),
  };
}

/** Saves a screenshot of `page` to `test-artifacts/<name>`; returns its path. */
export async function saveScreenshot(page: Page, name: string): Promise<string> {
  await mkdir(ARTIFACTS_DIR, { recursive: true });
  const path = join(ARTIFACTS_DIR, name);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** One event of a tracked WebSocket, as a page script records it. */
export interface PageWsEvent {
  type: 'open' | 'message' | 'error' | 'close';
  /** `ws.readyState` while the event is dispatched. */
  readyState: number;
  code?: number;
  reason?: string;
  wasClean?: boolean;
  /** For messages: `string`, `ArrayBuffer` or `Blob` (never crosses to Node as such). */
  data?: unknown;
}

/**
 * Runs in every page before its own scripts (`addInitScript`), so page scripts in the specs
 * can use, through `globalThis`:
 *
 * - `track(ws)`: records the socket's events in order; `.next(type)` resolves with the next
 *   event of that type not yet taken (already recorded or still to come), `.events` is all.
 * - `toBytes(data)`: `Uint8Array` of a binary message (`ArrayBuffer` or `Blob`).
 * - `toBase64(bytes)` / `fromBase64(text)`: to pass bytes to and from Node.
 *
 * This function is serialized into the page: it must not use anything from its module.
 */
export function installPageHelpers(): void {
  const g = globalThis as any;
  g.track = (ws: WebSocket) => {
    const events: any[] = [];
    const taken: Record<string, number> = {};
    const waiters: { type: string; resolve: (event: any) => void }[] = [];
    for (const type of ['open', 'message', 'error', 'close']) {
      ws.addEventListener(type, (event: any) => {
        const entry = {
          type,
          readyState: ws.readyState,
          code: event.code,
          reason: event.reason,
          wasClean: event.wasClean,
          data: event.data,
        };
        events.push(entry);
        const index = waiters.findIndex((waiter) => waiter.type === type);
        if (index !== -1) {
          taken[type] = (taken[type] ?? 0) + 1;
          waiters.splice(index, 1)[0].resolve(entry);
        }
      });
    }
    return {
      ws,
      events,
      next(type: string, timeout = 5000): Promise<any> {
        const ofType = events.filter((event) => event.type === type);
        const seen = taken[type] ?? 0;
        if (ofType.length > seen) {
          taken[type] = seen + 1;
          return Promise.resolve(ofType[seen]);
        }
        return new Promise((resolve, reject) => {
          const waiter = {
            type,
            resolve: (event: any) => {
              clearTimeout(timer);
              resolve(event);
            },
          };
          const timer = setTimeout(() => {
            waiters.splice(waiters.indexOf(waiter), 1);
            const got = events.map((event) => event.type).join(', ') || 'none';
            reject(new Error(`no "${type}" event within ${timeout} ms (events: ${got})`));
          }, timeout);
          waiters.push(waiter);
        });
      },
    };
  };
  g.toBytes = async (data: ArrayBuffer | Blob) =>
    new Uint8Array(data instanceof Blob ? await data.arrayBuffer() : data);
  g.toBase64 = (bytes: Uint8Array) => {
    let binary = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  };
  g.fromBase64 = (text: string) => Uint8Array.from(atob(text), (char) => char.charCodeAt(0));
}

/** Waits until the text of `selector` in `page` equals `expected` (or matches it). */
export async function waitForText(
  page: Page,
  selector: string,
  expected: string | RegExp,
  timeout = 5000,
): Promise<void> {
  const pattern = typeof expected === 'string' ? undefined : expected.source;
  const text = typeof expected === 'string' ? expected : undefined;
  try {
    await page.waitForFunction(
      ({ selector, pattern, text }) => {
        const actual = (globalThis as any).document.querySelector(selector)?.textContent;
        return (
          typeof actual === 'string' &&
          (pattern ? new RegExp(pattern).test(actual) : actual === text)
        );
      },
      { selector, pattern, text },
      { timeout },
    );
  } catch (error) {
    const actual = await page
      .locator(selector)
      .first()
      .textContent()
      .catch(() => null);
    throw new Error(
      `${selector} never showed ${String(expected)} within ${timeout} ms; it shows ${JSON.stringify(actual)}`,
      { cause: error },
    );
  }
}

/** The texts of the elements matching `selector`, in document order. */
export function textsOf(page: Page, selector: string): Promise<string[]> {
  return page.locator(selector).allTextContents();
}
