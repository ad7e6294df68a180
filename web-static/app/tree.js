// The resource tree: datacenter → nodes → guests and storages, with a search box.
import { useState } from 'preact/hooks';
import { html, statusIcon } from './ui.js';

const guestLabel = (g) => `${g.vmid} (${g.name || 'VM ' + g.vmid})`;
const hrefOf = (r) => (r.type === 'node' ? `#/node/${r.node}` : r.type === 'storage' ? `#/storage/${r.node}/${r.storage}` : `#/vm/${r.vmid}`);

function Item({ r, label, current, status }) {
  const href = hrefOf(r);
  return html`<li><a href=${href} aria-current=${current === href ? 'page' : undefined} data-id=${r.id}>
    ${statusIcon(status)}<span>${label}</span><span class="sr-only"> (${status})</span></a></li>`;
}

// `resources`: /cluster/resources entries; `current`: the route's hash.
export function Tree({ resources, current, filter: initial = '' }) {
  const [q, setQ] = useState(initial);
  const [closed, setClosed] = useState({});
  const f = q.trim().toLowerCase();
  const match = (r) => !f || [r.name, r.vmid, r.node, r.storage, r.status].some((v) => v !== undefined && String(v).toLowerCase().includes(f));
  const nodes = resources.filter((r) => r.type === 'node').sort((a, b) => a.node.localeCompare(b.node));
  const guests = resources.filter((r) => r.type === 'qemu' || r.type === 'lxc');
  const storages = resources.filter((r) => r.type === 'storage');
  const byNode = new Map(nodes.map((n) => [n.node, { guests: [], storages: [] }]));
  for (const g of guests) if (match(g)) (byNode.get(g.node) || byNode.set(g.node, { guests: [], storages: [] }).get(g.node)).guests.push(g);
  for (const s of storages) if (match(s)) (byNode.get(s.node) || byNode.set(s.node, { guests: [], storages: [] }).get(s.node)).storages.push(s);
  const toggle = (n) => setClosed({ ...closed, [n]: !closed[n] });
  return html`<div class="tree">
    <div class="tree-search"><label for="tree-q" class="sr-only">Search resources</label>
      <input id="tree-q" type="search" placeholder="Search" value=${q} onInput=${(e) => setQ(e.target.value)} /></div>
    <ul class="tree-root">
      <li><a href="#/" aria-current=${current === '#/' || current === '' ? 'page' : undefined}>${statusIcon('dc')}<span>Datacenter</span></a>
        <ul>${[...byNode.entries()].map(([name, c]) => {
          const n = nodes.find((x) => x.node === name) || { node: name, id: 'node/' + name, type: 'node', status: 'unknown' };
          if (f && !match(n) && !c.guests.length && !c.storages.length) return null;
          const open = !closed[name] || !!f;
          return html`<li key=${name} class="tree-node">
            <button type="button" class="twisty" aria-expanded=${open} aria-label=${`${open ? 'Collapse' : 'Expand'} node ${name}`} onClick=${() => toggle(name)}>${open ? '▾' : '▸'}</button>
            <a href=${hrefOf(n)} aria-current=${current === hrefOf(n) ? 'page' : undefined} data-id=${n.id}>${statusIcon(n.status)}<span>${name}</span><span class="sr-only"> (${n.status})</span></a>
            ${open && html`<ul>
              ${c.guests.sort((a, b) => a.vmid - b.vmid).map((g) => html`<${Item} key=${g.id} r=${g} label=${guestLabel(g)} current=${current} status=${g.status} />`)}
              ${c.storages.sort((a, b) => a.storage.localeCompare(b.storage)).map((s) => html`<${Item} key=${s.id} r=${s} label=${s.storage} current=${current} status=${s.status === 'available' ? 'available' : s.status} />`)}
            </ul>`}
          </li>`;
        })}</ul></li>
    </ul>
    <ul class="tree-links">
      <li><a href="#/pools" aria-current=${current.startsWith('#/pools') ? 'page' : undefined}>Pools</a></li>
      <li><a href="#/ha" aria-current=${current.startsWith('#/ha') ? 'page' : undefined}>HA</a></li>
      <li><a href="#/access" aria-current=${current.startsWith('#/access') ? 'page' : undefined}>Access</a></li>
    </ul>
  </div>`;
}
