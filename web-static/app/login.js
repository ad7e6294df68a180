// Login: user, password, realm; then the second factor (TOTP or a recovery code) if asked.
import { useEffect, useState } from 'preact/hooks';
import { html, Input, Select, FormError } from './ui.js';
import { login, loginTfa, realms } from './api.js';

export function Login() {
  const [list, setList] = useState([{ realm: 'pve' }, { realm: 'pam' }]);
  const [f, setF] = useState({ username: '', password: '', realm: 'pve' });
  const [tfa, setTfa] = useState(null);
  const [code, setCode] = useState('');
  const [kind, setKind] = useState('totp');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => { realms().then((r) => { setList(r); if (!r.some((x) => x.realm === 'pve')) setF((o) => ({ ...o, realm: r[0].realm })); }); }, []);
  const set = (k) => (e) => setF({ ...f, [k]: e.target.value });
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (tfa) await loginTfa(tfa.username, tfa.challenge, kind, code);
      else {
        const r = await login(f.username.trim(), f.password, f.realm);
        if (r.tfa) setTfa(r);
      }
    } catch (err) {
      setError(err);
      if (tfa && err.status === 401) { setTfa(null); setCode(''); }
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="login" id="main">
    <form class="card login-card" onSubmit=${submit} aria-labelledby="login-h">
      <h1 id="login-h">Horcrux</h1>
      ${!tfa ? html`
        <${Input} label="User name" name="username" autocomplete="username" required value=${f.username} onInput=${set('username')} error=${error && error.fields.username} />
        <${Input} label="Password" name="password" type="password" autocomplete="current-password" required value=${f.password} onInput=${set('password')} error=${error && error.fields.password} />
        <${Select} label="Realm" name="realm" value=${f.realm} onChange=${set('realm')} options=${list.map((r) => ({ value: r.realm, label: r.comment ? `${r.realm} – ${r.comment}` : r.realm }))} />
      ` : html`
        <p>Second factor for <b>${tfa.username}</b></p>
        <${Select} label="Factor" name="tfa-kind" value=${kind} onChange=${(e) => setKind(e.target.value)} options=${[{ value: 'totp', label: 'Authenticator code (TOTP)' }, { value: 'recovery', label: 'Recovery code' }]} />
        <${Input} label=${kind === 'totp' ? 'Code' : 'Recovery code'} name="tfa-code" autocomplete="one-time-code" inputmode=${kind === 'totp' ? 'numeric' : 'text'} required value=${code} onInput=${(e) => setCode(e.target.value)} />
      `}
      ${error && html`<p class="form-error" role="alert">${error.status === 401 ? 'Login failed: wrong user name, password or code.' : error.message}</p>`}
      <div class="actions">
        ${tfa && html`<button type="button" onClick=${() => { setTfa(null); setError(null); }}>Back</button>`}
        <button type="submit" class="primary" disabled=${busy}>${tfa ? 'Verify' : 'Log in'}</button>
      </div>
    </form>
  </main>`;
}
