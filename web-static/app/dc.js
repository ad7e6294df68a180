// Datacenter summary (nodes, quorum, leader, HA, guests, storage), join tokens, members;
// the pools view.
import { useEffect, useState } from 'preact/hooks';
import { html, fmt, Table, KV, Meter, useAsync, Loading, statusIcon, act, copy, Dialog, Input } from './ui.js';
import { get, v1 } from './api.js';
import { useStore, list, store } from './store.js';

export function Datacenter() {
  const s = useStore();
  const status = useAsync(() => get('/cluster/status'), [], 10000);
  const nodes = list('node');
  const guests = list().filter((r) => r.type === 'qemu' || r.type === 'lxc');
  const storages = list('storage');
  const running = guests.filter((g) => g.status === 'running').length;
  const cluster = status.data && status.data.find((e) => e.type === 'cluster');
  const master = s.ha.get('master');
  const used = storages.reduce((a, x) => a + (x.disk || 0), 0), total = storages.reduce((a, x) => a + (x.maxdisk || 0), 0);
  useEffect(() => {
    // For the perf script: ms from navigation start to the first data shown.
    if (s.loaded && status.data && !document.body.dataset.ready) document.body.dataset.ready = String(Math.round(performance.now()));
  }, [s.loaded, !!status.data]);
  return html`<section aria-labelledby="dc-h">
    <h1 id="dc-h">Datacenter</h1>
    <div class="cards">
      <div class="card"><h2>Cluster</h2><${KV} rows=${[
        ['Name', cluster ? cluster.name : '–'],
        ['Quorum', cluster ? (cluster.quorate ? 'quorate' : 'NOT quorate') : '–'],
        ['Nodes online', `${nodes.filter((n) => n.status === 'online').length} / ${nodes.length}`],
        ['Leader', master ? master.node : '–'],
      ]} /></div>
      <div class="card"><h2>HA</h2><${KV} rows=${[...s.ha.values()].slice(0, 6).map((e) => [e.id, e.status || e.state || ''])} />
        ${s.ha.size === 0 && html`<p class="muted">No HA status.</p>`}</div>
      <div class="card"><h2>Guests</h2><${KV} rows=${[['Running', running], ['Stopped', guests.length - running], ['Total', guests.length]]} /></div>
      <div class="card"><h2>Storage</h2><p>${fmt.bytes(used)} of ${fmt.bytes(total)} used</p><${Meter} value=${total ? used / total : 0} label="Storage use" /></div>
    </div>
    <h2>Nodes</h2>
    <${Table} rowKey=${(n) => n.id} cols=${[
      { label: 'Node', render: (n) => html`<a href=${'#/node/' + n.node}>${statusIcon(n.status)} ${n.node}</a>` },
      { label: 'Status', key: 'status' },
      { label: 'CPU', render: (n) => fmt.pct(n.cpu) },
      { label: 'Memory', render: (n) => `${fmt.bytes(n.mem)} / ${fmt.bytes(n.maxmem)}` },
      { label: 'Uptime', render: (n) => fmt.uptime(n.uptime) },
    ]} rows=${nodes} />
    <${Members} status=${status} />
    <${JoinTokens} />
  </section>`;
}

function Members({ status }) {
  return html`<h2>Members</h2><${Loading} q=${status}>${(d) => html`<${Table} cols=${[
    { label: 'Name', key: 'name' }, { label: 'ID', key: 'nodeid' }, { label: 'Address', key: 'ip' },
    { label: 'Online', render: (n) => (n.online ? 'yes' : 'no') }, { label: 'Local', render: (n) => (n.local ? 'yes' : '') },
  ]} rows=${d.filter((e) => e.type === 'node')} />`}</${Loading}>`;
}

function JoinTokens() {
  const q = useAsync(() => v1.get('/cluster/tokens'), []);
  const [made, setMade] = useState(null);
  const [ttl, setTtl] = useState('3600');
  const create = async (e) => {
    e.preventDefault();
    const r = await act('Join token', () => v1.post('/cluster/tokens', { ttl_s: Number(ttl) }));
    setMade(r.token);
    q.reload();
  };
  return html`<section aria-labelledby="jt-h"><h2 id="jt-h">Cluster join tokens</h2>
    <form class="toolbar" onSubmit=${create}><${Input} label="Valid for (s)" type="number" min="1" value=${ttl} onInput=${(e) => setTtl(e.target.value)} />
      <button type="submit">Create join token</button></form>
    <${Loading} q=${q}>${(d) => html`<${Table} empty="No join tokens." cols=${[
      { label: 'ID', key: 'id' }, { label: 'Created', render: (t) => fmt.date(t.created_ms / 1000) }, { label: 'Expires', render: (t) => fmt.date(t.expires_ms / 1000) },
      { label: 'State', render: (t) => (t.revoked ? 'revoked' : t.used_by ? `used by ${t.used_by}` : t.expired ? 'expired' : 'valid') },
      { label: 'Actions', render: (t) => !t.revoked && html`<button type="button" onClick=${() => act('Revoke', () => v1.del('/cluster/tokens/' + encodeURIComponent(t.id))).then(q.reload)}>Revoke</button>` },
    ]} rows=${d} />`}</${Loading}>
    ${made && html`<${Dialog} title="Join token" onClose=${() => setMade(null)}>
      <p>Shown once: give it to the joining node.</p>
      <pre class="secret" tabindex="0" aria-label="Join token">${made}</pre>
      <div class="actions"><button type="button" class="primary" onClick=${() => copy(made)}>Copy</button></div>
    </${Dialog}>`}
  </section>`;
}

export function Pools() {
  const q = useAsync(() => get('/pools'), []);
  const [sel, setSel] = useState(null);
  const detail = useAsync(() => (sel ? get('/pools/' + encodeURIComponent(sel)) : Promise.resolve(null)), [sel]);
  return html`<section aria-labelledby="pools-h"><h1 id="pools-h">Pools</h1>
    <${Loading} q=${q}>${(d) => html`<${Table} empty="No pools." cols=${[
      { label: 'Pool', render: (p) => html`<button type="button" class="link" onClick=${() => setSel(p.poolid)}>${p.poolid}</button>` },
      { label: 'Comment', key: 'comment' },
    ]} rows=${d} />`}</${Loading}>
    ${sel && detail.data && html`<h2>Members of ${sel}</h2><${Table} cols=${[
      { label: 'ID', render: (m) => (m.type === 'qemu' ? html`<a href=${'#/vm/' + m.vmid}>${m.id}</a>` : m.id) },
      { label: 'Type', key: 'type' }, { label: 'Name', render: (m) => m.name || m.storage || '' }, { label: 'Node', key: 'node' }, { label: 'Status', key: 'status' },
    ]} rows=${detail.data.members || []} />`}
  </section>`;
}
export { store };
