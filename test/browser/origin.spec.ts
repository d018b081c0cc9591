import 'reflect-metadata';
import { Injectable, Module, type Type } from '@nestjs/common';
import type { Page } from 'playwright-core';
import {
  OnMessage,
  OnOpen,
  WsConnection,
  WsRoute,
  WsRoutesModule,
  type OriginPolicy,
} from '../../lib/index.js';
import {
  appOf,
  BlankPageController,
  describeWithChromium,
  startBrowserApp,
  startOtherOrigin,
  TestBrowser,
  type BrowserTestApp,
} from '../utils/browser.js';
import { refusedUpgrade } from '../utils/ws-client.js';

/**
 * The origin check as a browser meets it. A page on another origin (here another port of
 * 127.0.0.1) is refused by default with 403 before the 101, which a page script only sees as
 * `onerror` and then `onclose` with 1006; once the module or the route allows that origin, the
 * same page connects.
 */

@Injectable()
class Opened {
  readonly paths: string[] = [];
}

function moduleWith(origins: OriginPolicy | undefined): Type {
  @WsRoute('/echo')
  class EchoRoute {
    constructor(private readonly opened: Opened) {}
    @OnOpen() open(conn: WsConnection) {
      this.opened.paths.push(conn.path);
    }
    @OnMessage() echo(_conn: WsConnection, body: string) {
      return `echo: ${body}`;
    }
  }

  /** Open to every origin, whatever the module says. */
  @WsRoute('/public', { origins: '*' })
  class PublicRoute {
    constructor(private readonly opened: Opened) {}
    @OnOpen() open(conn: WsConnection) {
      this.opened.paths.push(conn.path);
    }
    @OnMessage() echo(_conn: WsConnection, body: string) {
      return `public: ${body}`;
    }
  }

  @Module({
    imports: [WsRoutesModule.forRoot(origins === undefined ? {} : { origins })],
    controllers: [BlankPageController],
    providers: [Opened, EchoRoute, PublicRoute],
  })
  class OriginModule {}
  return OriginModule;
}

/** Opens a WebSocket from the page; tells which events it got and how it closed, or the echo. */
function connect(page: Page, url: string) {
  return page.evaluate(async (url) => {
    const ws = new WebSocket(url);
    const trace = (globalThis as any).track(ws);
    // Whichever comes first, open or close; the trace keeps every event for later.
    const first: any = await new Promise((resolve) => {
      ws.addEventListener('open', resolve, { once: true });
      ws.addEventListener('close', resolve, { once: true });
    });
    if (first.type === 'open') {
      ws.send('hi');
      const echo = await trace.next('message');
      ws.close();
      await trace.next('close');
      return { opened: true, echo: echo.data, events: [] as string[], code: 0, wasClean: true };
    }
    const types = trace.events.map((event: { type: string }) => event.type);
    return { opened: false, echo: '', events: types, code: first.code, wasClean: first.wasClean };
  }, url);
}

describeWithChromium('the origin check, from pages in Chromium', () => {
  let browser: TestBrowser;
  let other: { origin: string; close(): Promise<void> };
  let t: BrowserTestApp | undefined;
  beforeAll(async () => {
    browser = await TestBrowser.launch();
    other = await startOtherOrigin();
  });
  afterAll(async () => {
    await other?.close();
    await browser?.close();
  });
  afterEach(async () => {
    await browser.closePages();
    await t?.app.close();
    t = undefined;
    expect(browser.pageErrors).toEqual([]);
  });

  it('refuses a page from another origin by default: onerror, then onclose 1006', async () => {
    t = await startBrowserApp(appOf(moduleWith(undefined)));
    const page = await browser.newPage(`${other.origin}/`);
    expect(await connect(page, t.url('/echo'))).toEqual({
      opened: false,
      echo: '',
      events: ['error', 'close'],
      code: 1006,
      wasClean: false,
    });
    expect(t.app.get(Opened).paths).toEqual([]);
    // What the page cannot see: the server answered the upgrade with 403.
    const refused = await refusedUpgrade(t.url('/echo'), { origin: other.origin });
    expect(refused.status).toBe(403);

    // The same app, from a page of its own origin: accepted.
    const own = await browser.newPage(t.http('/blank'));
    expect(await connect(own, t.url('/echo'))).toMatchObject({ opened: true, echo: 'echo: hi' });
    // A route that allows every origin accepts the other page too.
    expect(await connect(page, t.url('/public'))).toMatchObject({ echo: 'public: hi' });
    expect(t.app.get(Opened).paths).toEqual(['/echo', '/public']);
  });

  it('accepts that page once its origin is in the `origins` list', async () => {
    t = await startBrowserApp(appOf(moduleWith([other.origin])));
    const page = await browser.newPage(`${other.origin}/`);
    expect(await connect(page, t.url('/echo'))).toEqual({
      opened: true,
      echo: 'echo: hi',
      events: [],
      code: 0,
      wasClean: true,
    });
    // The list replaces the same-origin default; the app's own pages are not in it.
    const own = await browser.newPage(t.http('/blank'));
    expect(await connect(own, t.url('/echo'))).toMatchObject({ opened: false, code: 1006 });
  });

  it('accepts it through a RegExp or an async function too', async () => {
    const port = new URL(other.origin).port;
    t = await startBrowserApp(appOf(moduleWith([new RegExp(`^http://127\\.0\\.0\\.1:${port}$`)])));
    const page = await browser.newPage(`${other.origin}/`);
    expect(await connect(page, t.url('/echo'))).toMatchObject({ opened: true });
    await t.app.close();

    const seen: string[] = [];
    const policy = async (origin: string) => {
      seen.push(origin);
      return origin === other.origin;
    };
    t = await startBrowserApp(appOf(moduleWith(policy)));
    expect(await connect(page, t.url('/echo'))).toMatchObject({ opened: true });
    expect(seen).toEqual([other.origin]);
  });
});
