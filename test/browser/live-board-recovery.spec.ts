import 'reflect-metadata';
import type { Page } from 'playwright-core';
import { createSampleApp } from '../../sample/create-sample-app.js';
import {
  describeWithChromium,
  saveScreenshot,
  startBrowserApp,
  TestBrowser,
  waitForText,
  type AppFactory,
  type BrowserTestApp,
} from '../utils/browser.js';
import { describeRedis, startRedis, type RedisServer } from '../utils/redis-server.js';
import { delay } from '../utils/ws-client.js';

/**
 * The live board's recovery on reconnect, as a visitor sees it (issue 11): two instances of the
 * sample share a real redis-server; the page's server stops for a few seconds while the other
 * instance goes on pushing (every second, and two POSTs); when its server is back, the page
 * reconnects with the id of the last push it saw (partysocket's URL function), and shows every
 * push it missed, none twice: its own count of the board's revisions has no hole.
 */

function postDemand(t: BrowserTestApp, name: string, quantity: number) {
  return fetch(t.http('/api/demand'), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ name, quantity }),
  });
}

async function countLog(page: Page, text: string): Promise<number> {
  return page.locator('#log li').filter({ hasText: text }).count();
}

describeRedis('the live board with Redis', () => {
  describeWithChromium('recovery in Chromium', () => {
    let browser: TestBrowser;
    let redis: RedisServer;
    const apps: BrowserTestApp[] = [];

    beforeAll(async () => {
      [browser, redis] = await Promise.all([TestBrowser.launch(), startRedis()]);
    });
    afterAll(async () => {
      await browser?.close();
    });
    afterEach(async () => {
      await browser.closePages();
      await Promise.all(apps.splice(0).map((t) => t.app.close()));
      expect(browser.pageErrors).toEqual([]);
    });

    it('the page misses nothing while its server is stopped for 3 s: every push, none twice', async () => {
      const config = { redisUrl: redis.url, keyPrefix: `board-${Date.now()}` };
      const sample: AppFactory = (options) => createSampleApp('express', options, config);
      const one = await startBrowserApp(sample);
      const two = await startBrowserApp(sample);
      apps.push(two);
      const page = await browser.newPage(one.http('/'));
      await waitForText(page, '#state', '1 OPEN');
      await page.locator('#log li').filter({ hasText: 'open (demand.v1)' }).waitFor();
      // Both instances tick every second: pushes arrive, each with an id.
      await waitForText(page, '#pushes', /^([3-9]|\d\d+)$/, 6000);
      await waitForText(page, '#last-id', /^[\w-]+\.\d+$/);

      await one.app.close();
      await page
        .locator('#log li')
        .filter({ hasText: 'closed: 1001 Server shutting down; reconnecting' })
        .waitFor({ timeout: 3000 });
      // While the page is away: the other instance's ticks, and two changes through it.
      expect((await postDemand(two, 'Apples', 901)).status).toBe(200);
      await delay(500);
      expect((await postDemand(two, 'Apples', 902)).status).toBe(200);
      await delay(2500);
      expect(await countLog(page, 'Apples set to 901')).toBe(0);

      const back = await startBrowserApp(sample, one.port);
      apps.push(back);
      await waitForText(page, '#reconnects', '1', 10_000);
      await waitForText(page, '#recovery', /^recovered, ([4-9]|\d\d+) replayed$/, 5000);
      // Pushes from both instances may cross by a few ms; wait until the count settles.
      await delay(1500);
      await waitForText(page, '#missed', '0', 3000);
      expect(await page.locator('#duplicates').textContent()).toBe('0');
      expect(await countLog(page, 'Apples set to 901 through POST')).toBe(1);
      expect(await countLog(page, 'Apples set to 902 through POST')).toBe(1);
      const pushes = Number(await page.locator('#pushes').textContent());
      expect(pushes).toBeGreaterThanOrEqual(10);
      await saveScreenshot(page, 'live-board-recovery.png');
    });

    it('a page whose history is gone (Redis flushed) is told so and reloads the board', async () => {
      const config = { redisUrl: redis.url, keyPrefix: `board-${Date.now()}` };
      const sample: AppFactory = (options) => createSampleApp('fastify', options, config);
      const one = await startBrowserApp(sample);
      const page = await browser.newPage(one.http('/'));
      await waitForText(page, '#pushes', /^([2-9]|\d\d+)$/, 6000);
      await one.app.close();
      await redis.cli('FLUSHALL');
      const back = await startBrowserApp(sample, one.port);
      apps.push(back);
      expect((await postDemand(back, 'Milk', 777)).status).toBe(200);
      await waitForText(page, '#recovery', 'not recovered (history_lost), board reloaded', 10_000);
      await waitForText(page, 'tr[data-name="Milk"] td.quantity', /^7[67]\d$/, 3000);
      await waitForText(page, '#missed', '0');
    });
  });
});
