// rrddata graphs with uPlot, loaded only when a graph is shown.
import { useEffect, useRef, useState } from 'preact/hooks';
import { html, fmt, Select } from './ui.js';
import { get } from './api.js';

let uplot;
function loadUplot() {
  if (!uplot) {
    const l = document.createElement('link');
    l.rel = 'stylesheet';
    l.href = '/vendor/uplot/uPlot.min.css';
    document.head.appendChild(l);
    uplot = import('uplot').then((m) => m.default);
  }
  return uplot;
}

const COLORS = ['#2f7ed8', '#e4572e', '#29a35a', '#9c5dd6'];
const css = (v) => getComputedStyle(document.documentElement).getPropertyValue(v).trim() || '#888';

// One chart: `series` = [{key, label, scale?: fn}], over `data` (rrddata rows).
export function Chart({ title, data, series, unit }) {
  const box = useRef();
  const plot = useRef();
  const [err, setErr] = useState(null);
  const cols = [data.map((d) => d.time), ...series.map((s) => data.map((d) => (d[s.key] === undefined || d[s.key] === null ? null : s.scale ? s.scale(d[s.key], d) : d[s.key])))];
  const points = cols[1] ? cols[1].filter((v) => v !== null).length : 0;
  const yfmt = unit === 'bytes' ? fmt.bytes : unit === 'pct' ? (v) => `${(v * 100).toFixed(0)}%` : unit === 'rate' ? (v) => fmt.bytes(v) + '/s' : (v) => (+v).toFixed(2);
  useEffect(() => {
    let dead = false;
    loadUplot().then((U) => {
      if (dead || !box.current) return;
      const w = Math.max(240, box.current.clientWidth || 400);
      if (plot.current) {
        plot.current.setData(cols);
        return;
      }
      const axis = { stroke: css('--fg-muted'), grid: { stroke: css('--border') }, ticks: { stroke: css('--border') } };
      plot.current = new U({
        width: w, height: 160,
        series: [{}, ...series.map((s, i) => ({ label: s.label, stroke: COLORS[i], fill: COLORS[i] + '22', width: 1.5, value: (u, v) => (v === null ? '–' : yfmt(v)) }))],
        axes: [axis, { ...axis, size: 84, values: (u, vals) => vals.map(yfmt) }],
        scales: unit === 'pct' ? { y: { range: [0, 1] } } : {},
        legend: { live: true },
      }, cols, box.current);
    }).catch((e) => setErr(e.message));
    return () => { dead = true; };
  }, [data]);
  useEffect(() => () => plot.current && plot.current.destroy(), []);
  useEffect(() => {
    const ro = new ResizeObserver(() => plot.current && box.current && plot.current.setSize({ width: Math.max(240, box.current.clientWidth), height: 160 }));
    box.current && ro.observe(box.current);
    return () => ro.disconnect();
  }, []);
  return html`<figure class="chart">
    <figcaption>${title}</figcaption>
    ${err && html`<p class="form-error">${err}</p>`}
    <div ref=${box} class="chart-box" data-points=${points} data-chart=${title} role="img" aria-label=${`${title} graph, ${points} data points`}></div>
  </figure>`;
}

// The graphs of one rrddata source, with the timeframe and consolidation selectors.
export function Graphs({ path, charts, refresh = 5000 }) {
  const [tf, setTf] = useState('hour');
  const [cf, setCf] = useState('AVERAGE');
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    let dead = false;
    const load = () => get(path, { timeframe: tf, cf }).then((d) => !dead && (setData(d || []), setError(null)), (e) => !dead && setError(e));
    load();
    const t = setInterval(() => !document.hidden && load(), refresh);
    return () => { dead = true; clearInterval(t); };
  }, [path, tf, cf]);
  return html`<section class="graphs" aria-label="Graphs">
    <div class="toolbar">
      <${Select} label="Timeframe" value=${tf} onChange=${(e) => setTf(e.target.value)} options=${['hour', 'day', 'week', 'month', 'year']} />
      <${Select} label="Consolidation" value=${cf} onChange=${(e) => setCf(e.target.value)} options=${[{ value: 'AVERAGE', label: 'Average' }, { value: 'MAX', label: 'Maximum' }]} />
    </div>
    ${error && html`<p class="form-error" role="alert">${error.message}</p>`}
    <div class="chart-grid">${data && charts.map((c) => html`<${Chart} key=${c.title} data=${data} ...${c} />`)}</div>
  </section>`;
}
