// Access: users, groups, roles, ACLs, API tokens (secret shown once), realms, and the
// second-factor enrolment with its QR code.
import { useEffect, useState } from 'preact/hooks';
import { html, Table, useAsync, Loading, act, Dialog, Input, Select, Check, FormError, Tabs, notify, copy } from './ui.js';
import { get, post, put, del, v1, session } from './api.js';

export function Access({ tab = 'users' }) {
  return html`<section aria-labelledby="ac-h"><h1 id="ac-h">Access</h1>
    <${Tabs} base="#/access" label="Access sections" current=${tab} tabs=${[['users', 'Users'], ['groups', 'Groups'], ['roles', 'Roles'], ['acl', 'Permissions'], ['tokens', 'API tokens'], ['realms', 'Realms'], ['tfa', 'Second factor']]} />
    ${tab === 'users' && html`<${Users} />`}
    ${tab === 'groups' && html`<${Groups} />`}
    ${tab === 'roles' && html`<${Roles} />`}
    ${tab === 'acl' && html`<${Acl} />`}
    ${tab === 'tokens' && html`<${Tokens} />`}
    ${tab === 'realms' && html`<${Realms} />`}
    ${tab === 'tfa' && html`<${Tfa} userid=${session.user} />`}
  </section>`;
}

// A small create form: fields [{k, label, type}], posted to `path`.
function CreateForm({ title, fields, submit, onDone }) {
  const [f, setF] = useState(Object.fromEntries(fields.map((x) => [x.k, x.value || ''])));
  const [error, setError] = useState(null);
  const go = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      await submit(f);
      notify(`${title}: done`);
      setF(Object.fromEntries(fields.map((x) => [x.k, x.value || ''])));
      onDone && onDone();
    } catch (err) { setError(err); }
  };
  return html`<form class="card" onSubmit=${go} aria-label=${title}><h2>${title}</h2><div class="toolbar wrap">
    ${fields.map((x) => (x.options
      ? html`<${Select} label=${x.label} name=${x.k} value=${f[x.k]} options=${x.options} onChange=${(e) => setF({ ...f, [x.k]: e.target.value })} error=${error && error.fields[x.k]} />`
      : html`<${Input} label=${x.label} name=${x.k} type=${x.type || 'text'} autocomplete=${x.type === 'password' ? 'new-password' : 'off'} value=${f[x.k]} onInput=${(e) => setF({ ...f, [x.k]: e.target.value })} error=${error && error.fields[x.k]} />`))}
    <button type="submit" class="primary">${title}</button></div>
    <${FormError} error=${error} known=${fields.map((x) => x.k)} /></form>`;
}

function Users() {
  const q = useAsync(() => get('/access/users'), []);
  const [tfa, setTfa] = useState(null);
  return html`<div>
    <${CreateForm} title="Create user" onDone=${q.reload} submit=${(f) => post('/access/users', f)} fields=${[
      { k: 'userid', label: 'User (name@realm)' }, { k: 'password', label: 'Password', type: 'password' }, { k: 'email', label: 'E-mail' }, { k: 'comment', label: 'Comment' }]} />
    <${Loading} q=${q}>${(d) => html`<${Table} rowKey=${(u) => u.userid} cols=${[
      { label: 'User', key: 'userid' }, { label: 'Enabled', render: (u) => (u.enable === 0 ? 'no' : 'yes') }, { label: 'E-mail', key: 'email' }, { label: 'Comment', key: 'comment' },
      { label: 'Actions', render: (u) => html`<button type="button" onClick=${() => setTfa(u.userid)}>Second factor</button>
        <button type="button" class="danger" onClick=${() => act(`Delete ${u.userid}`, () => del(`/access/users/${encodeURIComponent(u.userid)}`)).then(q.reload)}>Delete</button>` },
    ]} rows=${d} />`}</${Loading}>
    ${tfa && html`<${Dialog} title=${`Second factor of ${tfa}`} onClose=${() => setTfa(null)} wide><${Tfa} userid=${tfa} /></${Dialog}>`}
  </div>`;
}

function Groups() {
  const q = useAsync(() => get('/access/groups'), []);
  return html`<div>
    <${CreateForm} title="Create group" onDone=${q.reload} submit=${(f) => post('/access/groups', f)} fields=${[{ k: 'groupid', label: 'Group' }, { k: 'comment', label: 'Comment' }]} />
    <${Loading} q=${q}>${(d) => html`<${Table} rowKey=${(g) => g.groupid} empty="No groups." cols=${[{ label: 'Group', key: 'groupid' }, { label: 'Members', render: (g) => g.users || '' }, { label: 'Comment', key: 'comment' },
      { label: 'Actions', render: (g) => html`<button type="button" class="danger" onClick=${() => act(`Delete ${g.groupid}`, () => del(`/access/groups/${encodeURIComponent(g.groupid)}`)).then(q.reload)}>Delete</button>` }]} rows=${d} />`}</${Loading}>
  </div>`;
}

function Roles() {
  const q = useAsync(() => get('/access/roles'), []);
  return html`<div>
    <${CreateForm} title="Create role" onDone=${q.reload} submit=${(f) => post('/access/roles', f)} fields=${[{ k: 'roleid', label: 'Role' }, { k: 'privs', label: 'Privileges (comma-separated)' }]} />
    <${Loading} q=${q}>${(d) => html`<${Table} rowKey=${(r) => r.roleid} cols=${[{ label: 'Role', key: 'roleid' }, { label: 'Built in', render: (r) => (r.special ? 'yes' : '') }, { label: 'Privileges', render: (r) => html`<span class="privs">${String(r.privs || '').replace(/,/g, ', ')}</span>` }]} rows=${d} />`}</${Loading}>
  </div>`;
}

function Acl() {
  const q = useAsync(() => get('/access/acl'), []);
  const roles = useAsync(() => get('/access/roles').then((r) => r.map((x) => x.roleid)), []);
  return html`<div>
    <${CreateForm} title="Add permission" onDone=${q.reload} submit=${(f) => put('/access/acl', { path: f.path, roles: f.roles, [f.kind]: f.who, propagate: 1 })} fields=${[
      { k: 'path', label: 'Path', value: '/' }, { k: 'kind', label: 'For', value: 'users', options: [{ value: 'users', label: 'User' }, { value: 'groups', label: 'Group' }, { value: 'tokens', label: 'API token' }] },
      { k: 'who', label: 'User, group or token' }, { k: 'roles', label: 'Role', value: 'PVEAuditor', options: roles.data || ['Administrator', 'PVEAuditor', 'PVEVMUser', 'PVEVMAdmin'] }]} />
    <${Loading} q=${q}>${(d) => html`<${Table} empty="No permissions." cols=${[{ label: 'Path', key: 'path' }, { label: 'Type', key: 'type' }, { label: 'User/group/token', key: 'ugid' }, { label: 'Role', key: 'roleid' }, { label: 'Propagate', render: (a) => (a.propagate ? 'yes' : 'no') },
      { label: 'Actions', render: (a) => html`<button type="button" class="danger" onClick=${() => act('Remove permission', () => put('/access/acl', { path: a.path, roles: a.roleid, [a.type === 'group' ? 'groups' : a.type === 'token' ? 'tokens' : 'users']: a.ugid, delete: 1 })).then(q.reload)}>Remove</button>` }]} rows=${d} />`}</${Loading}>
  </div>`;
}

function Tokens() {
  const users = useAsync(() => get('/access/users'), []);
  const [user, setUser] = useState(session.user);
  const q = useAsync(() => (user ? get(`/access/users/${encodeURIComponent(user)}/token`) : Promise.resolve([])), [user]);
  const [secret, setSecret] = useState(null);
  const [f, setF] = useState({ tokenid: '', privsep: true });
  const [error, setError] = useState(null);
  const create = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      const r = await post(`/access/users/${encodeURIComponent(user)}/token/${encodeURIComponent(f.tokenid)}`, { privsep: f.privsep ? 1 : 0 });
      setSecret(r);
      setF({ tokenid: '', privsep: true });
      q.reload();
    } catch (err) { setError(err); }
  };
  const names = [...new Set([session.user, ...(users.data || []).map((u) => u.userid)])].filter(Boolean);
  return html`<div>
    <form class="card" onSubmit=${create} aria-label="Create API token"><h2>Create API token</h2><div class="toolbar wrap">
      <${Select} label="User" name="token-user" value=${user} onChange=${(e) => setUser(e.target.value)} options=${names} />
      <${Input} label="Token ID" name="tokenid" value=${f.tokenid} onInput=${(e) => setF({ ...f, tokenid: e.target.value })} error=${error && error.fields.tokenid} />
      <${Check} label="Privilege separation" checked=${f.privsep} onChange=${(e) => setF({ ...f, privsep: e.target.checked })} />
      <button type="submit" class="primary">Create token</button></div>
      <${FormError} error=${error} known=${['tokenid']} /></form>
    <${Loading} q=${q}>${(d) => html`<${Table} rowKey=${(t) => t.tokenid} empty="No tokens." cols=${[{ label: 'Token', render: (t) => `${user}!${t.tokenid}` }, { label: 'Privilege separation', render: (t) => (t.privsep ? 'yes' : 'no') }, { label: 'Expires', render: (t) => (t.expire ? new Date(t.expire * 1000).toLocaleString() : 'never') }, { label: 'Comment', key: 'comment' },
      { label: 'Actions', render: (t) => html`<button type="button" class="danger" onClick=${() => act(`Delete token ${t.tokenid}`, () => del(`/access/users/${encodeURIComponent(user)}/token/${encodeURIComponent(t.tokenid)}`)).then(q.reload)}>Delete</button>` }]} rows=${d} />`}</${Loading}>
    ${secret && html`<${Dialog} title="API token created" onClose=${() => setSecret(null)}>
      <p>Token <b>${secret['full-tokenid']}</b>. The secret is shown <b>once</b>: copy it now.</p>
      <pre class="secret" data-testid="token-secret" tabindex="0" aria-label="Token secret">${secret.value}</pre>
      <div class="actions"><button type="button" class="primary" onClick=${() => copy(secret.value)}>Copy secret</button></div>
    </${Dialog}>`}
  </div>`;
}

function Realms() {
  const q = useAsync(() => v1.get('/access/domains'), []);
  return html`<${Loading} q=${q}>${(d) => html`<${Table} rowKey=${(r) => r.realm} cols=${[{ label: 'Realm', key: 'realm' }, { label: 'Type', key: 'type' }, { label: 'Comment', key: 'comment' }]} rows=${d} />`}</${Loading}>`;
}

// TOTP enrolment: the otpauth:// URI as a QR code (uqr, loaded here), the recovery codes once.
export function Tfa({ userid }) {
  const [r, setR] = useState(null);
  const [svg, setSvg] = useState('');
  const [error, setError] = useState(null);
  useEffect(() => {
    if (!r) return;
    import('uqr').then((m) => setSvg(m.renderSVG(r.uri)));
  }, [r]);
  const enrol = async () => {
    setError(null);
    try { setR(await v1.post(`/access/tfa/${encodeURIComponent(userid)}`)); } catch (e) { setError(e); }
  };
  const remove = async () => {
    setError(null);
    try { await v1.del(`/access/tfa/${encodeURIComponent(userid)}`); setR(null); notify('Second factor removed'); } catch (e) { setError(e); }
  };
  const src = svg ? 'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(svg) : '';
  return html`<div class="card"><h2>TOTP for ${userid}</h2>
    <p>Enrolling replaces any factor the user has; the user's tickets end.</p>
    <div class="toolbar"><button type="button" class="primary" onClick=${enrol}>Enrol TOTP</button><button type="button" class="danger" onClick=${remove}>Remove second factor</button></div>
    <${FormError} error=${error} />
    ${r && html`<div class="tfa">
      ${src && html`<img class="qr" src=${src} width="200" height="200" alt=${'QR code of ' + r.uri} />`}
      <div><p>Scan the code with an authenticator app, or enter the secret:</p>
        <pre class="secret" data-testid="tfa-secret" tabindex="0" aria-label="TOTP secret">${r.secret}</pre>
        <p>Recovery codes (each works once; shown only now):</p>
        <pre class="secret" tabindex="0" aria-label="Recovery codes">${(r.recovery || []).join('\n')}</pre>
        <button type="button" onClick=${() => copy((r.recovery || []).join('\n'))}>Copy recovery codes</button></div>
    </div>`}
  </div>`;
}
