// Drives the operator console in Debian's Chromium for tests/console.rs.
//
// A thin remote control: it reads one JSON command per line on stdin, does it on the page with
// Playwright, and answers one JSON line on stdout, {"reply": <id>, "ok": true, "value": ...} or
// {"reply": <id>, "ok": false, "error": "..."}. The test decides what to check. The page's own
// errors and console messages come as {"event": ...} lines between the replies. On a failed
// command it saves a screenshot (failure-<id>.png) into $CONSOLE_ARTIFACTS.
//
// Commands: launch {width, height}, goto {url}, viewport {width, height}, click {selector},
// fill {selector, value}, select {selector, value}, wait {selector, state, timeout},
// wait_fn {expression, arg, timeout}, eval {expression, arg}, screenshot {name, full_page},
// close.

import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.CONSOLE_ARTIFACTS || '.';
// Root needs --no-sandbox. On a closed network Chromium's own background connections make
// the page's fail unless they are turned off.
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--autoplay-policy=no-user-gesture-required',
];

let browser = null;
let page = null;

const say = (line) => process.stdout.write(JSON.stringify(line) + '\n');

function watch(p) {
  p.on('pageerror', (e) => say({ event: 'pageerror', message: String(e && e.stack ? e.stack : e) }));
  p.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') {
      say({ event: 'console', type: m.type(), message: m.text() });
    }
  });
  p.on('requestfailed', (r) => {
    say({ event: 'requestfailed', url: r.url(), failure: r.failure() && r.failure().errorText });
  });
}

const commands = {
  async launch({ width, height }) {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
    const context = await browser.newContext({ viewport: { width, height } });
    page = await context.newPage();
    watch(page);
    return browser.version();
  },
  async goto({ url }) {
    const response = await page.goto(url, { waitUntil: 'load' });
    return response ? response.status() : null;
  },
  async viewport({ width, height }) {
    await page.setViewportSize({ width, height });
    return null;
  },
  async click({ selector, timeout }) {
    await page.locator(selector).click({ timeout: timeout || 10000 });
    return null;
  },
  async fill({ selector, value, timeout }) {
    await page.locator(selector).fill(value, { timeout: timeout || 10000 });
    return null;
  },
  async select({ selector, value, timeout }) {
    return page.locator(selector).selectOption(value, { timeout: timeout || 10000 });
  },
  async wait({ selector, state, timeout }) {
    await page.locator(selector).waitFor({ state: state || 'visible', timeout: timeout || 10000 });
    return null;
  },
  // Polls the expression (a function's source, called with `arg`) every 100 ms until it returns
  // something truthy, and answers that. (Polled from here: the page's Content-Security-Policy
  // forbids the eval that page.waitForFunction would use.)
  async wait_fn({ expression, arg, timeout }) {
    const deadline = Date.now() + (timeout || 10000);
    const source = `(${expression})(${JSON.stringify(arg ?? null)})`;
    let last = null;
    for (;;) {
      last = await page.evaluate(source);
      if (last) return last;
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${timeout || 10000} ms; last value ${JSON.stringify(last)}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  },
  async eval({ expression, arg }) {
    return page.evaluate(`(${expression})(${JSON.stringify(arg ?? null)})`);
  },
  async screenshot({ name, full_page }) {
    const path = join(ARTIFACTS, name);
    await page.screenshot({ path, fullPage: Boolean(full_page) });
    return path;
  },
  async close() {
    if (browser) await browser.close();
    browser = null;
    return null;
  },
};

const lines = createInterface({ input: process.stdin });
let queue = Promise.resolve();
lines.on('line', (line) => {
  queue = queue.then(async () => {
    let command;
    try {
      command = JSON.parse(line);
    } catch (e) {
      say({ reply: null, ok: false, error: `not JSON: ${line}` });
      return;
    }
    const { id, cmd } = command;
    const run = commands[cmd];
    if (!run) {
      say({ reply: id, ok: false, error: `unknown command ${cmd}` });
      return;
    }
    try {
      say({ reply: id, ok: true, value: (await run(command)) ?? null });
    } catch (e) {
      let shot = null;
      if (page) {
        shot = join(ARTIFACTS, `failure-${id}.png`);
        await page.screenshot({ path: shot, fullPage: true }).catch(() => (shot = null));
      }
      say({ reply: id, ok: false, error: String(e && e.message ? e.message : e), screenshot: shot });
    }
  });
});
lines.on('close', () => {
  queue.then(async () => {
    if (browser) await browser.close().catch(() => {});
    process.exit(0);
  });
});
