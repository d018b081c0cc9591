import 'reflect-metadata';
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { createSampleApp, type SamplePlatform } from '../../sample/create-sample-app.js';
import {
  ARTIFACTS_DIR,
  describeWithChromium,
  saveScreenshot,
  startBrowserApp,
  TestBrowser,
  textsOf,
  waitForText,
  type AppFactory,
  type BrowserTestApp,
} from '../utils/browser.js';

/**
 * The live board of `sample/`, as a visitor sees it: pages that show the pushed demand and
 * their connection state, an HTTP POST that reaches every open page at once, and pages that
 * reconnect by themselves (partysocket) when the server restarts.
 */

/** Records every text the quantity cell of `name` shows from now on, with the page's clock. */
function watchQuantity(page: Page, name: string): Promise<void> {
  return page.evaluate((name) => {
    const g = globalThis as any;
    const cell = g.document.querySelector(`tr[data-name="${name}"] td.quantity`);
    g.quantities = [] as string[];
    new g.MutationObserver(() => g.quantities.push(cell.textContent)).observe(cell, {
      childList: true,
      characterData: true,
      subtree: true,
    });
  }, name);
}

function postDemand(t: BrowserTestApp, name: string, quantity: number) {
  return fetch(t.http('/api/demand'), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ name, quantity }),
  });
}

/** A board page, once its socket is open and the table is filled. */
async function openBoard(browser: TestBrowser, t: BrowserTestApp): Promise<Page> {
  const page = await browser.newPage(t.http('/'));
  await waitForText(page, '#state', '1 OPEN');
  await page.locator('tr[data-name="Rice"] td.quantity').filter({ hasText: /\d/ }).waitFor();
  return page;
}

describeWithChromium('the live board sample in Chromium', () => {
  let browser: TestBrowser;
  const apps: BrowserTestApp[] = [];
  beforeAll(async () => {
    browser = await TestBrowser.launch();
  });
  afterAll(async () => {
    await browser?.close();
  });
  afterEach(async () => {
    await browser.closePages();
    await Promise.all(apps.splice(0).map((t) => t.app.close()));
    expect(browser.pageErrors).toEqual([]);
  });

  describe.each(['express', 'fastify'] as const)('on %s', (platform: SamplePlatform) => {
    const sample: AppFactory = (options) => createSampleApp(platform, options);

    it('shows the pushed board and its connection state; a POST reaches both pages within 1 s', async () => {
      const t = await startBrowserApp(sample);
      apps.push(t);
      const pages = [await openBoard(browser, t), await openBoard(browser, t)];
      for (const page of pages) {
        await waitForText(page, '#protocol', 'demand.v1');
        await waitForText(page, '#online', '2');
        expect(await textsOf(page, '#items tr td:first-child')).toEqual([
          'Apples',
          'Bread',
          'Coffee',
          'Milk',
          'Rice',
        ]);
        expect(await page.locator('#buffered').textContent()).toBe('0');
        expect(await page.locator('#retries').textContent()).toBe('0');
        expect(await page.locator('.platform').textContent()).toContain(platform);
      }

      // The server moves the demand every second, without being asked.
      const updated = (await pages[0].locator('#updated').textContent()) ?? '';
      const escaped = updated.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      await waitForText(pages[0], '#updated', new RegExp(`^(?!${escaped}$)`), 2500);

      // One HTTP POST: both pages show it, within a second. (The cells are watched rather than
      // read, since the next tick may move the value again right after.)
      await Promise.all(pages.map((page) => watchQuantity(page, 'Apples')));
      const started = Date.now();
      const response = await postDemand(t, 'Apples', 777);
      expect(response.status).toBe(200);
      expect(await response.json()).toEqual({ item: { name: 'Apples', quantity: 777 }, sentTo: 2 });
      await Promise.all(
        pages.map((page) =>
          page.waitForFunction(() => (globalThis as any).quantities.includes('777'), undefined, {
            timeout: 1000,
          }),
        ),
      );
      expect(Date.now() - started).toBeLessThan(1000);
      for (const page of pages) {
        await page
          .locator('#log li')
          .filter({ hasText: 'Apples set to 777 through POST /api/demand' })
          .waitFor({ timeout: 1000 });
      }

      const shot = await saveScreenshot(pages[0], `live-board-${platform}.png`);
      if (platform === 'express') await copyFile(shot, join(ARTIFACTS_DIR, 'live-board.png'));
    });

    it("reconnects by itself when the server restarts, and shows the new server's data", async () => {
      const first = await startBrowserApp(sample);
      const page = await openBoard(browser, first);
      await waitForText(page, '#reconnects', '0');

      await first.app.close();
      // The shutdown's 1001 reaches the page, which starts trying again (and fails while the
      // port is closed).
      await page
        .locator('#log li')
        .filter({ hasText: 'closed: 1001 Server shutting down; reconnecting' })
        .waitFor({ timeout: 3000 });
      await waitForText(page, '#state', /^[03] /);
      await waitForText(page, '#last-close', 'could not connect', 3000);
      await waitForText(page, '#retries', /^[1-9]\d*$/);

      // A new process on the same port, with data the old one never had.
      const second = await startBrowserApp(sample, first.port);
      apps.push(second);
      expect((await postDemand(second, 'Coffee', 4242)).status).toBe(200);
      await waitForText(page, '#state', '1 OPEN', 10_000);
      await waitForText(page, '#reconnects', '1');
      // Read from the new server on reconnect (GET /api/demand) or pushed by it; the ticks may
      // have moved it a little since.
      await waitForText(page, 'tr[data-name="Coffee"] td.quantity', /^4[12]\d\d$/, 2000);

      // And its pushes arrive.
      await watchQuantity(page, 'Bread');
      expect((await postDemand(second, 'Bread', 555)).status).toBe(200);
      await page.waitForFunction(() => (globalThis as any).quantities.includes('555'), undefined, {
        timeout: 1000,
      });
    });
  });
});
