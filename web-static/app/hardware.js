// A guest's hardware (memory, CPU, disks, NICs, CD-ROM; pending changes marked) and options.
import { useState } from 'preact/hooks';
import { html, useAsync, Loading, act, Dialog, Input, Select, FormError, Table, notify } from './ui.js';
import { get, put, post } from './api.js';
import { watch } from './store.js';

const DISK = /^(virtio|scsi|sata|ide)\d+$/;
const OPTIONS = ['onboot', 'boot', 'description', 'tags', 'ostype', 'bios', 'machine', 'cpu', 'vga', 'agent', 'acpi', 'tablet', 'protection', 'startup', 'hotplug', 'numa', 'balloon', 'kvm', 'scsihw'];

function useConfig(g) {
  const cfg = useAsync(() => get(`${g.base}/config`), [g.base]);
  const pend = useAsync(() => get(`${g.base}/pending`).catch(() => []), [g.base]);
  const reload = () => { cfg.reload(); pend.reload(); };
  return { cfg, pend, reload };
}

// Edit one config key (PUT config); field errors at the field.
function EditKey({ g, k, label, value, type = 'text', options, onClose, onDone }) {
  const [v, setV] = useState(value ?? '');
  const [error, setError] = useState(null);
  const save = async (e) => {
    e.preventDefault();
    try {
      await put(`${g.base}/config`, v === '' ? { delete: k } : { [k]: v });
      notify(`${label} saved`);
      onDone();
      onClose();
    } catch (err) { setError(err); }
  };
  return html`<${Dialog} title=${`Edit ${label}`} onClose=${onClose}><form onSubmit=${save}>
    ${options ? html`<${Select} label=${label} name=${k} value=${v} onChange=${(e) => setV(e.target.value)} options=${options} error=${error && error.fields[k]} />`
      : html`<${Input} label=${label} name=${k} type=${type} value=${v} onInput=${(e) => setV(e.target.value)} error=${error && error.fields[k]} />`}
    <${FormError} error=${error} known=${[k]} />
    <div class="actions"><button type="button" onClick=${onClose}>Cancel</button><button type="submit" class="primary">Save</button></div>
  </form></${Dialog}>`;
}

function DiskDialog({ g, mode, disk, cfg, onClose, onDone }) {
  const storages = useAsync(() => get(`/nodes/${g.node}/storage`, { content: 'images' }), [g.node]);
  const used = Object.keys(cfg).filter((k) => DISK.test(k));
  let free = 0;
  while (used.includes(`virtio${free}`)) free++;
  const [f, setF] = useState({ slot: `virtio${free}`, storage: '', size: mode === 'resize' ? '+1G' : '1', iso: '' });
  const [error, setError] = useState(null);
  const st = f.storage || (storages.data && storages.data[0] && storages.data[0].storage) || '';
  const go = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      if (mode === 'add') await put(`${g.base}/config`, { [f.slot]: `${st}:${f.size}` });
      if (mode === 'resize') await put(`${g.base}/resize`, { disk, size: f.size });
      if (mode === 'move') watch(await post(`${g.base}/move_disk`, { disk, storage: st, delete: 1 }));
      notify(`Disk ${mode}: done`);
      onDone();
      onClose();
    } catch (err) { setError(err); }
  };
  const sOpts = (storages.data || []).map((s) => s.storage);
  return html`<${Dialog} title=${mode === 'add' ? 'Add disk' : `${mode === 'resize' ? 'Resize' : 'Move'} disk ${disk}`} onClose=${onClose}><form onSubmit=${go}>
    ${mode === 'add' && html`<${Input} label="Slot" name="slot" value=${f.slot} onInput=${(e) => setF({ ...f, slot: e.target.value })} error=${error && error.fields[f.slot]} />`}
    ${mode !== 'resize' && html`<${Select} label="Storage" name="storage" value=${st} onChange=${(e) => setF({ ...f, storage: e.target.value })} options=${sOpts} error=${error && error.fields.storage} />`}
    ${mode !== 'move' && html`<${Input} label=${mode === 'add' ? 'Size (GiB)' : 'Size (e.g. +1G or 10G)'} name="size" value=${f.size} onInput=${(e) => setF({ ...f, size: e.target.value })} error=${error && error.fields.size} />`}
    <${FormError} error=${error} known=${['storage', 'size', f.slot]} />
    <div class="actions"><button type="button" onClick=${onClose}>Cancel</button><button type="submit" class="primary">OK</button></div>
  </form></${Dialog}>`;
}

function CdDialog({ g, slot, value, onClose, onDone }) {
  const isos = useAsync(async () => {
    const st = await get(`/nodes/${g.node}/storage`, { content: 'iso' });
    const all = await Promise.all(st.map((s) => get(`/nodes/${g.node}/storage/${s.storage}/content`, { content: 'iso' }).catch(() => [])));
    return all.flat();
  }, [g.node]);
  const cur = (value || '').split(',')[0];
  const [v, setV] = useState(cur && cur !== 'none' ? cur : 'none');
  const [error, setError] = useState(null);
  const go = async (e) => {
    e.preventDefault();
    try {
      await put(`${g.base}/config`, { [slot]: `${v},media=cdrom` });
      onDone();
      onClose();
    } catch (err) { setError(err); }
  };
  return html`<${Dialog} title=${`CD-ROM ${slot}`} onClose=${onClose}><form onSubmit=${go}>
    <${Loading} q=${isos}>${(list) => html`<${Select} label="ISO image" name="iso" value=${v} onChange=${(e) => setV(e.target.value)} options=${[{ value: 'none', label: 'No media' }, ...list.map((i) => ({ value: i.volid, label: i.volid }))]} error=${error && error.fields[slot]} />`}</${Loading}>
    <${FormError} error=${error} known=${[slot]} />
    <div class="actions"><button type="button" onClick=${onClose}>Cancel</button><button type="submit" class="primary">OK</button></div>
  </form></${Dialog}>`;
}

export function Hardware({ g }) {
  const { cfg, pend, reload } = useConfig(g);
  const [dlg, setDlg] = useState(null);
  const close = () => setDlg(null);
  return html`<${Loading} q=${cfg}>${(c) => {
    const pending = new Map((pend.data || []).filter((p) => p.pending !== undefined || p.delete).map((p) => [p.key, p]));
    const rows = [];
    const mark = (k) => pending.get(k);
    const row = (k, label, value, buttons) => rows.push({ k, label, value, buttons, p: mark(k) });
    row('memory', 'Memory', `${c.memory} MiB`, html`<button type="button" onClick=${() => setDlg({ t: 'key', k: 'memory', label: 'Memory (MiB)', type: 'number', value: c.memory })}>Edit</button>`);
    row('cores', 'Processors', `${c.sockets || 1} socket(s), ${c.cores} core(s)`, html`<button type="button" onClick=${() => setDlg({ t: 'key', k: 'cores', label: 'Cores', type: 'number', value: c.cores })}>Edit cores</button>
      <button type="button" onClick=${() => setDlg({ t: 'key', k: 'sockets', label: 'Sockets', type: 'number', value: c.sockets })}>Edit sockets</button>`);
    if (c.args) row('args', 'Kernel boot', c.args, null);
    for (const k of Object.keys(c).filter((k) => DISK.test(k)).sort()) {
      if (String(c[k]).includes('media=cdrom')) row(k, `CD/DVD drive (${k})`, c[k], html`<button type="button" onClick=${() => setDlg({ t: 'cd', slot: k, value: c[k] })}>Change media</button>`);
      else row(k, `Hard disk (${k})`, c[k], html`
        <button type="button" onClick=${() => setDlg({ t: 'disk', mode: 'resize', disk: k })}>Resize</button>
        <button type="button" onClick=${() => setDlg({ t: 'disk', mode: 'move', disk: k })}>Move</button>
        <button type="button" onClick=${() => act(`Detach ${k}`, () => put(`${g.base}/unlink`, { idlist: k })).then(reload)}>Detach</button>`);
    }
    for (const k of Object.keys(c).filter((k) => /^unused\d+$/.test(k))) row(k, `Unused disk (${k})`, c[k], html`<button type="button" class="danger" onClick=${() => act(`Remove ${k}`, () => put(`${g.base}/unlink`, { idlist: k, force: 1 })).then(reload)}>Remove</button>`);
    for (const k of Object.keys(c).filter((k) => /^net\d+$/.test(k)).sort()) row(k, `Network device (${k})`, c[k], html`
      <button type="button" onClick=${() => setDlg({ t: 'key', k, label: `Network device ${k}`, value: c[k] })}>Edit</button>
      <button type="button" class="danger" onClick=${() => act(`Remove ${k}`, () => put(`${g.base}/config`, { delete: k })).then(reload)}>Remove</button>`);
    for (const [k, p] of pending) if (!rows.some((r) => r.k === k)) rows.push({ k, label: k, value: '', p });
    let nn = 0;
    while (c['net' + nn] !== undefined) nn++;
    return html`<div>
      <div class="toolbar" role="toolbar" aria-label="Add hardware">
        <button type="button" onClick=${() => setDlg({ t: 'disk', mode: 'add' })}>Add disk</button>
        <button type="button" onClick=${() => setDlg({ t: 'key', k: 'net' + nn, label: `Network device net${nn}`, value: 'virtio,bridge=vmbr0' })}>Add network device</button>
        <button type="button" onClick=${() => setDlg({ t: 'cd', slot: c.ide2 ? 'ide2' : 'ide2', value: c.ide2 })}>CD-ROM</button>
      </div>
      <${Table} rowKey=${(r) => r.k} cols=${[
        { label: 'Device', render: (r) => html`${r.label}${r.p ? html` <span class="badge" title="pending change">pending</span>` : ''}` },
        { label: 'Value', render: (r) => html`<code>${r.value}</code>${r.p ? html`<div class="pending">${r.p.delete ? 'to be removed' : html`→ <code>${r.p.pending}</code>`}</div>` : ''}` },
        { label: 'Actions', render: (r) => r.buttons || '' },
      ]} rows=${rows} />
      ${dlg && dlg.t === 'key' && html`<${EditKey} g=${g} ...${dlg} onClose=${close} onDone=${reload} />`}
      ${dlg && dlg.t === 'disk' && html`<${DiskDialog} g=${g} ...${dlg} cfg=${c} onClose=${close} onDone=${reload} />`}
      ${dlg && dlg.t === 'cd' && html`<${CdDialog} g=${g} ...${dlg} onClose=${close} onDone=${reload} />`}
    </div>`;
  }}</${Loading}>`;
}

export function Options({ g }) {
  const { cfg, pend, reload } = useConfig(g);
  const [dlg, setDlg] = useState(null);
  return html`<${Loading} q=${cfg}>${(c) => {
    const pending = new Map((pend.data || []).map((p) => [p.key, p]));
    return html`<div><${Table} rowKey=${(k) => k} cols=${[
      { label: 'Option', render: (k) => k },
      { label: 'Value', render: (k) => html`<code>${c[k] ?? ''}</code>${pending.get(k) && pending.get(k).pending !== undefined ? html` <span class="badge">pending: ${String(pending.get(k).pending)}</span>` : ''}` },
      { label: 'Actions', render: (k) => html`<button type="button" onClick=${() => setDlg({ k, label: k, value: c[k] ?? '' })}>Edit ${k}</button>` },
    ]} rows=${[...OPTIONS.filter((k) => c[k] !== undefined), ...OPTIONS.filter((k) => c[k] === undefined)]} />
      ${dlg && html`<${EditKey} g=${g} ...${dlg} onClose=${() => setDlg(null)} onDone=${reload} />`}</div>`;
  }}</${Loading}>`;
}
