// Browser test of the web UI against a running daemon: `node tests/ui/ui.test.mjs`.
// Env: HORCRUX_URL, HORCRUX_ADMIN_TOKEN (the full Authorization header value, or just the
// token: then "Bearer " is prepended), HORCRUX_TINY_GUEST (dir with vmlinuz, initrd.gz),
// SCREENSHOT_DIR (default target/ui-screenshots), HORCRUX_UI_SKIP (comma-separated step
// numbers to skip, for working on the UI while a backend route is missing).
// Exit code 0 on success; on the first failure, non-zero with the step and the reason.
import { chromium } from 'playwright-core';
import { createHmac } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

process.env.NODE_TLS_REJECT_UNAUTHORIZED = '0';
const here = dirname(fileURLToPath(import.meta.url));
const URL_ = (process.env.HORCRUX_URL || 'https://127.0.0.1:18006').replace(/\/$/, '');
let AUTH = process.env.HORCRUX_ADMIN_TOKEN || '';
if (AUTH && !/^(Bearer|PVEAPIToken)[ =]/.test(AUTH)) AUTH = 'Bearer ' + AUTH.trim();
const GUEST = process.env.HORCRUX_TINY_GUEST || resolve(here, '../../.lab/tiny-guest');
const SHOTS = process.env.SCREENSHOT_DIR || 'target/ui-screenshots';
const SKIP = new Set((process.env.HORCRUX_UI_SKIP || '').split(',').map((s) => s.trim()).filter(Boolean));
const AXE = join(here, 'node_modules/axe-core/axe.min.js');
const AXE_SRC = readFileSync(AXE, 'utf8');
const ALICE = { user: 'alice@pve', password: 'alice-secret-1' };
const BOB = { user: 'bob@pve', password: 'bob-secret-22' };
const KERNEL = 'uitest-vmlinuz.img', INITRD = 'uitest-initrd.img';
mkdirSync(SHOTS, { recursive: true });
if (!AUTH) fail('setup', 'HORCRUX_ADMIN_TOKEN is not set');

function fail(step, msg) {
  console.error(`\nFAILED in step "${step}": ${msg}`);
  process.exit(1);
}

// --- The API, as admin ---------------------------------------------------------------
async function api(method, path, body, { form = true, ok = true } = {}) {
  const headers = { Authorization: AUTH };
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body && form) {
    headers['Content-Type'] = 'application/x-www-form-urlencoded';
    payload = new URLSearchParams(body).toString();
  } else if (body) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const r = await fetch(URL_ + path, { method, headers, body: payload });
  const text = await r.text();
  let j;
  try { j = JSON.parse(text); } catch { j = text; }
  if (ok && !r.ok) throw new Error(`${method} ${path}: HTTP ${r.status} ${text}`);
  return { status: r.status, body: j };
}

// RFC 6238 TOTP: HMAC-SHA1, 30 s steps, 6 digits.
function base32(s) {
  const abc = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of s.replace(/=+$/, '').toUpperCase()) bits += abc.indexOf(c).toString(2).padStart(5, '0');
  const out = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) out.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(out);
}
function totp(secret, t = Date.now()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(t / 1000 / 30)));
  const mac = createHmac('sha1', base32(secret)).update(counter).digest();
  const o = mac[mac.length - 1] & 15;
  const n = ((mac[o] & 0x7f) << 24) | (mac[o + 1] << 16) | (mac[o + 2] << 8) | mac[o + 3];
  return String(n % 1e6).padStart(6, '0');
}

// --- Steps, screens --------------------------------------------------------------------
let shotNo = 0;
let page;
async function step(n, name, fn) {
  if (SKIP.has(String(n))) {
    console.log(`- step ${n} ${name}: skipped (HORCRUX_UI_SKIP)`);
    return;
  }
  const t0 = Date.now();
  try {
    await fn();
  } catch (e) {
    if (page) await page.screenshot({ path: join(SHOTS, `failed-step-${n}.png`) }).catch(() => {});
    fail(`${n}. ${name}`, e && e.stack ? e.stack : String(e));
  }
  console.log(`✓ step ${n} ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}

// A screenshot and an axe check (serious and critical violations fail).
async function screen(name) {
  await page.waitForTimeout(150);
  const file = join(SHOTS, `${String(++shotNo).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file });
  // Evaluated through the devtools protocol: the page's CSP (rightly) refuses inline script tags.
  if (!(await page.evaluate(() => typeof window.axe !== 'undefined'))) await page.evaluate(AXE_SRC);
  const r = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  // Every control is reachable by keyboard: nothing that looks clickable (a control's
  // role or a pointer cursor) sits outside the tab order.
  const unreachable = await page.evaluate(() => {
    const out = [];
    for (const el of document.querySelectorAll('body *')) {
      const cs = getComputedStyle(el);
      if (cs.visibility === 'hidden' || !el.getClientRects().length) continue;
      const looks = el.matches('a[href],button,input,select,textarea,summary,[role=button],[role=tab],[role=link],[role=treeitem],[role=menuitem],[role=checkbox]') || cs.cursor === 'pointer';
      if (!looks || el.matches('label, label *, option') || el.disabled || el.getAttribute('aria-disabled') === 'true') continue;
      if (el.closest('.xterm, .novnc, canvas')) continue; // the consoles take the keyboard themselves
      const reach = el.closest('a[href],button,input,select,textarea,summary,[tabindex]');
      if (reach && reach.tabIndex >= 0 && !reach.disabled) continue;
      out.push(el.outerHTML.slice(0, 140));
    }
    return out;
  });
  if (unreachable.length) throw new Error(`screen "${name}": not reachable by keyboard:\n  ${unreachable.slice(0, 8).join('\n  ')}`);
  const bad = r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) {
    const text = bad.map((v) => `  [${v.impact}] ${v.id}: ${v.help}\n${v.nodes.slice(0, 5).map((n) => `      ${n.target.join(' ')}: ${n.failureSummary.replace(/\n/g, ' ')}`).join('\n')}`).join('\n');
    throw new Error(`axe on screen "${name}" (${file}):\n${text}`);
  }
}

const go = async (hash) => {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await page.waitForTimeout(200);
};
const sel = (s) => page.locator(s);
async function login({ user, password }, code) {
  await sel('input[name=username]').fill(user);
  await sel('input[name=password]').fill(password);
  await sel('button[type=submit]').click();
  if (code) {
    await sel('input[name=tfa-code]').waitFor({ timeout: 10000 });
    await screen('login-tfa');
    await sel('input[name=tfa-code]').fill(code());
    await sel('button[type=submit]').click();
  }
  await sel('[data-testid=user]').waitFor({ timeout: 15000 });
  const who = await sel('[data-testid=user]').textContent();
  if (who.trim() !== user) throw new Error(`logged in as ${who}, not ${user}`);
  await page.waitForSelector('body[data-ready]', { timeout: 15000 });
}
async function logout() {
  await sel('button:has-text("Log out")').click();
  await sel('input[name=username]').waitFor({ timeout: 10000 });
  // The server cleared its HttpOnly cookie: the browser no longer authenticates.
  for (let i = 0; ; i++) {
    const status = await page.evaluate(async () => (await fetch('/api2/json/cluster/resources')).status);
    if (status === 401) break;
    if (i > 50) throw new Error(`still authenticated after logout (HTTP ${status})`);
    await page.waitForTimeout(100);
  }
}
// Waits for a task of `type` on guest `vmid`, started after `since`, to end; answers its status.
async function taskDone(type, vmid, since, timeout = 120000) {
  const row = sel(`.tasklist tr[data-upid*=":${type}:${vmid}:"]`).first();
  const t0 = Date.now();
  while (Date.now() - t0 < timeout) {
    const rows = await page.$$eval(`.tasklist tr[data-upid*=":${type}:${vmid}:"]`, (rs) => rs.map((r) => ({ upid: r.dataset.upid, status: r.dataset.status })));
    const mine = rows.filter((r) => parseInt(r.upid.split(':')[4], 16) >= since - 2);
    const done = mine.find((r) => r.status !== 'running');
    if (done) {
      if (done.status !== 'OK') throw new Error(`task ${done.upid} ended with ${done.status}`);
      return done;
    }
    await page.waitForTimeout(500);
  }
  void row;
  throw new Error(`no ${type} task of ${vmid} finished within ${timeout / 1000} s`);
}
const now = () => Math.floor(Date.now() / 1000);

// --- The test ---------------------------------------------------------------------------
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--ignore-certificate-errors'] });
const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 }, colorScheme: 'light' });
page = await context.newPage();
const consoleErrors = [];
page.on('pageerror', (e) => consoleErrors.push(String(e)));
page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
let bobSecret, vmid;

await step(1, 'setup through the API', async () => {
  for (const u of [ALICE.user, BOB.user, 'carol@pve']) await api('DELETE', `/api2/json/access/users/${encodeURIComponent(u)}`, null, { ok: false });
  await api('POST', '/api2/json/access/users', { userid: ALICE.user, password: ALICE.password });
  await api('PUT', '/api2/json/access/acl', { path: '/', roles: 'Administrator', users: ALICE.user, propagate: '1' });
  await api('POST', '/api2/json/access/users', { userid: BOB.user, password: BOB.password });
  await api('PUT', '/api2/json/access/acl', { path: '/', roles: 'PVEAuditor', users: BOB.user, propagate: '1' });
  const tfa = await api('POST', `/api/v1/access/tfa/${encodeURIComponent(BOB.user)}`, {}, { form: false });
  bobSecret = tfa.body.secret;
  if (!bobSecret) throw new Error('no TOTP secret in ' + JSON.stringify(tfa.body));
  // Leftovers of an earlier run.
  const vms = (await api('GET', '/api2/json/cluster/resources?type=vm')).body.data || [];
  for (const g of vms.filter((g) => g.name === 'uitest')) {
    await api('DELETE', `/api2/json/cluster/ha/resources/vm:${g.vmid}`, null, { ok: false });
    await api('POST', `/api2/json/nodes/${g.node}/qemu/${g.vmid}/status/stop`, {}, { ok: false });
    await new Promise((r) => setTimeout(r, 3000));
    await api('DELETE', `/api2/json/nodes/${g.node}/qemu/${g.vmid}?purge=1`, null, { ok: false });
  }
  // The tiny guest's kernel and initrd as volumes (only root@pam boots from host paths):
  // uploaded as `iso` content, which boot.kernel / boot.initrd accept (STORAGE:iso/NAME).
  for (const [src, name] of [['vmlinuz', KERNEL], ['initrd.gz', INITRD]]) {
    await api('DELETE', `/api2/json/nodes/n1/storage/local/content/${encodeURIComponent('local:iso/' + name)}`, null, { ok: false });
    const fd = new FormData();
    fd.append('content', 'iso');
    fd.append('filename', new Blob([readFileSync(join(GUEST, src))]), name);
    const r = await api('POST', '/api2/json/nodes/n1/storage/local/upload', fd, { ok: false });
    if (r.status === 409) continue; // still there (in use by a leftover guest): the same file
    if (r.status !== 200) throw new Error(`upload of ${name}: HTTP ${r.status} ${JSON.stringify(r.body)}`);
    const upid = r.body.data;
    for (let i = 0; i < 60 && upid; i++) {
      const s = await api('GET', `/api2/json/nodes/n1/tasks/${encodeURIComponent(upid)}/status`);
      if (s.body.data.status === 'stopped') {
        if (s.body.data.exitstatus !== 'OK') throw new Error(`upload of ${name}: ${s.body.data.exitstatus}`);
        break;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  for (const r of (await api('GET', '/api2/json/cluster/ha/rules')).body.data || []) if (String(r.rule).startsWith('uitest')) await api('DELETE', `/api2/json/cluster/ha/rules/${r.rule}`, null, { ok: false });
  await api('DELETE', '/api2/json/nodes/n1/storage/local/content/' + encodeURIComponent('local:iso/test.iso'), null, { ok: false });
});

await step(2, 'log in with a password, with TOTP, log out', async () => {
  await page.goto(URL_ + '/');
  await sel('input[name=username]').waitFor();
  await screen('login');
  await login(ALICE);
  await screen('dashboard');
  await logout();
  await login(BOB, () => totp(bobSecret));
  await logout();
  // Alice again, with the keyboard only: Tab to each field, Enter to submit.
  await page.locator('body').focus();
  for (let i = 0; i < 30; i++) {
    await page.keyboard.press('Tab');
    if (await page.evaluate(() => document.activeElement && document.activeElement.name === 'username')) break;
  }
  await page.keyboard.type(ALICE.user);
  await page.keyboard.press('Tab');
  if (!(await page.evaluate(() => document.activeElement.name === 'password'))) throw new Error('Tab from the user field does not reach the password');
  await page.keyboard.type(ALICE.password);
  await page.keyboard.press('Enter');
  await sel('[data-testid=user]').waitFor({ timeout: 15000 });
  await page.waitForSelector('body[data-ready]', { timeout: 15000 });
  // Ticket renewal, as the UI does it every 15 min: re-POST /access/ticket with the ticket.
  const renewed = await page.evaluate(async () => {
    const m = await import('/app/api.js');
    const before = m.session.ticket;
    await m.renew();
    const ok = await m.get('/cluster/resources').then(() => true, () => false);
    return { changed: !!m.session.ticket && m.session.ticket.startsWith('PVE:'), same: m.session.ticket === before, ok };
  });
  if (!renewed.changed || !renewed.ok) throw new Error('ticket renewal failed: ' + JSON.stringify(renewed));
});

await step(3, 'create a VM with the wizard', async () => {
  await go('#/create');
  await sel('input[name=name]').waitFor();
  await page.waitForFunction(() => document.querySelector('input[name=vmid]').value !== '');
  vmid = Number(await sel('input[name=vmid]').inputValue());
  await sel('input[name=name]').fill('bad name');
  await sel('input[name=memory]').fill('128');
  await sel('input[name=disksize]').fill('0');
  await sel('input[name=kernel]').fill('local:iso/' + KERNEL);
  await sel('input[name=initrd]').fill('local:iso/' + INITRD);
  await sel('input[name=cmdline]').fill('console=ttyS0 stayup');
  await sel('button[type=submit]:has-text("Create")').click();
  const err = sel('.field.invalid:has(input[name=name]) .error');
  await err.waitFor({ timeout: 10000 });
  if (!(await err.textContent()).trim()) throw new Error('no error text next to the name field');
  await screen('wizard-error');
  await sel('input[name=name]').fill('uitest');
  await sel('button[type=submit]:has-text("Create")').click();
  await page.waitForFunction((v) => location.hash.startsWith('#/vm/' + v), vmid, { timeout: 30000 });
  await sel(`.tree a[data-id="qemu/${vmid}"]`).waitFor({ timeout: 20000 });
});

await step(4, 'start it, see it running', async () => {
  const since = now();
  await sel('[role=toolbar] button:has-text("Start")').click();
  await taskDone('qmstart', vmid, since, 120000);
  await sel(`.tree a[data-id="qemu/${vmid}"] .dot.running`).waitFor({ timeout: 30000 });
  await page.waitForFunction(() => (document.querySelector('[data-testid=vm-status]') || {}).textContent?.includes('running'), null, { timeout: 30000 });
  await screen('guest-running');
  await go('#/node/n1');
  await sel('.chart-box[data-chart="CPU usage"]').waitFor({ timeout: 15000 });
  await screen('node');
  await go(`#/vm/${vmid}/hardware`);
  await sel('td:has-text("Memory")').waitFor({ timeout: 10000 });
  await screen('guest-hardware');
  await go(`#/vm/${vmid}/options`);
  await sel('button:has-text("Edit onboot")').waitFor({ timeout: 10000 });
  await screen('guest-options');
});

await step(5, 'serial console shows GUEST-BOOTED', async () => {
  await go(`#/vm/${vmid}/console`);
  await sel('main [role=toolbar] button:has-text("Serial console")').click();
  await page.waitForFunction(() => {
    const t = window.__horcruxTerm;
    if (!t) return false;
    const b = t.buffer.active;
    let s = '';
    for (let i = 0; i < b.length; i++) s += (b.getLine(i)?.translateToString(true) || '') + '\n';
    return s.includes('GUEST-BOOTED');
  }, null, { timeout: 120000, polling: 500 });
  await screen('serial-console');
});

await step(6, 'VNC console shows a framebuffer', async () => {
  await go(`#/vm/${vmid}/console`);
  await sel('main [role=toolbar] button:has-text("VNC console")').click();
  const state = sel('[data-console-state]');
  await page.waitForFunction(() => {
    const s = document.querySelector('[data-console-state]')?.dataset.consoleState || '';
    if (s.startsWith('failed') || s === 'connection lost') throw new Error('VNC: ' + s);
    const c = document.querySelector('.vnc-screen canvas');
    if (!c || !c.width || !c.height) return false;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 4; i < d.length; i += 4) if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) return true;
    return false;
  }, null, { timeout: 60000, polling: 1000 }).catch(async (e) => {
    throw new Error(`${e.message} (console state: ${await state.getAttribute('data-console-state').catch(() => '?')})`);
  });
  await screen('vnc-console');
  await sel('button:has-text("Disconnect")').click();
});

await step(7, 'CPU graph has data points', async () => {
  await go(`#/vm/${vmid}/summary`);
  await page.waitForFunction(() => Number(document.querySelector('.chart-box[data-chart="CPU usage"]')?.dataset.points || 0) >= 2 && document.querySelector('.chart-box[data-chart="CPU usage"] canvas'), null, { timeout: 240000, polling: 1000 });
  await screen('guest-graphs');
});

await step(8, 'snapshot and rollback', async () => {
  await go(`#/vm/${vmid}/snapshots`);
  await sel('input[name=snapname]').fill('uisnap1');
  let since = now();
  await sel('button:has-text("Take snapshot")').click();
  await taskDone('qmsnapshot', vmid, since);
  await sel('[data-snapshot=uisnap1]').waitFor({ timeout: 15000 });
  await screen('snapshots');
  since = now();
  await sel('button:has-text("Rollback uisnap1")').click();
  const done = await taskDone('qmrollback', vmid, since);
  await sel(`.tasklist tr[data-upid="${done.upid}"] button`).click();
  await page.waitForSelector('dialog [data-task-status=stopped]', { timeout: 15000 });
  await screen('task-log');
  await sel('dialog button[aria-label=Close]').click();
});

await step(9, 'HA with a rule, placement explained', async () => {
  await go(`#/vm/${vmid}/ha`);
  await sel('button:has-text("Enable HA")').click();
  await sel('button:has-text("Remove from HA")').waitFor({ timeout: 15000 });
  await sel('input[name=rule]').fill(`uitest-${vmid}`);
  await sel('button:has-text("Add node-affinity rule")').click();
  await sel(`td:has-text("uitest-${vmid}")`).waitFor({ timeout: 15000 });
  await sel('[data-testid=placement] .explanation li').first().waitFor({ timeout: 15000 });
  await screen('guest-ha');
  for (const t of ['status', 'resources', 'rules', 'history']) {
    await go('#/ha/' + t);
    await page.waitForFunction(() => !document.querySelector('main')?.textContent.includes('Loading…'), null, { timeout: 10000 });
    await screen('ha-' + t);
  }
});

await step(10, 'upload an ISO with progress', async () => {
  await go('#/storage/n1/local');
  await sel('input[type=file]').setInputFiles({ name: 'test.iso', mimeType: 'application/octet-stream', buffer: Buffer.alloc(2 * 1024 * 1024, 7) });
  const seen = page.waitForSelector('progress', { timeout: 30000 });
  await sel('form button[type=submit]:has-text("Upload")').click();
  await seen;
  await sel('[data-volid="local:iso/test.iso"]').waitFor({ timeout: 30000 });
  await screen('storage');
});

await step(11, 'user, ACL and API token', async () => {
  await go('#/access/users');
  await sel('input[name=userid]').fill('carol@pve');
  await sel('input[name=password]').fill('carol-secret-3');
  await sel('button[type=submit]:has-text("Create user")').click();
  await sel('td:has-text("carol@pve")').waitFor({ timeout: 10000 });
  await screen('access-users');
  await go('#/access/acl');
  await sel('input[name=path]').fill('/vms');
  await sel('input[name=who]').fill('carol@pve');
  await sel('select[name=roles]').selectOption('PVEAuditor');
  await sel('button[type=submit]:has-text("Add permission")').click();
  await sel('tr:has(td:has-text("carol@pve")) td:has-text("/vms")').waitFor({ timeout: 10000 });
  await screen('access-acl');
  await go('#/access/tokens');
  await sel('input[name=tokenid]').fill('uitok' + (Date.now() % 100000));
  await sel('button[type=submit]:has-text("Create token")').click();
  const secret = sel('[data-testid=token-secret]');
  await secret.waitFor({ timeout: 10000 });
  if ((await secret.textContent()).trim().length < 16) throw new Error('no token secret shown');
  await screen('access-token');
  await sel('dialog button[aria-label=Close]').click();
  for (const t of ['groups', 'roles', 'realms', 'tfa']) {
    await go('#/access/' + t);
    await page.waitForTimeout(300);
    await screen('access-' + t);
  }
  await go('#/pools');
  await page.waitForTimeout(300);
  await screen('pools');
  await go('#/create');
  await sel('input[name=name]').waitFor();
  await screen('wizard');
});

// Phone-width screenshots come before the deletion, so that there is a guest to show.
await step(13, 'phone width, light and dark', async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await go('#/');
  await screen('phone-dashboard');
  await sel('button.menu').click();
  await sel('nav#tree.open').waitFor();
  await screen('phone-menu');
  await sel(`nav#tree a[data-id="qemu/${vmid}"]`).click();
  await sel('#vm-h').waitFor();
  await screen('phone-guest');
  await sel('button.theme').click();
  await screen('phone-guest-dark');
  await go('#/');
  await screen('phone-dashboard-dark');
  await page.setViewportSize({ width: 1280, height: 800 });
  await go(`#/vm/${vmid}/summary`);
  await screen('guest-dark');
  await sel('button.theme').click();
});

await step(12, 'stop and delete the VM', async () => {
  await go(`#/vm/${vmid}/ha`);
  const rm = sel('button:has-text("Remove from HA")');
  if (await rm.count()) {
    await rm.click();
    await sel('button:has-text("Enable HA")').waitFor({ timeout: 15000 });
  }
  await go('#/ha/rules');
  const del = sel(`tr:has(td:has-text("uitest-${vmid}")) button:has-text("Delete")`);
  await del.waitFor({ timeout: 10000 }).catch(() => {});
  if (await del.count()) await del.click();
  await go(`#/vm/${vmid}/summary`);
  const since = now();
  await sel('[role=toolbar] button:has-text("Stop")').click();
  await taskDone('qmstop', vmid, since);
  await page.waitForFunction(() => document.querySelector('[data-testid=vm-status]')?.textContent.includes('stopped'), null, { timeout: 30000 });
  await sel('[role=toolbar] button:has-text("Delete")').click();
  const confirmBtn = sel('dialog button[type=submit]:has-text("Delete")');
  if (await confirmBtn.isEnabled()) throw new Error('delete is enabled before the VMID is typed');
  await sel('input[name=confirm-vmid]').fill(String(vmid));
  await screen('delete-confirm');
  await confirmBtn.click();
  await sel(`.tree a[data-id="qemu/${vmid}"]`).waitFor({ state: 'detached', timeout: 60000 });
  await screen('after-delete');
});

await browser.close();
const csp = consoleErrors.filter((e) => /Content Security Policy/i.test(e));
if (csp.length) fail('content security policy', csp.join('\n'));
const other = consoleErrors.filter((e) => !/Failed to load resource|EventSource|events|501|404/.test(e));
if (other.length) console.log('browser console errors (not failing):\n  ' + other.join('\n  '));
console.log('\nall UI steps passed');
