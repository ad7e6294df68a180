// HA: resources, rules (create/edit; the server's conflict messages shown), status,
// failover history (if the server has a route for it).
import { useState } from 'preact/hooks';
import { html, Table, useAsync, Loading, act, Dialog, Input, Select, Check, FormError, Tabs, notify } from './ui.js';
import { get, post, put, del, v1 } from './api.js';

export function Ha({ tab = 'status' }) {
  return html`<section aria-labelledby="ha-h"><h1 id="ha-h">High availability</h1>
    <${Tabs} base="#/ha" label="HA sections" current=${tab} tabs=${[['status', 'Status'], ['resources', 'Resources'], ['rules', 'Rules'], ['history', 'Failover history']]} />
    ${tab === 'status' && html`<${Status} />`}
    ${tab === 'resources' && html`<${Resources} />`}
    ${tab === 'rules' && html`<${Rules} />`}
    ${tab === 'history' && html`<${History} />`}
  </section>`;
}

function Status() {
  const q = useAsync(() => get('/cluster/ha/status/current'), [], 5000);
  return html`<${Loading} q=${q}>${(d) => html`<${Table} rowKey=${(e) => e.id} cols=${[{ label: 'ID', key: 'id' }, { label: 'Type', key: 'type' }, { label: 'Node', key: 'node' }, { label: 'Status', render: (e) => e.status || e.state }]} rows=${d} />`}</${Loading}>`;
}

function Resources() {
  const q = useAsync(() => get('/cluster/ha/resources'), [], 5000);
  const [f, setF] = useState({ sid: '', state: 'started' });
  const [error, setError] = useState(null);
  const add = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      await post('/cluster/ha/resources', { sid: /^\d+$/.test(f.sid) ? 'vm:' + f.sid : f.sid, state: f.state });
      notify(`HA resource ${f.sid} added`);
      q.reload();
    } catch (err) { setError(err); }
  };
  return html`<div>
    <form class="toolbar wrap" onSubmit=${add} aria-label="Add an HA resource">
      <${Input} label="Resource (vm:VMID)" name="sid" value=${f.sid} onInput=${(e) => setF({ ...f, sid: e.target.value })} error=${error && error.fields.sid} />
      <${Select} label="State" name="state" value=${f.state} onChange=${(e) => setF({ ...f, state: e.target.value })} options=${['started', 'stopped', 'ignored', 'disabled']} error=${error && error.fields.state} />
      <button type="submit">Add</button>
    </form>
    <${FormError} error=${error} known=${['sid', 'state']} />
    <${Loading} q=${q}>${(d) => html`<${Table} rowKey=${(r) => r.sid} empty="No HA resources." cols=${[
      { label: 'Resource', key: 'sid' }, { label: 'State', key: 'state' }, { label: 'Node', key: 'node' }, { label: 'Max restart', key: 'max_restart' }, { label: 'Max relocate', key: 'max_relocate' },
      { label: 'Actions', render: (r) => html`<button type="button" class="danger" onClick=${() => act(`Remove ${r.sid}`, () => del(`/cluster/ha/resources/${r.sid}`)).then(q.reload)}>Remove</button>` },
    ]} rows=${d} />`}</${Loading}>
  </div>`;
}

function RuleDialog({ rule, onClose, onDone }) {
  const [f, setF] = useState(rule || { rule: '', type: 'node-affinity', resources: '', nodes: '', affinity: 'positive', strict: false, disable: false, comment: '' });
  const [error, setError] = useState(null);
  const set = (k) => (e) => setF({ ...f, [k]: e.target.type === 'checkbox' ? e.target.checked : e.target.value });
  const save = async (e) => {
    e.preventDefault();
    setError(null);
    const body = { type: f.type, resources: f.resources, comment: f.comment, disable: f.disable ? 1 : 0 };
    if (f.type === 'node-affinity') Object.assign(body, { nodes: f.nodes, strict: f.strict ? 1 : 0 });
    else body.affinity = f.affinity;
    try {
      if (rule) await put(`/cluster/ha/rules/${encodeURIComponent(rule.rule)}`, { ...body, digest: rule.digest });
      else await post('/cluster/ha/rules', { rule: f.rule, ...body });
      onDone();
      onClose();
    } catch (err) { setError(err); }
  };
  const e = (k) => error && error.fields[k];
  return html`<${Dialog} title=${rule ? `Edit rule ${rule.rule}` : 'New HA rule'} onClose=${onClose}><form onSubmit=${save}>
    ${!rule && html`<${Input} label="Rule ID" name="rule" value=${f.rule} onInput=${set('rule')} error=${e('rule')} required />`}
    <${Select} label="Type" name="type" value=${f.type} onChange=${set('type')} disabled=${!!rule} options=${['node-affinity', 'resource-affinity']} error=${e('type')} />
    <${Input} label="Resources (vm:100,vm:101)" name="resources" value=${f.resources} onInput=${set('resources')} error=${e('resources')} />
    ${f.type === 'node-affinity' ? html`<${Input} label="Nodes (node[:priority],...)" name="nodes" value=${f.nodes || ''} onInput=${set('nodes')} error=${e('nodes')} />
      <${Check} label="Strict" checked=${!!f.strict} onChange=${set('strict')} />`
      : html`<${Select} label="Affinity" name="affinity" value=${f.affinity} onChange=${set('affinity')} options=${['positive', 'negative']} error=${e('affinity')} />`}
    <${Check} label="Disabled" checked=${!!f.disable} onChange=${set('disable')} />
    <${Input} label="Comment" name="comment" value=${f.comment || ''} onInput=${set('comment')} error=${e('comment')} />
    <${FormError} error=${error} known=${['rule', 'type', 'resources', 'nodes', 'affinity', 'comment']} />
    <div class="actions"><button type="button" onClick=${onClose}>Cancel</button><button type="submit" class="primary">Save</button></div>
  </form></${Dialog}>`;
}

function Rules() {
  const q = useAsync(() => get('/cluster/ha/rules'), []);
  const [dlg, setDlg] = useState(null);
  return html`<div>
    <div class="toolbar"><button type="button" onClick=${() => setDlg({})}>New rule</button></div>
    <${Loading} q=${q}>${(d) => html`<${Table} rowKey=${(r) => r.rule} empty="No rules." cols=${[
      { label: 'Rule', key: 'rule' }, { label: 'Type', key: 'type' }, { label: 'Resources', key: 'resources' },
      { label: 'Nodes / affinity', render: (r) => r.nodes || r.affinity || '' }, { label: 'State', render: (r) => (r.disable ? 'disabled' : 'enabled') },
      { label: 'Actions', render: (r) => html`<button type="button" onClick=${() => setDlg({ rule: r })}>Edit</button>
        <button type="button" class="danger" onClick=${() => act(`Delete rule ${r.rule}`, () => del(`/cluster/ha/rules/${encodeURIComponent(r.rule)}`)).then(q.reload)}>Delete</button>` },
    ]} rows=${d} />`}</${Loading}>
    ${dlg && html`<${RuleDialog} rule=${dlg.rule} onClose=${() => setDlg(null)} onDone=${q.reload} />`}
  </div>`;
}

function History() {
  const q = useAsync(() => v1.get('/cluster/ha/history'), []);
  if (q.error) return html`<p class="muted">This server has no failover history route (${q.error.message}). Recoveries show in the task list as HA tasks.</p>`;
  return html`<${Loading} q=${q}>${(d) => html`<${Table} cols=${[{ label: 'Time', render: (e) => e.time || e.at || '' }, { label: 'Resource', render: (e) => e.sid || '' }, { label: 'Event', render: (e) => e.event || e.message || JSON.stringify(e) }]} rows=${Array.isArray(d) ? d : []} />`}</${Loading}>`;
}
