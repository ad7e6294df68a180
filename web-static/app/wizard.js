// Create-VM wizard: node, VMID, name, architecture, memory, cores, disk, boot (ISO or
// kernel), NIC. Created through the native POST /api/v1/vms (the only create that takes a
// kernel boot); its field errors are shown at the matching field.
import { useEffect, useState } from 'preact/hooks';
import { html, Input, Select, FormError, useAsync, notify } from './ui.js';
import { get, v1 } from './api.js';
import { list, useStore, watch } from './store.js';

// The native API's field names → the form's.
const FIELD = (f) => {
  if (f === 'memory_mib' || f === 'memory') return 'memory';
  if (f.startsWith('boot.')) return f.slice(5);
  if (f.startsWith('disks')) return f.endsWith('size_mib') ? 'disksize' : 'disk';
  if (f.startsWith('nets')) return 'bridge';
  if (f.startsWith('cdroms')) return 'iso';
  return f;
};

async function volumes(node, content) {
  const st = await get(`/nodes/${node}/storage`, { content }).catch(() => []);
  const all = await Promise.all(st.map((s) => get(`/nodes/${node}/storage/${s.storage}/content`, { content }).catch(() => [])));
  return all.flat().map((v) => v.volid);
}

export function CreateVm() {
  useStore();
  const online = list('node').filter((n) => n.status === 'online');
  const nodes = online.map((n) => n.node);
  // Automatic placement: the online node with the most free memory right now.
  const free = (n) => (n.maxmem || 0) - (n.mem || 0);
  const auto = online.reduce((best, n) => (!best || free(n) > free(best) ? n : best), null);
  const [f, setF] = useState({ node: '', vmid: '', name: '', arch: '', memory: '512', cores: '1', sockets: '1', disk: '', disksize: '8', boot: 'kernel', iso: '', kernel: '', initrd: '', cmdline: 'console=ttyS0', bridge: '', nic: true });
  const node = f.node || (auto && auto.node) || '';
  const archs = useAsync(() => v1.get('/cluster/architectures').catch(() => [{ name: 'x86_64' }]), []);
  const stor = useAsync(() => (node ? get(`/nodes/${node}/storage`, { content: 'images' }) : Promise.resolve([])), [node]);
  const files = useAsync(async () => (node ? { iso: await volumes(node, 'iso'), snippets: await volumes(node, 'snippets') } : { iso: [], snippets: [] }), [node]);
  const [errors, setErrors] = useState({});
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => { get('/cluster/nextid').then((id) => setF((o) => (o.vmid ? o : { ...o, vmid: String(id) }))).catch(() => {}); }, []);
  const set = (k) => (e) => setF({ ...f, [k]: e.target.type === 'checkbox' ? e.target.checked : e.target.value });
  const err = (k) => errors[k];
  const submit = async (e) => {
    e.preventDefault();
    setErrors({});
    setError(null);
    const local = {};
    if (!f.name.trim()) local.name = 'a name is required';
    if (f.boot === 'kernel' && !f.kernel.trim()) local.kernel = 'a kernel volume is required';
    if (Object.keys(local).length) return setErrors(local);
    const body = { name: f.name.trim(), memory_mib: Number(f.memory), cores: Number(f.cores), sockets: Number(f.sockets) };
    if (f.vmid) body.vmid = Number(f.vmid);
    if (f.arch) body.arch = f.arch;
    const disk = f.disk || (stor.data && stor.data[0] && stor.data[0].storage);
    if (disk && Number(f.disksize) > 0) body.disks = [{ storage: disk, size_mib: Math.round(Number(f.disksize) * 1024) }];
    if (f.boot === 'kernel') body.boot = { kernel: f.kernel.trim(), initrd: f.initrd.trim() || undefined, cmdline: f.cmdline };
    if (f.boot === 'iso' && f.iso) body.cdroms = [{ slot: 'ide2', volume: f.iso }];
    if (f.nic) body.nets = [{ index: 0, model: 'virtio', bridge: f.bridge || undefined }];
    setBusy(true);
    try {
      const r = await v1.post('/vms', body, { node });
      watch(r.upid);
      notify(`VM ${r.vmid || body.vmid || ''} created`);
      const vmid = r.vmid || body.vmid || (r.upid && r.upid.split(':')[6]);
      location.hash = vmid ? `#/vm/${vmid}` : '#/';
    } catch (ex) {
      const fe = {};
      for (const [k, v] of Object.entries(ex.fields || {})) fe[FIELD(k)] = v;
      setErrors(fe);
      setError({ message: ex.message, fields: fe });
    } finally {
      setBusy(false);
    }
  };
  const known = ['node', 'vmid', 'name', 'arch', 'memory', 'cores', 'sockets', 'disk', 'disksize', 'iso', 'kernel', 'initrd', 'cmdline', 'bridge'];
  const F = (k, label, p = {}) => html`<${Input} label=${label} name=${k} value=${f[k]} onInput=${set(k)} error=${err(k)} ...${p} />`;
  const fileList = (files.data ? [...files.data.snippets, ...files.data.iso] : []);
  return html`<section aria-labelledby="cv-h"><h1 id="cv-h">Create VM</h1>
    <form class="wizard" onSubmit=${submit} novalidate>
      <fieldset><legend>General</legend>
        <${Select} label="Node" name="node" value=${f.node} onChange=${set('node')} error=${err('node')}
          options=${[{ value: '', label: auto ? `Automatic (${auto.node}: most free memory)` : 'Automatic' }, ...nodes]} />
        ${F('vmid', 'VM ID', { type: 'number', min: 100 })}
        ${F('name', 'Name', { required: true, hint: 'a DNS name: letters, digits, hyphens' })}
        <${Select} label="CPU architecture" name="arch" value=${f.arch} onChange=${set('arch')} error=${err('arch')}
          options=${[{ value: '', label: 'default (x86_64)' }, ...(archs.data || []).map((a) => ({ value: a.name, label: a.name + (a.native_nodes && a.native_nodes.length ? '' : ' (emulated)') }))]} />
      </fieldset>
      <fieldset><legend>Resources</legend>
        ${F('memory', 'Memory (MiB)', { type: 'number', min: 1 })}
        ${F('cores', 'Cores', { type: 'number', min: 1 })}
        ${F('sockets', 'Sockets', { type: 'number', min: 1 })}
        <${Select} label="Disk storage" name="disk" value=${f.disk} onChange=${set('disk')} error=${err('disk')} options=${(stor.data || []).map((s) => ({ value: s.storage, label: `${s.storage} (${s.type})` }))} />
        ${F('disksize', 'Disk size (GiB, 0: no disk)', { type: 'number', min: 0, step: 'any' })}
      </fieldset>
      <fieldset><legend>Boot</legend>
        <${Select} label="Boot from" name="boot" value=${f.boot} onChange=${set('boot')} options=${[{ value: 'kernel', label: 'Kernel and initrd' }, { value: 'iso', label: 'ISO image (CD-ROM)' }, { value: 'none', label: 'Disk / network' }]} />
        ${f.boot === 'iso' && html`<${Select} label="ISO image" name="iso" value=${f.iso} onChange=${set('iso')} error=${err('iso')} options=${[{ value: '', label: 'none' }, ...(files.data ? files.data.iso : [])]} />`}
        ${f.boot === 'kernel' && html`
          ${F('kernel', 'Kernel (volume)', { list: 'bootfiles', placeholder: 'local:snippets/vmlinuz' })}
          ${F('initrd', 'Initrd (volume)', { list: 'bootfiles', placeholder: 'local:snippets/initrd.gz' })}
          ${F('cmdline', 'Kernel command line')}
          <datalist id="bootfiles">${fileList.map((v) => html`<option value=${v}></option>`)}</datalist>`}
      </fieldset>
      <fieldset><legend>Network</legend>
        <div class="field check"><input type="checkbox" id="cv-nic" checked=${f.nic} onChange=${set('nic')} /><label for="cv-nic">Network device (virtio)</label></div>
        ${f.nic && F('bridge', 'Bridge', { hint: 'empty: user-mode networking (NAT)', placeholder: 'vmbr0' })}
      </fieldset>
      <${FormError} error=${error} known=${known} />
      <div class="actions"><a href="#/" class="button">Cancel</a><button type="submit" class="primary" disabled=${busy}>Create</button></div>
    </form></section>`;
}
