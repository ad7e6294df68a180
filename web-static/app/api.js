// The public API as any client speaks it: /api2/json (form-encoded, Proxmox's shapes) and
// /api/v1 (JSON) for what has no Proxmox equivalent. Session: the ticket cookie, the CSRF token.

const KEY = 'horcrux-session';
export const session = JSON.parse(sessionStorage.getItem(KEY) || 'null') || {};
const listeners = new Set();
export const onSession = (f) => (listeners.add(f), () => listeners.delete(f));
const emit = () => listeners.forEach((f) => f(session));

export class ApiError extends Error {
  constructor(status, message, fields) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.fields = fields || {};
  }
}

function setCookie(ticket) {
  // The server also sets it (HttpOnly) on login; this keeps Proxmox's client behaviour.
  document.cookie = ticket
    ? 'PVEAuthCookie=' + encodeURIComponent(ticket) + '; path=/; secure; samesite=strict'
    : 'PVEAuthCookie=; path=/; secure; samesite=strict; max-age=0';
}

function save(s) {
  for (const k of Object.keys(session)) delete session[k];
  Object.assign(session, s || {});
  if (s) sessionStorage.setItem(KEY, JSON.stringify(session));
  else sessionStorage.removeItem(KEY);
  emit();
}

export function qs(q) {
  if (!q) return '';
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== null && v !== '') p.append(k, v);
  const s = p.toString();
  return s ? '?' + s : '';
}

function form(body) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(body || {})) {
    if (v === undefined || v === null || v === '') continue;
    p.append(k, typeof v === 'boolean' ? (v ? '1' : '0') : String(v));
  }
  return p;
}

async function request(method, url, body, json) {
  const headers = {};
  if (method !== 'GET' && session.csrf) headers.CSRFPreventionToken = session.csrf;
  let payload;
  if (body instanceof FormData) payload = body;
  else if (json) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body || {});
  } else if (body) payload = form(body);
  const r = await fetch(url, { method, headers, body: payload, credentials: 'same-origin' });
  const text = await r.text();
  let j = text;
  try { j = JSON.parse(text); } catch { /* plain text (a serial log) */ }
  if (!r.ok) {
    const fields = (j && j.errors) || (j && j.field ? { [j.field]: j.error } : {});
    const msg = (j && (j.message || j.error)) || r.statusText || text;
    if (r.status === 401 && session.user && !url.endsWith('/access/ticket')) save(null);
    throw new ApiError(r.status, String(msg).trim(), fields);
  }
  return j;
}

const A = '/api2/json';
export const get = (p, q) => request('GET', A + p + qs(q)).then((j) => j.data);
export const post = (p, b) => request('POST', A + p, b).then((j) => j.data);
export const put = (p, b) => request('PUT', A + p, b).then((j) => j.data);
export const del = (p, q) => request('DELETE', A + p + qs(q)).then((j) => j.data);
export const v1 = {
  get: (p, q) => request('GET', '/api/v1' + p + qs(q)),
  post: (p, b, q) => request('POST', '/api/v1' + p + qs(q), b, true),
  put: (p, b) => request('PUT', '/api/v1' + p, b, true),
  del: (p) => request('DELETE', '/api/v1' + p),
};

// Login: the first step answers a ticket, or a partial one with NeedTFA.
export async function login(username, password, realm) {
  const d = await post('/access/ticket', { username, password, realm: username.includes('@') ? '' : realm });
  if (d.NeedTFA) return { tfa: true, challenge: d.ticket, username: d.username };
  start(d);
  return { ok: true };
}
export async function loginTfa(username, challenge, kind, code) {
  const d = await post('/access/ticket', { username, 'tfa-challenge': challenge, password: `${kind}:${code.trim()}` });
  start(d);
}

let renewTimer;
function start(d) {
  setCookie(d.ticket);
  save({ user: d.username, csrf: d.CSRFPreventionToken, ticket: d.ticket, at: Date.now() });
  schedule();
}
function schedule() {
  clearTimeout(renewTimer);
  if (!session.ticket) return;
  // Tickets live 2 h; renew every 15 min, as Proxmox's UI does.
  const due = Math.max(5000, (session.at || 0) + 15 * 60e3 - Date.now());
  renewTimer = setTimeout(renew, due);
}
export async function renew() {
  try {
    const d = await post('/access/ticket', { username: session.user, password: session.ticket });
    start(d);
  } catch (e) {
    if (e.status === 401) logout();
    else renewTimer = setTimeout(renew, 60e3);
  }
}
export function logout() {
  clearTimeout(renewTimer);
  setCookie(null);
  save(null);
  // The server's cookie is HttpOnly: only the server can clear it.
  fetch('/api/v1/access/ticket', { method: 'DELETE', credentials: 'same-origin' }).catch(() => {});
}
if (session.ticket) schedule();

// Realms for the login form: public in Proxmox; here maybe not (then pam/pve).
export async function realms() {
  for (const url of [A + '/access/domains', '/api/v1/access/domains']) {
    try {
      const j = await request('GET', url);
      const list = Array.isArray(j) ? j : j.data;
      if (Array.isArray(list) && list.length) return list;
    } catch { /* next */ }
  }
  return [{ realm: 'pve', comment: 'Horcrux authentication' }, { realm: 'pam', comment: 'Linux PAM' }];
}

// Upload with progress (fetch has no upload progress).
export function upload(path, fd, onProgress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open('POST', A + path);
    if (session.csrf) x.setRequestHeader('CSRFPreventionToken', session.csrf);
    x.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    x.onload = () => {
      let j = {};
      try { j = JSON.parse(x.responseText); } catch { /* keep */ }
      if (x.status >= 200 && x.status < 300) resolve(j.data);
      else reject(new ApiError(x.status, j.message || x.statusText, j.errors));
    };
    x.onerror = () => reject(new ApiError(0, 'network error'));
    x.send(fd);
  });
}

export function parseUpid(upid) {
  const p = String(upid).split(':');
  return { upid, node: p[1], starttime: parseInt(p[4], 16) || 0, type: p[5], id: p[6], user: p[7] };
}
