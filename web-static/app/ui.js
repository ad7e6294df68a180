// Shared pieces: htm binding, form fields with the API's errors, dialogs, tables, formats,
// data loading, notices.
import { h } from 'preact';
import { useEffect, useRef, useState, useCallback } from 'preact/hooks';
import htm from 'htm';
import { watch } from './store.js';

export const html = htm.bind(h);

export const fmt = {
  bytes(n) {
    if (n === undefined || n === null || isNaN(n)) return '–';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
    let i = 0;
    n = Number(n);
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
  },
  pct: (x) => (x === undefined || x === null || isNaN(x) ? '–' : `${(x * 100).toFixed(1)} %`),
  uptime(s) {
    if (!s) return '–';
    const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    return (d ? `${d}d ` : '') + `${String(hh).padStart(2, '0')}:${String(m).padStart(2, '0')}:${String(Math.floor(s % 60)).padStart(2, '0')}`;
  },
  date: (t) => (t ? new Date(t * 1000).toLocaleString() : '–'),
};

// Loads `fn()` on mount and when deps change; reload() again.
export function useAsync(fn, deps = [], every = 0) {
  const [state, set] = useState({ loading: true });
  const gen = useRef(0);
  const load = useCallback(async () => {
    const g = ++gen.current;
    try {
      const data = await fn();
      if (g === gen.current) set({ data });
    } catch (error) {
      if (g === gen.current) set((s) => ({ data: s.data, error }));
    }
  }, deps);
  useEffect(() => {
    set({ loading: true });
    load();
    if (!every) return () => gen.current++;
    const t = setInterval(() => !document.hidden && load(), every);
    return () => (clearInterval(t), gen.current++);
  }, [load]);
  return { ...state, reload: load };
}

let noticeSet = null;
export function notify(text, kind = 'info') {
  const id = Math.random();
  if (!noticeSet) return;
  noticeSet((n) => [...n.slice(-2), { text, kind, id }]);
  setTimeout(() => noticeSet && noticeSet((n) => n.filter((x) => x.id !== id)), kind === 'error' ? 12000 : 5000);
}
export function Notices() {
  const [n, set] = useState([]);
  noticeSet = set;
  return html`<div class="notices" role="status" aria-live="polite">
    ${n.map((x) => html`<div key=${x.id} class=${'notice ' + x.kind}>${x.text}
      <button class="link" type="button" onClick=${() => set((all) => all.filter((y) => y !== x))} aria-label="Dismiss">×</button></div>`)}
  </div>`;
}

// Runs an API action; a UPID answer goes to the task panel; errors become notices.
export async function act(label, fn) {
  try {
    const r = await fn();
    if (typeof r === 'string' && r.startsWith('UPID:')) watch(r);
    else if (r && typeof r.upid === 'string') watch(r.upid);
    notify(`${label}: started`);
    return r;
  } catch (e) {
    notify(`${label}: ${e.message}`, 'error');
    throw e;
  }
}

let uid = 0;
export const useId = (p = 'f') => useRef(`${p}${++uid}`).current;

export function Field({ label, error, id, children, hint }) {
  return html`<div class=${'field' + (error ? ' invalid' : '')}>
    <label for=${id}>${label}</label>
    ${children}
    ${hint && html`<small class="hint" id=${id + '-hint'}>${hint}</small>`}
    ${error && html`<span class="error" id=${id + '-err'} role="alert">${error}</span>`}
  </div>`;
}
export function Input({ label, error, hint, id, ...p }) {
  const own = useId();
  id = id || own;
  const desc = [error && id + '-err', hint && id + '-hint'].filter(Boolean).join(' ') || undefined;
  return html`<${Field} label=${label} error=${error} id=${id} hint=${hint}>
    <input id=${id} aria-invalid=${error ? 'true' : undefined} aria-describedby=${desc} ...${p} />
  </${Field}>`;
}
export function Select({ label, error, id, options, ...p }) {
  const own = useId();
  id = id || own;
  return html`<${Field} label=${label} error=${error} id=${id}>
    <select id=${id} aria-invalid=${error ? 'true' : undefined} aria-describedby=${error ? id + '-err' : undefined} ...${p}>
      ${options.map((o) => (typeof o === 'string' ? html`<option value=${o}>${o}</option>` : html`<option value=${o.value}>${o.label ?? o.value}</option>`))}
    </select>
  </${Field}>`;
}
export function Check({ label, ...p }) {
  const id = useId();
  return html`<div class="field check"><input type="checkbox" id=${id} ...${p} /><label for=${id}>${label}</label></div>`;
}

// The error of a request: field errors shown at their fields, the rest here.
export function FormError({ error, known = [] }) {
  if (!error) return null;
  const others = Object.entries(error.fields || {}).filter(([k]) => !known.includes(k));
  return html`<div class="form-error" role="alert">${error.message}
    ${others.length > 0 && html`<ul>${others.map(([k, v]) => html`<li><b>${k}</b>: ${v}</li>`)}</ul>`}</div>`;
}

// A modal <dialog>: focus kept inside, Escape closes.
export function Dialog({ title, onClose, children, wide }) {
  const ref = useRef();
  const tid = useId('dlg');
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
    return () => d && d.open && d.close();
  }, []);
  return html`<dialog ref=${ref} class=${wide ? 'wide' : ''} aria-labelledby=${tid} onCancel=${(e) => (e.preventDefault(), onClose())}>
    <div class="dialog-head"><h2 id=${tid}>${title}</h2>
      <button type="button" class="icon" aria-label="Close" onClick=${onClose}>×</button></div>
    <div class="dialog-body">${children}</div>
  </dialog>`;
}

export function Table({ cols, rows, empty = 'Nothing here.', caption, rowKey }) {
  return html`<div class="table-wrap"><table>
    ${caption && html`<caption>${caption}</caption>`}
    <thead><tr>${cols.map((c) => html`<th scope="col">${c.label}</th>`)}</tr></thead>
    <tbody>${rows.length === 0
      ? html`<tr><td colspan=${cols.length} class="muted">${empty}</td></tr>`
      : rows.map((r, i) => html`<tr key=${rowKey ? rowKey(r) : i}>${cols.map((c) => html`<td>${c.render ? c.render(r) : r[c.key] ?? ''}</td>`)}</tr>`)}
    </tbody></table></div>`;
}

export function Tabs({ base, tabs, current, label }) {
  return html`<nav class="tabs" aria-label=${label}>${tabs.map(([id, name]) => html`<a href=${`${base}/${id}`} aria-current=${id === current ? 'page' : undefined}>${name}</a>`)}</nav>`;
}

export function Loading({ q, children }) {
  if (q.error && !q.data) return html`<p class="form-error" role="alert">${q.error.message}</p>`;
  if (q.data === undefined) return html`<p class="muted">Loading…</p>`;
  return children(q.data);
}

export function Meter({ value, label }) {
  const v = Math.max(0, Math.min(1, value || 0));
  return html`<span class="meter" role="meter" aria-label=${label} aria-valuemin="0" aria-valuemax="100" aria-valuenow=${Math.round(v * 100)}><span style=${`width:${v * 100}%`}></span></span>`;
}

export function KV({ rows }) {
  return html`<dl class="kv">${rows.filter(Boolean).map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>`;
}

export const statusIcon = (s) => html`<span class=${'dot ' + (s || 'unknown')} aria-hidden="true"></span>`;

export async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    notify('Copied to the clipboard');
  } catch {
    notify('Copy failed: select the text and copy it', 'error');
  }
}
