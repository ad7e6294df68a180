// A guest: actions, summary with graphs, and its tabs (hardware, options, snapshots,
// console, HA).
import { useState } from 'preact/hooks';
import { html, fmt, KV, Tabs, useAsync, Loading, act, Dialog, Input, Select, Check, FormError, statusIcon, Table, notify } from './ui.js';
import { get, post, del, v1 } from './api.js';
import { useStore, list, watch, finished } from './store.js';
import { Graphs } from './graph.js';
import { Hardware, Options } from './hardware.js';
import { Console } from './console.js';

const TABS = [['summary', 'Summary'], ['hardware', 'Hardware'], ['options', 'Options'], ['snapshots', 'Snapshots'], ['console', 'Console'], ['ha', 'HA']];

export function Guest({ vmid, tab = 'summary' }) {
  const s = useStore();
  const r = s.resources.get(`qemu/${vmid}`);
  if (!r) return html`<section><h1>VM ${vmid}</h1><p class="muted">${s.loaded ? 'No such guest (or not visible to you).' : 'Loading…'}</p></section>`;
  const base = `/nodes/${r.node}/qemu/${vmid}`;
  const g = { vmid, node: r.node, base, r };
  return html`<section aria-labelledby="vm-h">
    <div class="page-head"><h1 id="vm-h">${statusIcon(r.status)} VM ${vmid} (${r.name || ''}) <span class="sr-only">status </span><small class="status" data-status=${r.status}>${r.status}</small></h1>
      <${Actions} g=${g} /></div>
    <${Tabs} base=${'#/vm/' + vmid} tabs=${TABS} current=${tab} label="Guest sections" />
    ${tab === 'summary' && html`<${Summary} g=${g} />`}
    ${tab === 'hardware' && html`<${Hardware} g=${g} />`}
    ${tab === 'options' && html`<${Options} g=${g} />`}
    ${tab === 'snapshots' && html`<${Snapshots} g=${g} />`}
    ${tab === 'console' && html`<${Console} g=${g} />`}
    ${tab === 'ha' && html`<${Ha} g=${g} />`}
  </section>`;
}

function Actions({ g }) {
  const [dlg, setDlg] = useState(null);
  const st = g.r.status;
  const power = (a, label) => () => act(`${label} VM ${g.vmid}`, () => post(`${g.base}/status/${a}`));
  const on = st === 'running', paused = g.r.qmpstatus === 'paused' || st === 'paused';
  return html`<div class="toolbar" role="toolbar" aria-label="Guest actions">
    <button type="button" onClick=${power('start', 'Start')} disabled=${on}>Start</button>
    <button type="button" onClick=${power('shutdown', 'Shutdown')} disabled=${!on}>Shutdown</button>
    <button type="button" onClick=${power('stop', 'Stop')} disabled=${!on && !paused}>Stop</button>
    <button type="button" onClick=${power('reboot', 'Reboot')} disabled=${!on}>Reboot</button>
    ${paused ? html`<button type="button" onClick=${power('resume', 'Resume')}>Resume</button>`
      : html`<button type="button" onClick=${power('suspend', 'Suspend')} disabled=${!on}>Suspend</button>`}
    <button type="button" onClick=${() => setDlg('migrate')}>Migrate</button>
    <button type="button" class="danger" onClick=${() => setDlg('delete')}>Delete</button>
    ${dlg === 'migrate' && html`<${Migrate} g=${g} onClose=${() => setDlg(null)} />`}
    ${dlg === 'delete' && html`<${Delete} g=${g} onClose=${() => setDlg(null)} />`}
  </div>`;
}

function Migrate({ g, onClose }) {
  const targets = list('node').filter((n) => n.node !== g.node);
  const [target, setTarget] = useState(targets[0] ? targets[0].node : '');
  const [online, setOnline] = useState(g.r.status === 'running');
  const [error, setError] = useState(null);
  const go = async (e) => {
    e.preventDefault();
    try {
      watch(await post(`${g.base}/migrate`, { target, online: online ? 1 : undefined }));
      onClose();
    } catch (err) { setError(err); }
  };
  return html`<${Dialog} title=${`Migrate VM ${g.vmid}`} onClose=${onClose}><form onSubmit=${go}>
    ${targets.length === 0 ? html`<p>No other node to migrate to.</p>` : html`
      <${Select} label="Target node" value=${target} onChange=${(e) => setTarget(e.target.value)} options=${targets.map((n) => n.node)} error=${error && error.fields.target} />
      <${Check} label="Online (live) migration" checked=${online} onChange=${(e) => setOnline(e.target.checked)} />`}
    <${FormError} error=${error} known=${['target']} />
    <div class="actions"><button type="button" onClick=${onClose}>Cancel</button><button type="submit" class="primary" disabled=${!target}>Migrate</button></div>
  </form></${Dialog}>`;
}

function Delete({ g, onClose }) {
  const [typed, setTyped] = useState('');
  const [error, setError] = useState(null);
  const go = async (e) => {
    e.preventDefault();
    try {
      watch(await del(`/nodes/${g.node}/qemu/${g.vmid}`, { purge: 1 }));
      onClose();
      location.hash = '#/';
    } catch (err) { setError(err); }
  };
  return html`<${Dialog} title=${`Delete VM ${g.vmid}`} onClose=${onClose}><form onSubmit=${go}>
    <p>This deletes the guest and its disks. Type the VMID <b>${g.vmid}</b> to confirm.</p>
    <${Input} label="VMID" name="confirm-vmid" value=${typed} onInput=${(e) => setTyped(e.target.value)} autocomplete="off" />
    <${FormError} error=${error} />
    <div class="actions"><button type="button" onClick=${onClose}>Cancel</button>
      <button type="submit" class="danger" disabled=${typed.trim() !== String(g.vmid)}>Delete</button></div>
  </form></${Dialog}>`;
}

function Summary({ g }) {
  const st = useAsync(() => get(`${g.base}/status/current`), [g.base], 3000);
  const cfg = useAsync(() => get(`${g.base}/config`), [g.base]);
  return html`<div class="cards">
    <div class="card"><h2>Status</h2><${Loading} q=${st}>${(s) => html`<${KV} rows=${[
      ['Status', html`<span data-testid="vm-status">${s.status}${s.qmpstatus && s.qmpstatus !== s.status ? ` (${s.qmpstatus})` : ''}</span>`],
      ['Node', s.node || g.node],
      ['Uptime', fmt.uptime(s.uptime ?? g.r.uptime)],
      ['CPUs', s.cpus],
      ['CPU usage', fmt.pct(s.cpu ?? g.r.cpu)],
      ['Memory', `${s.mem !== undefined ? fmt.bytes(s.mem) + ' / ' : ''}${fmt.bytes(s.maxmem)}`],
      ['HA', s.ha && s.ha.managed ? s.ha.state || 'managed' : 'not managed'],
    ]} />`}</${Loading}></div>
    <div class="card"><h2>Configuration</h2><${Loading} q=${cfg}>${(c) => html`<${KV} rows=${[['Name', c.name], ['Memory', `${c.memory} MiB`], ['Cores', c.cores], ['Sockets', c.sockets], c.arch && ['Architecture', c.arch], c.args && ['Boot', c.args]]} />`}</${Loading}></div>
  </div>
  <${Graphs} path=${`${g.base}/rrddata`} charts=${[
    { title: 'CPU usage', unit: 'pct', series: [{ key: 'cpu', label: 'CPU' }] },
    { title: 'Memory', unit: 'bytes', series: [{ key: 'mem', label: 'Used' }, { key: 'maxmem', label: 'Total' }] },
    { title: 'Disk IO', unit: 'rate', series: [{ key: 'diskread', label: 'Read' }, { key: 'diskwrite', label: 'Write' }] },
    { title: 'Network', unit: 'rate', series: [{ key: 'netin', label: 'In' }, { key: 'netout', label: 'Out' }] },
  ]} />`;
}

const children = (list, parent) => list.filter((s) => (s.parent || '') === parent && s.name !== parent);
const SnapNode = ({ s, all, g, reload }) => html`<li data-snapshot=${s.name}>
  <span class=${s.name === 'current' ? 'snap current' : 'snap'}>${s.name === 'current' ? 'NOW (current state)' : s.name}</span>
  ${s.snaptime && html` <small class="muted">${fmt.date(s.snaptime)}</small>`} ${s.description && html` <small>${s.description}</small>`}
  ${s.name !== 'current' && html` <button type="button" onClick=${() => act(`Rollback ${s.name}`, () => post(`${g.base}/snapshot/${encodeURIComponent(s.name)}/rollback`)).then((u) => finished(u)).then(reload)}>Rollback ${s.name}</button>
    <button type="button" class="danger" onClick=${() => act(`Delete snapshot ${s.name}`, () => del(`${g.base}/snapshot/${encodeURIComponent(s.name)}`)).then((u) => finished(u)).then(reload)}>Delete ${s.name}</button>`}
  ${children(all, s.name).length > 0 && html`<ul>${children(all, s.name).map((c) => html`<${SnapNode} key=${c.name} s=${c} all=${all} g=${g} reload=${reload} />`)}</ul>`}
  </li>`;

function Snapshots({ g }) {
  const q = useAsync(() => get(`${g.base}/snapshot`), [g.base]);
  const [f, setF] = useState({ snapname: '', description: '', vmstate: false });
  const [error, setError] = useState(null);
  const take = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      const upid = watch(await post(`${g.base}/snapshot`, { snapname: f.snapname, description: f.description, vmstate: f.vmstate ? 1 : undefined }));
      notify(`Snapshot ${f.snapname}: started`);
      setF({ snapname: '', description: '', vmstate: false });
      finished(upid).then(q.reload);
    } catch (err) { setError(err); }
  };
  return html`<div>
    <form class="toolbar wrap" onSubmit=${take} aria-label="Take a snapshot">
      <${Input} label="Snapshot name" name="snapname" required value=${f.snapname} onInput=${(e) => setF({ ...f, snapname: e.target.value })} error=${error && error.fields.snapname} />
      <${Input} label="Description" name="description" value=${f.description} onInput=${(e) => setF({ ...f, description: e.target.value })} />
      <${Check} label="Include RAM" checked=${f.vmstate} onChange=${(e) => setF({ ...f, vmstate: e.target.checked })} />
      <button type="submit" class="primary">Take snapshot</button>
    </form>
    <${FormError} error=${error} known=${['snapname']} />
    <${Loading} q=${q}>${(all) => {
      const names = new Set(all.map((s) => s.name));
      const roots = all.filter((s) => !s.parent || !names.has(s.parent));
      return html`<ul class="snaptree">${roots.map((s) => html`<${SnapNode} key=${s.name} s=${s} all=${all} g=${g} reload=${q.reload} />`)}</ul>`;
    }}</${Loading}>
  </div>`;
}

function Ha({ g }) {
  const sid = `vm:${g.vmid}`;
  const res = useAsync(() => get(`/cluster/ha/resources/${sid}`).catch((e) => (e.status === 404 || e.status === 500 ? null : Promise.reject(e))), [sid]);
  const rules = useAsync(() => get('/cluster/ha/rules', { resource: sid }), [sid]);
  const place = useAsync(() => v1.get('/cluster/ha/placement', { sid }), [sid, res.data ? 1 : 0]);
  const [state, setState] = useState('started');
  const [rule, setRule] = useState({ rule: `vm${g.vmid}-on-${g.node}`, nodes: g.node, strict: false });
  const [error, setError] = useState(null);
  const enable = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      await post('/cluster/ha/resources', { sid, state });
      notify(`HA enabled for ${sid}`);
      res.reload(); place.reload();
    } catch (err) { setError(err); }
  };
  const addRule = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      await post('/cluster/ha/rules', { rule: rule.rule, type: 'node-affinity', resources: sid, nodes: rule.nodes, strict: rule.strict ? 1 : 0 });
      notify(`Rule ${rule.rule} created`);
      rules.reload(); place.reload();
    } catch (err) { setError(err); }
  };
  return html`<div class="cards">
    <div class="card"><h2>HA resource</h2>
      ${res.data ? html`<${KV} rows=${[['SID', res.data.sid], ['Requested state', res.data.state], ['Max restart', res.data.max_restart], ['Max relocate', res.data.max_relocate]]} />
        <button type="button" class="danger" onClick=${() => act(`Remove HA for ${sid}`, () => del(`/cluster/ha/resources/${sid}`)).then(() => { res.reload(); place.reload(); })}>Remove from HA</button>`
      : res.data === null ? html`<form onSubmit=${enable}>
        <p>Not managed by HA.</p>
        <${Select} label="Requested state" name="ha-state" value=${state} onChange=${(e) => setState(e.target.value)} options=${['started', 'stopped', 'ignored', 'disabled']} error=${error && error.fields.state} />
        <button type="submit" class="primary">Enable HA</button></form>` : html`<p class="muted">Loading…</p>`}
    </div>
    <div class="card"><h2>Rules</h2>
      <${Loading} q=${rules}>${(d) => html`<${Table} empty="No rules for this guest." cols=${[{ label: 'Rule', key: 'rule' }, { label: 'Type', key: 'type' }, { label: 'Nodes', key: 'nodes' }, { label: 'Resources', key: 'resources' }]} rows=${d} />`}</${Loading}>
      <form onSubmit=${addRule} aria-label="Add a node-affinity rule">
        <${Input} label="Rule name" name="rule" value=${rule.rule} onInput=${(e) => setRule({ ...rule, rule: e.target.value })} error=${error && error.fields.rule} />
        <${Input} label="Nodes (node[:priority],...)" name="nodes" value=${rule.nodes} onInput=${(e) => setRule({ ...rule, nodes: e.target.value })} error=${error && error.fields.nodes} />
        <${Check} label="Strict" checked=${rule.strict} onChange=${(e) => setRule({ ...rule, strict: e.target.checked })} />
        <button type="submit">Add node-affinity rule</button>
      </form>
      <${FormError} error=${error} known=${['rule', 'nodes', 'state']} />
    </div>
    <div class="card wide"><h2>Placement</h2>
      <div data-testid="placement">${place.error ? html`<p class="muted">${place.error.message}</p>` : place.data ? html`
        <p>Current node: <b>${place.data.current || '–'}</b>; the manager would place it on <b>${place.data.node || 'no node'}</b>.</p>
        <ul class="explanation">${(Array.isArray(place.data.explanation) ? place.data.explanation : [String(place.data.explanation)]).map((l) => html`<li>${l}</li>`)}</ul>
        <button type="button" onClick=${place.reload}>Refresh</button>` : html`<p class="muted">Loading…</p>`}</div>
    </div>
  </div>`;
}
