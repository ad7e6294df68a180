// The task panel (running and recent tasks, cluster-wide) and a task's streaming log.
import { useEffect, useRef, useState } from 'preact/hooks';
import { html, fmt, Dialog } from './ui.js';
import { useStore } from './store.js';
import { get } from './api.js';

const NAMES = {
  qmstart: 'Start', qmstop: 'Stop', qmshutdown: 'Shutdown', qmreboot: 'Reboot', qmsuspend: 'Suspend', qmresume: 'Resume',
  qmcreate: 'Create', qmdestroy: 'Destroy', qmigrate: 'Migrate', qmsnapshot: 'Snapshot', qmrollback: 'Rollback',
  qmdelsnapshot: 'Delete snapshot', qmmove: 'Move disk', imgcopy: 'Upload', vncproxy: 'VNC console', termproxy: 'Serial console', vncterm: 'Console',
};
export const taskName = (t) => `${NAMES[t.type] || t.type || 'Task'}${t.id ? ' ' + t.id : ''}`;
const state = (t) => (t.endtime || (t.status && t.status !== 'running') ? t.status || 'OK' : 'running');

export function TaskPanel() {
  const s = useStore();
  const [open, setOpen] = useState(null);
  const [shown, setShown] = useState(true);
  const tasks = [...s.tasks.values()].sort((a, b) => (state(b) === 'running') - (state(a) === 'running') || b.starttime - a.starttime).slice(0, 50);
  const running = tasks.filter((t) => state(t) === 'running').length;
  return html`<footer class="taskpanel" aria-label="Tasks">
    <div class="taskhead">
      <h2 id="tasks-h">Tasks${running ? ` (${running} running)` : ''}</h2>
      <span class="muted small">${s.live ? 'live' : 'polling'}</span>
      <button type="button" class="link" aria-expanded=${shown} aria-controls="tasklist" onClick=${() => setShown(!shown)}>${shown ? 'Hide' : 'Show'}</button>
    </div>
    ${shown && html`<div id="tasklist" class="tasklist" role="region" aria-labelledby="tasks-h" tabindex="0"><table>
      <thead><tr><th scope="col">Start</th><th scope="col">End</th><th scope="col">Node</th><th scope="col">User</th><th scope="col">Description</th><th scope="col">Status</th></tr></thead>
      <tbody>${tasks.length === 0 ? html`<tr><td colspan="6" class="muted">No tasks.</td></tr>` : tasks.map((t) => html`<tr key=${t.upid} data-upid=${t.upid} data-status=${state(t)}>
        <td>${fmt.date(t.starttime)}</td><td>${t.endtime ? fmt.date(t.endtime) : ''}</td><td>${t.node}</td><td>${t.user}</td>
        <td><button type="button" class="link" onClick=${() => setOpen(t.upid)}>${taskName(t)}</button></td>
        <td class=${'st-' + (state(t) === 'OK' ? 'ok' : state(t) === 'running' ? 'run' : 'err')}>${state(t)}</td></tr>`)}</tbody>
    </table></div>`}
    ${open && html`<${TaskLog} upid=${open} onClose=${() => setOpen(null)} />`}
  </footer>`;
}

export function TaskLog({ upid, onClose }) {
  const [lines, setLines] = useState([]);
  const [status, setStatus] = useState(null);
  const pre = useRef();
  const node = upid.split(':')[1];
  useEffect(() => {
    let dead = false, n = 0, timer;
    const base = `/nodes/${node}/tasks/${encodeURIComponent(upid)}`;
    const poll = async () => {
      try {
        const [log, st] = await Promise.all([get(base + '/log', { start: n, limit: 500 }), get(base + '/status')]);
        if (dead) return;
        if (log && log.length) {
          n = Math.max(...log.map((l) => l.n)) ;
          setLines((old) => [...old, ...log.filter((l) => !old.some((o) => o.n === l.n))]);
        }
        setStatus(st);
        if (st.status === 'stopped') {
          // One more read: the last lines may land with the stop.
          const rest = await get(base + '/log', { start: n, limit: 500 });
          if (!dead && rest) setLines((old) => [...old, ...rest.filter((l) => !old.some((o) => o.n === l.n))]);
          return;
        }
      } catch (e) {
        if (!dead) setStatus({ status: 'error', exitstatus: e.message });
        if (e.status === 404) return;
      }
      timer = setTimeout(poll, 1000);
    };
    poll();
    return () => { dead = true; clearTimeout(timer); };
  }, [upid]);
  useEffect(() => { if (pre.current) pre.current.scrollTop = pre.current.scrollHeight; }, [lines]);
  return html`<${Dialog} title=${'Task ' + taskName(status || { ...parse(upid) })} onClose=${onClose} wide>
    <p>Status: <b data-task-status=${status ? status.status : ''}>${status ? (status.status === 'stopped' ? `stopped: ${status.exitstatus}` : status.status) : '…'}</b></p>
    <pre ref=${pre} class="tasklog" tabindex="0" aria-label="Task log">${lines.map((l) => l.t).join('\n')}</pre>
    <p class="muted small">${upid}</p>
  </${Dialog}>`;
}
const parse = (u) => { const p = u.split(':'); return { type: p[5], id: p[6] }; };
