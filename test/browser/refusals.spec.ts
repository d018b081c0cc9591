import 'reflect-metadata';
import {
  Injectable,
  Module,
  UnauthorizedException,
  UseGuards,
  type CanActivate,
  type ExecutionContext,
} from '@nestjs/common';
import type { Page } from 'playwright-core';
import {
  CloseCode,
  OnClose,
  OnOpen,
  WsConnectionRegistry,
  WsRoute,
  WsRoutesModule,
  type HandshakeRequest,
} from '../../lib/index.js';
import {
  appOf,
  BlankPageController,
  describeWithChromium,
  startBrowserApp,
  TestBrowser,
  type BrowserTestApp,
} from '../utils/browser.js';
import { eventually, TestClient } from '../utils/ws-client.js';

/**
 * What a page sees of a refused upgrade, in both modes: with `refuse: 'http'` only `onerror`
 * and 1006 (scripts cannot read the status), with `refuse: 'close'` the 101 of the refusal
 * (`onopen`) and a clean close 4401/4403/4503 with the reason, so it can tell "log in again"
 * from "server down".
 */

const handled: string[] = [];

/** No token: 401 "Log in again"; `?token=ok`: in; anything else: 403. */
@Injectable()
class TokenGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const token = context.switchToHttp().getRequest<HandshakeRequest>().query.token;
    if (token === undefined) throw new UnauthorizedException('Log in again');
    return token === 'ok';
  }
}

@WsRoute('/as-http', { subprotocols: ['app.v1'] })
@UseGuards(TokenGuard)
class HttpRoute {
  @OnOpen() open() {
    handled.push('open');
  }
  @OnClose() close() {
    handled.push('close');
  }
}

@WsRoute('/as-close', { refuse: 'close', subprotocols: ['app.v1'], maxConnections: 1 })
@UseGuards(TokenGuard)
class CloseRoute {
  @OnOpen() open() {
    handled.push('open');
    return 'welcome';
  }
  @OnClose() close() {
    handled.push('close');
  }
}

@Module({
  imports: [WsRoutesModule.forRoot()],
  controllers: [BlankPageController],
  providers: [TokenGuard, HttpRoute, CloseRoute],
})
class RefusalsModule {}

/** The page opens `url` offering app.v1 and reports every event until the close. */
function pageSees(page: Page, url: string): Promise<string[]> {
  return page.evaluate(async (url) => {
    const trace = (globalThis as any).track(new WebSocket(url, ['app.v1']));
    await trace.next('close');
    return trace.events.map(
      (event: { type: string; code?: number; reason?: string; wasClean?: boolean }) =>
        event.type === 'close'
          ? `close ${event.code} '${event.reason}' ${event.wasClean ? 'clean' : 'not clean'}`
          : event.type,
    );
  }, url);
}

describeWithChromium('refusals a page can read (Chromium)', () => {
  let browser: TestBrowser;
  let t: BrowserTestApp;
  let page: Page;
  beforeAll(async () => {
    browser = await TestBrowser.launch();
    t = await startBrowserApp(appOf(RefusalsModule));
    page = await browser.newPage(t.http('/blank'));
  });
  afterAll(async () => {
    await page?.close();
    await t?.app.close();
    await browser?.close();
  });
  beforeEach(() => (handled.length = 0));
  afterEach(() => {
    expect(browser.pageErrors).toEqual([]);
    expect(t.app.get(WsConnectionRegistry).size).toBe(0);
  });

  it("refuse: 'http': the page sees onerror and 1006, whatever the reason", async () => {
    expect(await pageSees(page, t.url('/as-http'))).toEqual(['error', "close 1006 '' not clean"]);
    expect(await pageSees(page, t.url('/as-http?token=bad'))).toEqual([
      'error',
      "close 1006 '' not clean",
    ]);
    expect(handled).toEqual([]);
  });

  it("refuse: 'close': the page reads 4401 and 4403 with the reason, cleanly", async () => {
    expect(await pageSees(page, t.url('/as-close'))).toEqual([
      'open',
      `close ${CloseCode.Unauthorized} 'Log in again' clean`,
    ]);
    expect(await pageSees(page, t.url('/as-close?token=bad'))).toEqual([
      'open',
      `close ${CloseCode.Forbidden} 'Forbidden resource' clean`,
    ]);
    // The refusal's 101 named the protocol the page offered, or Chromium would have failed it.
    const protocol = await page.evaluate(async (url) => {
      const ws = new WebSocket(url, ['app.v1']);
      await new Promise((resolve) => (ws.onclose = resolve));
      return ws.protocol;
    }, t.url('/as-close'));
    expect(protocol).toBe('app.v1');
    expect(handled).toEqual([]);
  });

  it("refuse: 'close': a full route is 4503, which a page can tell from a login problem", async () => {
    const inside = await TestClient.open(t.url('/as-close?token=ok'), ['app.v1']);
    expect(await inside.next()).toBe('welcome');
    expect(await pageSees(page, t.url('/as-close?token=ok'))).toEqual([
      'open',
      `close ${CloseCode.ServiceUnavailable} 'Too many connections' clean`,
    ]);
    await inside.close();
    const registry = t.app.get(WsConnectionRegistry);
    await eventually(() => registry.size === 0);
    expect(handled).toEqual(['open', 'close']);
  });
});
