// Smoke test of the browser-test tooling: playwright-core drives Debian's Chromium
// (/usr/bin/chromium, no downloaded browser), axe-core is injected into a data: URL page and
// run, and a screenshot is written. The page has one planted accessibility fault (an <img>
// without alt text), so a working axe must report it: that proves axe ran, not just loaded.
// Usage: node tests/ui/smoke.mjs [screenshot path, default /tmp/smoke.png]
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const axePath = require.resolve('axe-core/axe.min.js');
const shot = process.argv[2] || '/tmp/smoke.png';
const t0 = performance.now();
const ms = () => `${Math.round(performance.now() - t0)} ms`;

const html = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Smoke</title>
<style>body{font:16px sans-serif;margin:2rem} button{padding:.5rem 1rem}</style></head>
<body><main><h1>Horcrux UI smoke test</h1>
<p>Rendered by Debian's Chromium under playwright-core.</p>
<button type="button" onclick="this.textContent='Clicked'">Click me</button>
<img src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7" width="16" height="16">
</main></body></html>`;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--ignore-certificate-errors'],
});
let failed = false;
try {
  console.log(`chromium ${browser.version()} launched (${ms()})`);
  const page = await browser.newPage({ viewport: { width: 800, height: 400 } });
  page.on('pageerror', e => { console.log(`page error: ${e.message}`); failed = true; });
  await page.goto('data:text/html;charset=utf-8,' + encodeURIComponent(html));
  await page.getByRole('button', { name: 'Click me' }).click();
  await page.getByRole('button', { name: 'Clicked' }).waitFor();
  await page.addScriptTag({ path: axePath });
  const result = await page.evaluate(async () => {
    const r = await window.axe.run();
    return { version: window.axe.version, violations: r.violations.map(v => `${v.id} (${v.nodes.length})`), passes: r.passes.length };
  });
  console.log(`axe-core ${result.version}: ${result.violations.length} violations [${result.violations.join(', ')}], ${result.passes} rules passed (${ms()})`);
  if (!result.violations.some(v => v.startsWith('image-alt '))) {
    console.log('axe did not report the planted image-alt violation');
    failed = true;
  }
  await page.screenshot({ path: shot });
  console.log(`screenshot ${shot} (${ms()})`);
} finally {
  await browser.close();
}
console.log(`smoke: ${failed ? 'FAILED' : 'ok'} in ${ms()}`);
process.exit(failed ? 1 : 0);
