// UI performance figures against a running daemon: `node tests/ui/perf.mjs`.
// Env: HORCRUX_URL, HORCRUX_ADMIN_TOKEN (to create the user it logs in as), PERF_USER /
// PERF_PASSWORD (default: a perf@pve user it creates).
// Prints one JSON line {"page_bytes", "dashboard_ms", "guest_list_1000_ms"}; exits non-zero
// when a budget is exceeded (300 KB, 1500 ms, 300 ms).
import { chromium } from 'playwright-core';

process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';
const URL_ = (process.env.HORCRUX_URL || 'https://127.0.0.1:18006').replace(/\/$/, '');
let AUTH = process.env.HORCRUX_ADMIN_TOKEN || '';
if (AUTH && !/^(Bearer|PVEAPIToken)[ =]/.test(AUTH)) AUTH = 'Bearer ' + AUTH.trim();
const USER = process.env.PERF_USER || 'perf@pve';
const PASSWORD = process.env.PERF_PASSWORD || 'perf-secret-1';
const BUDGET = { page_bytes: 300 * 1024, dashboard_ms: 1500, guest_list_1000_ms: 300 };

async function api(method, path, body) {
  const r = await fetch(URL_ + path, {
    method, headers: { Authorization: AUTH, 'Content-Type': 'application/x-www-form-urlencoded' },
    body: body ? new URLSearchParams(body).toString() : undefined,
  });
  return r.status;
}
if (!process.env.PERF_USER) {
  if (!AUTH) throw new Error('HORCRUX_ADMIN_TOKEN (or PERF_USER/PERF_PASSWORD) is needed');
  await api('DELETE', `/api2/json/access/users/${encodeURIComponent(USER)}`);
  await api('POST', '/api2/json/access/users', { userid: USER, password: PASSWORD });
  await api('PUT', '/api2/json/access/acl', { path: '/', roles: 'PVEAuditor', users: USER, propagate: '1' });
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--ignore-certificate-errors'] });
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
// Bytes over the wire: every response's encoded length (headers and body), from the
// devtools protocol; a fresh context, so nothing is cached.
const cdp = await context.newCDPSession(page);
await cdp.send('Network.enable');
await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
let bytes = 0;
const urls = new Map();
cdp.on('Network.responseReceived', (e) => urls.set(e.requestId, e.response.url));
cdp.on('Network.loadingFinished', (e) => {
  bytes += e.encodedDataLength;
  urls.set(e.requestId, [urls.get(e.requestId), e.encodedDataLength]);
});

await page.goto(URL_ + '/');
await page.locator('input[name=username]').waitFor();
await page.fill('input[name=username]', USER);
await page.fill('input[name=password]', PASSWORD);
await page.click('button[type=submit]');
await page.waitForSelector('body[data-ready]', { timeout: 30000 });
await page.waitForSelector('.tree a[data-id^="node/"]');
await page.waitForTimeout(1000);
const page_bytes = bytes;

// Navigation to dashboard interactive: a reload with the session kept (cache still off);
// the app writes the ms since navigation start into <body data-ready> when the tree and the
// summary show their first data.
const loads = [];
for (let i = 0; i < 3; i++) {
  await page.reload();
  await page.waitForSelector('body[data-ready]', { timeout: 30000 });
  loads.push(Number(await page.getAttribute('body', 'data-ready')));
}
loads.sort((a, b) => a - b);
const dashboard_ms = loads[1];

const runs = [];
for (let i = 0; i < 5; i++) runs.push(await page.evaluate(() => window.__horcruxBench(1000)));
runs.sort((a, b) => a - b);
const guest_list_1000_ms = Math.round(runs[Math.floor(runs.length / 2)] * 10) / 10;
await browser.close();

const out = { page_bytes, dashboard_ms, guest_list_1000_ms };
console.log(JSON.stringify(out));
if (process.env.PERF_VERBOSE) for (const [, v] of urls) if (Array.isArray(v)) console.error(v[1], v[0]);
const over = Object.entries(BUDGET).filter(([k, b]) => out[k] > b);
if (over.length) {
  console.error('over budget: ' + over.map(([k, b]) => `${k} ${out[k]} > ${b}`).join(', '));
  process.exit(1);
}
