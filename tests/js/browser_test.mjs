// Headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core:
// no browser download) loads browser/index.html, which connects MQTT.js's
// browser bundle to the broker, subscribes, publishes, and writes what came
// back into the page. Run by server/tests/tls_ws.rs:
//
//   node browser_test.mjs <ws-url> <topic>
//
// Prints the page's result; exits 0 when the message came back, 1 otherwise.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';

const [url, topic] = process.argv.slice(2);
if (!url || !topic) {
  console.error('usage: node browser_test.mjs <ws-url> <topic>');
  process.exit(1);
}
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!fs.existsSync(executablePath)) {
  console.error(`${executablePath} is missing: install the Debian package chromium`);
  process.exit(1);
}
const here = path.dirname(fileURLToPath(import.meta.url));
const page = pathToFileURL(path.join(here, 'browser', 'index.html'));
page.search = new URLSearchParams({ url, topic }).toString();

// A fresh profile, removed afterwards.
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'easy-mqtt-chromium-'));
let context;
let code = 1;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true, // Playwright passes --headless
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-quic',
    ],
    timeout: 30000,
  });
  const tab = context.pages()[0] || (await context.newPage());
  tab.on('console', (message) => console.error(`page console: ${message.text()}`));
  tab.on('pageerror', (error) => console.error(`page error: ${error.message}`));
  await tab.goto(page.href, { timeout: 15000 });
  await tab.waitForSelector('#result[data-done]', { state: 'attached', timeout: 15000 });
  const result = await tab.$eval('#result', (element) => ({
    state: element.dataset.done,
    text: element.textContent,
  }));
  const status = await tab.$eval('#status', (element) => element.textContent);
  console.log(JSON.stringify({ ...result, status }));
  code = result.state === 'ok' ? 0 : 1;
} catch (error) {
  console.error(`error: ${error && error.stack ? error.stack : error}`);
} finally {
  if (context) await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(code);
