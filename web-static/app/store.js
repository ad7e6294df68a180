// Cluster-wide state the tree, summaries and task panel share: resources, tasks, HA.
// Live from /api/v1/events (server-sent events); polled every 5 s when that fails.
import { useEffect, useState } from 'preact/hooks';
import { get, parseUpid } from './api.js';

export const store = { resources: new Map(), tasks: new Map(), ha: new Map(), loaded: false, live: false, error: null };
const subs = new Set();
let tick = 0;
export function changed() {
  tick++;
  subs.forEach((f) => f(tick));
}
export function useStore() {
  const [, set] = useState(0);
  useEffect(() => (subs.add(set), () => subs.delete(set)), []);
  return store;
}

export const list = (type) => [...store.resources.values()].filter((r) => !type || r.type === type);

function setResources(data) {
  store.resources = new Map(data.map((r) => [r.id, r]));
  store.loaded = true;
  store.error = null;
}

export function addTask(t) {
  const prev = store.tasks.get(t.upid) || parseUpid(t.upid);
  store.tasks.set(t.upid, { ...prev, ...t });
  if (store.tasks.size > 200) {
    const old = [...store.tasks.values()].sort((a, b) => a.starttime - b.starttime).slice(0, store.tasks.size - 200);
    old.forEach((o) => store.tasks.delete(o.upid));
  }
  changed();
}

// A task the UI started: shown at once, its status polled until it ends (the event
// stream also reports it, when there is one).
const watching = new Set();
export function watch(upid) {
  if (!upid || typeof upid !== 'string' || !upid.startsWith('UPID:')) return upid;
  addTask({ upid, status: undefined });
  if (watching.has(upid)) return upid;
  watching.add(upid);
  const t = parseUpid(upid);
  const poll = async () => {
    try {
      const s = await get(`/nodes/${t.node}/tasks/${encodeURIComponent(upid)}/status`);
      addTask({ upid, status: s.status === 'stopped' ? s.exitstatus : undefined, endtime: s.status === 'stopped' ? s.endtime || Date.now() / 1000 : undefined });
      if (s.status === 'stopped') return watching.delete(upid);
    } catch (e) {
      if (e.status === 404) return watching.delete(upid);
    }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 300);
  return upid;
}
// Resolves with the exit status once the task has stopped.
export function finished(upid) {
  if (typeof upid !== 'string' || !upid.startsWith('UPID:')) return Promise.resolve(null);
  watch(upid);
  return new Promise((resolve) => {
    const check = () => {
      const t = store.tasks.get(upid);
      if (t && t.endtime) { subs.delete(check); resolve(t.status); }
    };
    subs.add(check);
    check();
  });
}

export async function refreshResources() {
  try {
    setResources(await get('/cluster/resources'));
  } catch (e) {
    store.error = e.message;
  }
  changed();
}

let clusterTasks = true;
export async function refreshTasks() {
  let tasks = [];
  if (clusterTasks) {
    try {
      tasks = await get('/cluster/tasks');
    } catch (e) {
      if (e.status === 501 || e.status === 404) clusterTasks = false;
    }
  }
  if (!clusterTasks) {
    const nodes = list('node').filter((n) => n.status === 'online');
    const parts = await Promise.all(
      nodes.map((n) => get(`/nodes/${n.node}/tasks`, { source: 'all', limit: 50 }).catch(() => [])),
    );
    tasks = parts.flat();
  }
  for (const t of tasks || []) {
    const prev = store.tasks.get(t.upid);
    store.tasks.set(t.upid, { ...(prev || parseUpid(t.upid)), ...t });
  }
  changed();
}

export async function refreshHa() {
  try {
    const s = await get('/cluster/ha/status/current');
    store.ha = new Map(s.map((e) => [e.id, e]));
    changed();
  } catch { /* no rights, or no HA */ }
}

let es, pollTimer, running = false;
export function startLive() {
  if (running) return;
  running = true;
  refreshResources().then(refreshTasks);
  refreshHa();
  try {
    es = new EventSource('/api/v1/events');
  } catch {
    es = null;
  }
  if (!es) return startPolling();
  let opened = false;
  es.onopen = () => { opened = true; store.live = true; stopPolling(); changed(); };
  es.onerror = () => {
    store.live = false;
    // Not there (404), or refused: poll. A dropped stream reconnects by itself; poll meanwhile.
    if (!opened || es.readyState === EventSource.CLOSED) { es.close(); es = null; }
    startPolling();
    changed();
  };
  const on = (name, f) => es.addEventListener(name, (m) => {
    try { f(JSON.parse(m.data)); changed(); } catch { /* ignore a malformed event */ }
  });
  on('resource', (r) => store.resources.set(r.id, r));
  on('removed', (r) => store.resources.delete(r.id));
  on('task', (t) => addTask(t));
  on('ha', (h) => store.ha.set(h.id, h));
}
function startPolling() {
  if (pollTimer) return;
  pollTimer = setInterval(() => {
    if (document.hidden) return;
    refreshResources();
    refreshTasks();
    refreshHa();
  }, 5000);
}
function stopPolling() {
  clearInterval(pollTimer);
  pollTimer = null;
}
export function stopLive() {
  running = false;
  if (es) es.close();
  es = null;
  stopPolling();
  store.resources = new Map();
  store.tasks = new Map();
  store.loaded = false;
}
