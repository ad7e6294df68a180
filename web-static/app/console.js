// Consoles, as Proxmox's: VNC (noVNC over vncproxy + vncwebsocket) and serial (xterm.js
// over termproxy + vncwebsocket). Both libraries load only when a console opens.
import { useEffect, useRef, useState } from 'preact/hooks';
import { html } from './ui.js';
import { post, v1 } from './api.js';
import { watch } from './store.js';

function css(href) {
  if (document.querySelector(`link[href="${href}"]`)) return;
  const l = document.createElement('link');
  l.rel = 'stylesheet';
  l.href = href;
  document.head.appendChild(l);
}
const wsUrl = (g, port, ticket) =>
  `wss://${location.host}/api2/json/nodes/${g.node}/qemu/${g.vmid}/vncwebsocket?port=${encodeURIComponent(port)}&vncticket=${encodeURIComponent(ticket)}`;

export function Console({ g }) {
  const [kind, setKind] = useState(null);
  return html`<div>
    <div class="toolbar" role="toolbar" aria-label="Console">
      <button type="button" aria-pressed=${kind === 'vnc'} onClick=${() => setKind('vnc')}>VNC console</button>
      <button type="button" aria-pressed=${kind === 'serial'} onClick=${() => setKind('serial')}>Serial console</button>
      ${kind && html`<button type="button" onClick=${() => setKind(null)}>Disconnect</button>`}
    </div>
    ${kind === 'vnc' && html`<${Vnc} key="vnc" g=${g} />`}
    ${kind === 'serial' && html`<${Serial} key="serial" g=${g} />`}
    ${!kind && html`<p class="muted">Choose a console. ${g.r.status !== 'running' ? 'The guest is not running.' : ''}</p>`}
  </div>`;
}

function Vnc({ g }) {
  const box = useRef();
  const [state, setState] = useState('connecting');
  useEffect(() => {
    let rfb, dead = false;
    (async () => {
      try {
        const [{ default: RFB }, p] = await Promise.all([import('novnc/rfb'), post(`${g.base}/vncproxy`, { websocket: 1 })]);
        if (dead) return;
        watch(p.upid);
        rfb = new RFB(box.current, wsUrl(g, p.port, p.ticket), { credentials: { password: p.ticket }, wsProtocols: ['binary'] });
        rfb.scaleViewport = true;
        rfb.addEventListener('connect', () => setState('connected'));
        rfb.addEventListener('disconnect', (e) => !dead && setState(e.detail.clean ? 'disconnected' : 'connection lost'));
        rfb.addEventListener('credentialsrequired', () => rfb.sendCredentials({ password: p.ticket }));
        window.__horcruxRfb = rfb;
      } catch (e) {
        if (!dead) setState(`failed: ${e.message}`);
      }
    })();
    return () => { dead = true; rfb && rfb.disconnect(); };
  }, [g.vmid]);
  return html`<div><p class="muted" role="status" data-console-state=${state}>VNC: ${state}</p>
    <div ref=${box} class="vnc-screen" data-testid="vnc" role="application" aria-label="VNC screen"></div></div>`;
}

function Serial({ g }) {
  const box = useRef();
  const [state, setState] = useState('connecting');
  useEffect(() => {
    let dead = false, ws, term, ping, poll, ro;
    const enc = new TextEncoder();
    (async () => {
      css('/vendor/xterm/xterm.css');
      const [{ Terminal }, { FitAddon }] = await Promise.all([import('xterm'), import('xterm-addon-fit')]);
      if (dead) return;
      const dark = document.documentElement.dataset.theme === 'dark';
      term = new Terminal({ convertEol: false, fontSize: 14, theme: dark ? {} : { background: '#1e1e1e' }, scrollback: 5000 });
      const fit = new FitAddon();
      term.loadAddon(fit);
      term.open(box.current);
      fit.fit();
      window.__horcruxTerm = term;
      let p;
      try {
        p = await post(`${g.base}/termproxy`, { serial: 'serial0' });
      } catch (e) {
        if (dead) return;
        if (e.status !== 501 && e.status !== 404) { setState(`failed: ${e.message}`); return; }
        // No termproxy on this server: follow the serial log, read-only.
        setState('read-only (serial log)');
        let seen = '';
        const tick = async () => {
          try {
            const text = await v1.get(`/vms/${g.vmid}/serial`);
            const s = typeof text === 'string' ? text : JSON.stringify(text);
            if (s.startsWith(seen) && seen) term.write(s.slice(seen.length).replace(/\r?\n/g, '\r\n'));
            else { term.reset(); term.write(s.replace(/\r?\n/g, '\r\n')); }
            seen = s;
          } catch { /* keep trying */ }
          if (!dead) poll = setTimeout(tick, 2000);
        };
        tick();
        return;
      }
      if (dead) return;
      watch(p.upid);
      ws = new WebSocket(wsUrl(g, p.port, p.ticket), 'binary');
      ws.binaryType = 'arraybuffer';
      let ok = false;
      const send = (s) => ws.readyState === 1 && ws.send(s);
      ws.onopen = () => send(`${p.user}:${p.ticket}\n`);
      ws.onmessage = (m) => {
        const data = typeof m.data === 'string' ? enc.encode(m.data) : new Uint8Array(m.data);
        if (!ok) {
          const head = new TextDecoder().decode(data.slice(0, 2));
          if (head !== 'OK') { setState('refused'); ws.close(); return; }
          ok = true;
          setState('connected');
          send(`1:${term.cols}:${term.rows}:`);
          if (data.length > 2) term.write(data.slice(2));
          return;
        }
        term.write(data);
      };
      ws.onclose = () => !dead && setState('disconnected');
      term.onData((d) => ok && send(`0:${enc.encode(d).length}:${d}`));
      term.onResize(({ cols, rows }) => ok && send(`1:${cols}:${rows}:`));
      ping = setInterval(() => ok && send('2'), 30000);
      ro = new ResizeObserver(() => fit.fit());
      ro.observe(box.current);
      term.focus();
    })().catch((e) => !dead && setState(`failed: ${e.message}`));
    return () => {
      dead = true;
      clearInterval(ping);
      clearTimeout(poll);
      ro && ro.disconnect();
      ws && ws.close();
      term && term.dispose();
    };
  }, [g.vmid]);
  return html`<div><p class="muted" role="status" data-console-state=${state}>Serial: ${state}</p>
    <div ref=${box} class="term" data-testid="serial"></div></div>`;
}
