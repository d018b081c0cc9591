import 'reflect-metadata';
import type { Page } from 'playwright-core';
import { WsConnectionRegistry } from '../../lib/index.js';
import { createSampleApp, type SamplePlatform } from '../../sample/create-sample-app.js';
import {
  describeWithChromium,
  saveScreenshot,
  startBrowserApp,
  TestBrowser,
  textsOf,
  waitForText,
  type BrowserTestApp,
} from '../utils/browser.js';
import { refusedWithClose } from '../utils/ws-client.js';

/**
 * The chat of `sample/` in real pages: rooms, the chat.v1 subprotocol, join and leave notices,
 * lines that go to everyone else in the room, and the handshake guard that wants a name, whose
 * refusals the page reads (`refuse: 'close'`).
 */

/** The chat page of `name` in `room`, once it is in. */
async function join(browser: TestBrowser, t: BrowserTestApp, name: string, room: string) {
  const page = await browser.newPage(t.http(`/chat?name=${name}&room=${room}`));
  await waitForText(page, '#state', '1 OPEN');
  await waitForText(page, '#current-room', room);
  return page;
}

/** Waits until a line of the page's log ends with `text` (lines start with the time). */
async function waitForLine(page: Page, text: string): Promise<void> {
  try {
    await page.locator('#log li').filter({ hasText: text }).first().waitFor({ timeout: 3000 });
  } catch (error) {
    const log = (await lines(page)).join('\n  ');
    throw new Error(`No line "${text}" in the log of ${page.url()}:\n  ${log}`, { cause: error });
  }
}

/** The page's log, oldest first, without the times. */
async function lines(page: Page): Promise<string[]> {
  const texts = await textsOf(page, '#log li');
  return texts.map((text) => text.replace(/^\S+ (AM |PM )?\s*/, '')).reverse();
}

describeWithChromium('the chat sample in Chromium', () => {
  let browser: TestBrowser;
  let t: BrowserTestApp;
  /** The test closed the app itself. */
  let closed = false;
  beforeAll(async () => {
    browser = await TestBrowser.launch();
  });
  afterAll(async () => {
    await browser?.close();
  });
  afterEach(async () => {
    await browser.closePages();
    if (!closed) await t?.app.close();
    expect(browser.pageErrors).toEqual([]);
  });

  describe.each(['express', 'fastify'] as const)('on %s', (platform: SamplePlatform) => {
    beforeEach(async () => {
      closed = false;
      t = await startBrowserApp((options) => createSampleApp(platform, options));
    });

    it('tells the room who joins and leaves, and sends each line to the others in the room', async () => {
      const alice = await join(browser, t, 'alice', 'lobby');
      expect(await alice.locator('#protocol').textContent()).toBe('chat.v1');
      await waitForText(alice, '#members', 'alice');

      const bob = await join(browser, t, 'bob', 'lobby');
      await waitForText(bob, '#members', 'alice, bob');
      await waitForLine(alice, 'bob joined');
      await waitForText(alice, '#members', 'alice, bob');

      const carol = await join(browser, t, 'carol', 'kitchen');
      await waitForText(carol, '#members', 'carol');

      await alice.locator('#line').fill('hello, bob');
      await alice.locator('#say').click();
      await waitForLine(bob, 'alice: hello, bob');
      await waitForLine(alice, 'alice (you): hello, bob');
      await bob.locator('#line').fill('hi alice');
      await bob.locator('#line').press('Enter');
      await waitForLine(alice, 'bob: hi alice');

      // The sender got its line once, as the reply, not from the room's broadcast; the other
      // room got nothing.
      expect((await lines(alice)).filter((line) => line.includes('hello, bob'))).toEqual([
        'alice (you): hello, bob',
      ]);
      expect((await lines(carol)).join('\n')).not.toMatch(/hello|hi alice|joined/);

      await bob.locator('#leave').click();
      await waitForText(bob, '#last-close', '1000 left the room');
      await waitForText(bob, '#state', '3 CLOSED');
      await waitForLine(alice, 'bob left');
      await waitForText(alice, '#members', 'alice');
      expect(await lines(alice)).toEqual([
        'joining lobby as alice…',
        'you are alice in lobby, speaking chat.v1',
        'bob joined',
        'alice (you): hello, bob',
        'bob: hi alice',
        'bob left',
      ]);
      await saveScreenshot(alice, `chat-${platform}.png`);
    });

    it('tells "log in again" from "server down": close 4401 with the reason, then 1006', async () => {
      const page = await browser.newPage(t.http('/chat?name=&room=lobby'));
      await waitForLine(page, 'log in again: Join with a name: ?name=…');
      await waitForText(page, '#last-close', '4401 Join with a name: ?name=…');
      await waitForText(page, '#state', '3 CLOSED');
      // What the page's WebSocket saw: the 101 of the refusal (open), then a clean close.
      const seen = await page.evaluate(async (url) => {
        const trace = (globalThis as any).track(new WebSocket(url, 'chat.v1'));
        await trace.next('close');
        return trace.events.map((event: { type: string; code?: number; reason?: string }) =>
          event.type === 'close'
            ? `close ${event.code} ${event.reason} ${(event as any).wasClean}`
            : event.type,
        );
      }, t.url('/chat/lobby'));
      expect(seen).toEqual(['open', 'close 4401 Join with a name: ?name=… true']);

      // A name against the rules is a 400: 4400 and the guard's reason.
      const badName = await browser.newPage(t.http('/chat?name=%3Cb%3E&room=lobby'));
      await waitForLine(badName, 'refused (4400): A name is 1 to 24 letters');
      // Without the subprotocol: 4400 as well; nothing was ever opened on the server.
      const noProtocol = await refusedWithClose(t.url('/chat/lobby?name=dave'));
      expect(noProtocol).toMatchObject({ code: 4400, reason: 'No acceptable subprotocol' });
      expect(t.app.get(WsConnectionRegistry).size).toBe(0);

      // A page that is in sees the shutdown; one that joins afterwards finds nobody there.
      const alice = await join(browser, t, 'alice', 'lobby');
      closed = true;
      await t.app.close();
      await waitForLine(alice, 'left lobby: 1001 Server shutting down');
      await alice.locator('#join').click();
      await waitForLine(alice, 'could not reach the server (1006): is it down?');
      await waitForText(alice, '#last-close', '1006 (not clean)');
      expect(await lines(page)).toEqual([
        'joining lobby as …',
        'log in again: Join with a name: ?name=…',
      ]);
    });
  });
});
