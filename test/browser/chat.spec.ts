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
import { refusedUpgrade } from '../utils/ws-client.js';

/**
 * The chat of `sample/` in real pages: rooms, the chat.v1 subprotocol, join and leave notices,
 * lines that go to everyone else in the room, and the handshake guard that wants a name.
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
  beforeAll(async () => {
    browser = await TestBrowser.launch();
  });
  afterAll(async () => {
    await browser?.close();
  });
  afterEach(async () => {
    await browser.closePages();
    await t?.app.close();
    expect(browser.pageErrors).toEqual([]);
  });

  describe.each(['express', 'fastify'] as const)('on %s', (platform: SamplePlatform) => {
    beforeEach(async () => {
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

    it('is refused at the handshake without a name: onerror, then onclose 1006', async () => {
      const page = await browser.newPage(t.http('/chat?name=&room=lobby'));
      await waitForLine(page, 'refused: the server did not accept the handshake');
      await waitForText(page, '#last-close', '1006 (not clean)');
      await waitForText(page, '#state', '3 CLOSED');
      const events = await page.evaluate(async (url) => {
        const trace = (globalThis as any).track(new WebSocket(url, 'chat.v1'));
        await trace.next('close');
        return trace.events.map((event: { type: string; code?: number }) =>
          event.type === 'close' ? `close ${event.code}` : event.type,
        );
      }, t.url('/chat/lobby'));
      expect(events).toEqual(['error', 'close 1006']);
      // Nothing was opened on the server.
      expect(t.app.get(WsConnectionRegistry).size).toBe(0);

      // What the page cannot see: the guard's 400 and its reason; and the subprotocol is
      // required as well.
      const noName = await refusedUpgrade(t.url('/chat/lobby'), { protocols: ['chat.v1'] });
      expect(noName.status).toBe(400);
      expect(JSON.parse(noName.body).message).toMatch(/name/);
      const noProtocol = await refusedUpgrade(t.url('/chat/lobby?name=dave'));
      expect(noProtocol.status).toBe(400);
    });
  });
});
