// Entry: session gate, hash routing, layout (header, resource tree, content, task panel),
// theme. Test hook: window.__horcruxBench(n).
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { html, Notices } from './ui.js';
import { session, onSession, logout } from './api.js';
import { useStore, startLive, stopLive } from './store.js';
import { Login } from './login.js';
import { Tree } from './tree.js';
import { Datacenter, Pools } from './dc.js';
import { Node } from './node.js';
import { Guest } from './guest.js';
import { CreateVm } from './wizard.js';
import { Storage } from './storage.js';
import { Ha } from './ha.js';
import { Access } from './access.js';
import { TaskPanel } from './tasks.js';

// Theme: remembered, else the system's.
const THEME = 'horcrux-theme';
function applyTheme(t) {
  document.documentElement.dataset.theme = t;
}
applyTheme(localStorage.getItem(THEME) || (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'));

function useHash() {
  const [h, set] = useState(location.hash || '#/');
  useEffect(() => {
    const f = () => set(location.hash || '#/');
    addEventListener('hashchange', f);
    return () => removeEventListener('hashchange', f);
  }, []);
  return h;
}

function route(hash) {
  const p = hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  switch (p[0]) {
    case 'vm': return html`<${Guest} key=${p[1]} vmid=${Number(p[1])} tab=${p[2]} />`;
    case 'node': return html`<${Node} key=${p[1]} node=${p[1]} />`;
    case 'storage': return html`<${Storage} key=${p[1] + p[2]} node=${p[1]} storage=${p[2]} />`;
    case 'create': return html`<${CreateVm} />`;
    case 'ha': return html`<${Ha} tab=${p[1]} />`;
    case 'access': return html`<${Access} tab=${p[1]} />`;
    case 'pools': return html`<${Pools} />`;
    default: return html`<${Datacenter} />`;
  }
}

function ThemeToggle() {
  const [t, setT] = useState(document.documentElement.dataset.theme);
  const flip = () => {
    const n = t === 'dark' ? 'light' : 'dark';
    localStorage.setItem(THEME, n);
    applyTheme(n);
    setT(n);
  };
  return html`<button type="button" class="theme" aria-pressed=${t === 'dark'} onClick=${flip}>Dark theme</button>`;
}

function Shell() {
  const s = useStore();
  const hash = useHash();
  const [menu, setMenu] = useState(false);
  useEffect(() => { startLive(); return stopLive; }, []);
  useEffect(() => setMenu(false), [hash]);
  return html`<div class="shell">
    <a class="skip" href="#main" onClick=${(e) => { e.preventDefault(); document.getElementById('main').focus(); }}>Skip to content</a>
    <header class="top">
      <button type="button" class="menu" aria-expanded=${menu} aria-controls="tree" onClick=${() => setMenu(!menu)}>Menu</button>
      <a class="brand" href="#/">Horcrux</a>
      <a class="button primary" href="#/create">Create VM</a>
      <span class="spacer"></span>
      <${ThemeToggle} />
      <span class="who" data-testid="user">${session.user}</span>
      <a class="button" href="#/access/tfa">Second factor</a>
      <button type="button" onClick=${logout}>Log out</button>
    </header>
    <nav id="tree" class=${'side' + (menu ? ' open' : '')} aria-label="Resources">
      <${Tree} resources=${[...s.resources.values()]} current=${hash} />
    </nav>
    <main id="main" tabindex="-1">${s.error && !s.loaded ? html`<p class="form-error" role="alert">${s.error}</p>` : route(hash)}</main>
    <${TaskPanel} />
    <${Notices} />
  </div>`;
}

function App() {
  const [user, setUser] = useState(session.user);
  useEffect(() => onSession((s) => setUser(s.user)), []);
  useEffect(() => { if (!user) delete document.body.dataset.ready; }, [user]);
  return user ? html`<${Shell} key=${user} />` : html`<${Login} />`;
}

render(html`<${App} />`, document.getElementById('app'));

// Perf hook: renders n synthetic guests into the tree, answers the ms it took (render and
// a forced layout).
window.__horcruxBench = (n = 1000) => {
  const res = [{ id: 'node/bench', type: 'node', node: 'bench', status: 'online' }];
  for (let i = 0; i < n; i++) res.push({ id: `qemu/${1000 + i}`, type: 'qemu', vmid: 1000 + i, name: `bench-${i}`, node: 'bench', status: i % 3 ? 'running' : 'stopped' });
  const box = document.createElement('div');
  box.className = 'side';
  document.body.appendChild(box);
  const t0 = performance.now();
  render(html`<${Tree} resources=${res} current="#/" />`, box);
  void box.offsetHeight;
  const ms = performance.now() - t0;
  render(null, box);
  box.remove();
  return ms;
};
