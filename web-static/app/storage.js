// A storage on a node: status, content by type, upload (with progress), delete.
import { useState } from 'preact/hooks';
import { html, fmt, KV, Meter, Table, useAsync, Loading, act, Select, FormError, notify, useId } from './ui.js';
import { get, del, upload } from './api.js';
import { watch, finished } from './store.js';

export function Storage({ node, storage }) {
  const base = `/nodes/${node}/storage/${storage}`;
  const st = useAsync(() => get(base + '/status'), [base], 10000);
  const [type, setType] = useState('');
  const content = useAsync(() => get(base + '/content', { content: type || undefined }), [base, type]);
  return html`<section aria-labelledby="st-h">
    <h1 id="st-h">Storage ${storage} on ${node}</h1>
    <${Loading} q=${st}>${(s) => html`<div class="card"><${KV} rows=${[
      ['Type', s.type], ['Content', s.content], ['Active', s.active ? 'yes' : 'no'], ['Shared', s.shared ? 'yes' : 'no'],
      ['Usage', html`${fmt.bytes(s.used)} of ${fmt.bytes(s.total)} <${Meter} value=${s.total ? s.used / s.total : 0} label="Usage" />`],
    ]} /></div>`}</${Loading}>
    <${Upload} base=${base} types=${st.data ? String(st.data.content || '').split(',') : []} onDone=${content.reload} />
    <h2>Content</h2>
    <div class="toolbar"><${Select} label="Content type" value=${type} onChange=${(e) => setType(e.target.value)} options=${[{ value: '', label: 'all' }, 'images', 'iso', 'vztmpl', 'snippets', 'backup', 'import', 'rootdir']} /></div>
    <${Loading} q=${content}>${(d) => html`<${Table} rowKey=${(v) => v.volid} empty="No content." cols=${[
      { label: 'Volume', render: (v) => html`<span data-volid=${v.volid}>${v.volid}</span>` },
      { label: 'Type', key: 'content' }, { label: 'Format', key: 'format' }, { label: 'Size', render: (v) => fmt.bytes(v.size) },
      { label: 'Created', render: (v) => fmt.date(v.ctime) },
      { label: 'Actions', render: (v) => html`<button type="button" class="danger" onClick=${() => confirm(`Delete ${v.volid}?`) && act(`Delete ${v.volid}`, () => del(`${base}/content/${encodeURIComponent(v.volid)}`)).then(() => setTimeout(content.reload, 800))}>Delete</button>` },
    ]} rows=${d} />`}</${Loading}>
  </section>`;
}

function Upload({ base, types, onDone }) {
  const opts = ['iso', 'vztmpl', 'import'].filter((t) => !types.length || types.includes(t));
  const [content, setContent] = useState('iso');
  const [file, setFile] = useState(null);
  const [progress, setProgress] = useState(null);
  const [error, setError] = useState(null);
  const id = useId('up');
  const go = async (e) => {
    e.preventDefault();
    if (!file) return;
    setError(null);
    setProgress(0);
    const fd = new FormData();
    fd.append('content', content);
    fd.append('filename', file, file.name);
    try {
      const upid = await upload(base + '/upload', fd, setProgress);
      setProgress(1);
      watch(upid);
      notify(`Upload ${file.name}: done`);
      if (upid) await Promise.race([finished(upid), new Promise((r) => setTimeout(r, 10000))]);
      onDone();
    } catch (err) {
      setError(err);
    } finally {
      setTimeout(() => setProgress(null), 1500);
    }
  };
  return html`<form class="card" onSubmit=${go} aria-labelledby=${id + 'h'}>
    <h2 id=${id + 'h'}>Upload</h2>
    <div class="toolbar wrap">
      <${Select} label="Content" name="content" value=${content} onChange=${(e) => setContent(e.target.value)} options=${opts} error=${error && error.fields.content} />
      <div class=${'field' + (error && error.fields.filename ? ' invalid' : '')}><label for=${id}>File</label>
        <input id=${id} type="file" name="file" onChange=${(e) => setFile(e.target.files[0] || null)} />
        ${error && error.fields.filename && html`<span class="error" role="alert">${error.fields.filename}</span>`}</div>
      <button type="submit" class="primary" disabled=${!file || progress !== null}>Upload</button>
    </div>
    ${progress !== null && html`<div class="field"><label for=${id + 'p'}>Upload progress</label><progress id=${id + 'p'} max="100" value=${Math.round(progress * 100)}>${Math.round(progress * 100)} %</progress> <span data-progress=${Math.round(progress * 100)}>${Math.round(progress * 100)} %</span></div>`}
    <${FormError} error=${error} known=${['content', 'filename']} />
  </form>`;
}
