// A node: status, graphs (CPU, memory, load, network), its guests and tasks.
import { html, fmt, KV, Table, useAsync, Loading, statusIcon } from './ui.js';
import { get } from './api.js';
import { list } from './store.js';
import { useStore } from './store.js';
import { Graphs } from './graph.js';
import { taskName } from './tasks.js';

export function Node({ node }) {
  useStore();
  const st = useAsync(() => get(`/nodes/${node}/status`), [node], 10000);
  const tasks = useAsync(() => get(`/nodes/${node}/tasks`, { source: 'all', limit: 20 }), [node], 5000);
  const guests = list().filter((r) => (r.type === 'qemu' || r.type === 'lxc') && r.node === node);
  return html`<section aria-labelledby="node-h">
    <h1 id="node-h">Node ${node}</h1>
    <${Loading} q=${st}>${(s) => html`<div class="card"><${KV} rows=${[
      ['Status', s.status || 'online'],
      ['CPU', `${fmt.pct(s.cpu)} of ${s.cpuinfo ? s.cpuinfo.cpus : '?'} CPUs${s.cpuinfo ? ' (' + s.cpuinfo.model + ')' : ''}`],
      ['Load', (s.loadavg || []).join(', ')],
      ['Memory', s.memory ? `${fmt.bytes(s.memory.used)} / ${fmt.bytes(s.memory.total)}` : '–'],
      ['Root disk', s.rootfs ? `${fmt.bytes(s.rootfs.used)} / ${fmt.bytes(s.rootfs.total)}` : '–'],
      ['Uptime', fmt.uptime(s.uptime)],
      ['Kernel', s.kversion],
      ['Version', s.pveversion],
    ]} /></div>`}</${Loading}>
    <${Graphs} path=${`/nodes/${node}/rrddata`} charts=${[
      { title: 'CPU usage', unit: 'pct', series: [{ key: 'cpu', label: 'CPU' }, { key: 'iowait', label: 'IO wait' }] },
      { title: 'Memory', unit: 'bytes', series: [{ key: 'memused', label: 'Used' }, { key: 'memtotal', label: 'Total' }] },
      { title: 'Load average', unit: 'num', series: [{ key: 'loadavg', label: 'Load' }] },
      { title: 'Network', unit: 'rate', series: [{ key: 'netin', label: 'In' }, { key: 'netout', label: 'Out' }] },
    ]} />
    <h2>Guests</h2>
    <${Table} rowKey=${(g) => g.id} cols=${[
      { label: 'VMID', render: (g) => html`<a href=${'#/vm/' + g.vmid}>${statusIcon(g.status)} ${g.vmid}</a>` },
      { label: 'Name', key: 'name' }, { label: 'Status', key: 'status' },
      { label: 'CPU', render: (g) => fmt.pct(g.cpu) }, { label: 'Memory', render: (g) => fmt.bytes(g.maxmem) },
    ]} rows=${guests.sort((a, b) => a.vmid - b.vmid)} empty="No guests." />
    <h2>Tasks</h2>
    <${Loading} q=${tasks}>${(d) => html`<${Table} rowKey=${(t) => t.upid} cols=${[
      { label: 'Start', render: (t) => fmt.date(t.starttime) }, { label: 'User', key: 'user' },
      { label: 'Description', render: (t) => taskName(t) }, { label: 'Status', render: (t) => t.status || 'running' },
    ]} rows=${d} empty="No tasks." />`}</${Loading}>
  </section>`;
}
