'use strict';
// The SVP frame: main storage with its LPARs and gaps, drawn from GET /api/lpars and animated from
// the /events stream (svp-console/map.cpp draws the same map as text). What the daemon sends
// (names, reasons, some written by guests) reaches the page only through textContent/setAttribute.

const SVG = 'http://www.w3.org/2000/svg';
const STATES = ['running', 'stopped', 'relocating', 'failed', 'activating', 'deactivating', 'defined'];
const LOG_MAX = 30;
const STALE_MS = 120000;  // an operation whose events stopped (events dropped) is dropped after this
const BAR_Y = 8, BAR_H = 112, PAD = 12;
const FIELDS = { mvstor: ['lpar', 'origin', 'mode'], exchange: ['lpar', 'b'], expand: ['lpar', 'mib'],
  shrink: ['lpar', 'mib'], stop: ['lpar'], start: ['lpar'] };
const VERBS = { mvstor: 'copied', exchange: 'copied', expand: 'plugged', shrink: 'released' };

const $ = (id) => document.getElementById(id);
const num = (v, fallback = 0) => (typeof v === 'number' && Number.isFinite(v) ? v : fallback);
const str = (v) => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : '');
const show = (v) => (v == null ? '–' : String(v));
const ms = (us) => `${(num(us) / 1000).toFixed(1)} ms`;
const part = (done, total) => (num(total) > 0 ? Math.max(0, Math.min(1, num(done) / num(total))) : 0);
const stateClass = (s) => `state-${STATES.includes(s) ? s : 'other'}`;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}
function attrs(e, values) {
  for (const [k, v] of Object.entries(values)) e.setAttribute(k, v);
  return e;
}
function svgEl(tag, values, text) {
  const e = attrs(document.createElementNS(SVG, tag), values);
  if (text != null) e.textContent = text;
  return e;
}

let layout = { main: 0, free: null, lpars: [] };  // the last /api/lpars, checked
const moves = new Map();    // lpar -> {from, to, size, frac, settleAfter}: MVSTORs being drawn
const resizes = new Map();  // lpar -> {kind, base, mib, total, settleAfter}: EXPAND/SHRINK being drawn
const ops = new Map();      // "family lpar" -> {family, lpar, title, phase, frac, seen}
let lastOp = '', pendingCalls = 0;

// ---- /api/lpars: at most one fetch in flight and one queued ----
let fetching = false, queued = false, fetchSeq = 0;

function checked(data) {
  const d = data && typeof data === 'object' ? data : {};
  return {
    main: num(d.main_storage_mib), free: num(d.free_mib, null),
    lpars: (Array.isArray(d.lpars) ? d.lpars : []).filter((l) => l && str(l.name) !== '').map((l) => ({
      name: str(l.name), origin: num(l.origin_mib), size: num(l.size_mib), gap: num(l.gap_mib, null),
      state: str(l.state) || 'unknown', placed: l.has_storage !== false, reason: str(l.reason),
      vcpus: num(l.vcpus, null), guest: str(l.guest), max: num(l.max_size_mib, null),
      plugged: num(l.plugged_mib, null),
    })),
  };
}

function refresh() {
  if (fetching) { queued = true; return; }
  fetching = true;
  const seq = ++fetchSeq;
  fetch('/api/lpars', { cache: 'no-store' })
    .then((r) => { if (!r.ok) throw new Error(`HTTP ${r.status}`); return r.json(); })
    .then((data) => apply(checked(data), seq), (err) => {
      $('summary').textContent = `cannot read /api/lpars: ${err.message}`;
      $('summary').classList.add('error');
    })
    .finally(() => { fetching = false; if (queued) { queued = false; refresh(); } });
}

function apply(data, seq) {
  layout = data;
  for (const l of data.lpars) {
    // Only a fetch started after an operation ended shows its outcome: until then keep drawing it.
    const m = moves.get(l.name), r = resizes.get(l.name);
    const arrived = m && l.origin === m.to && l.state !== 'relocating';
    if (m && (arrived || seq > (m.settleAfter ?? Infinity))) moves.delete(l.name);
    if (r && seq > (r.settleAfter ?? Infinity)) resizes.delete(l.name);
  }
  const s = $('summary');
  s.classList.remove('error');
  s.textContent = `main storage ${data.main} MiB · free ${show(data.free)} MiB · ${data.lpars.length} LPARs ` +
    `(${data.lpars.filter((l) => l.placed).length} with storage)`;
  renderTable();
  renderSelects();
  renderMap();
}

// ---- the map ----
const groups = new Map();  // lpar -> its <g> on the map

// Where an LPAR is drawn: its committed origin and size, or as far as an operation has got.
function drawn(l) {
  let origin = l.origin, size = l.size;
  const m = moves.get(l.name), r = resizes.get(l.name);
  if (m) { origin = m.from + (m.to - m.from) * m.frac; size = m.size || size; }
  if (r && r.kind === 'expand') size = Math.min(r.base + r.mib, Math.max(l.size, l.max ?? Infinity));
  else if (r) size = Math.max(0, r.base - r.mib);
  return { origin, size };
}

// Shows a label only where it fits (a name is shortened first); the <title> and the table say all.
function fit(t, text, width, shorten) {
  t.textContent = text;
  t.style.display = '';
  for (let n = text.length - 1; shorten && n > 0 && t.getComputedTextLength() > width; n--) {
    t.textContent = `${text.slice(0, n)}…`;
  }
  if (t.getComputedTextLength() > width) t.style.display = 'none';
}

function renderMap() {
  const svg = $('map');
  const W = Math.max(320, svg.clientWidth || 1200), H = BAR_Y + BAR_H + 32, total = layout.main;
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('height', H);
  const scale = total > 0 ? (W - 2 * PAD) / total : 0;
  const x = (mib) => PAD + Math.max(0, Math.min(total, mib)) * scale;
  attrs($('map-frame'), { x: PAD, y: BAR_Y, width: W - 2 * PAD, height: BAR_H });
  const placed = layout.lpars.filter((l) => l.placed).sort((a, b) => a.origin - b.origin);

  // Free ranges, from the committed layout (cheap to rebuild). A click offers one as MVSTOR origin.
  const gaps = $('map-gaps');
  gaps.replaceChildren();
  let cursor = 0;
  const free = [];
  for (const l of placed) {
    if (l.origin > cursor) free.push([cursor, l.origin - cursor]);
    cursor = Math.max(cursor, l.origin + l.size);
  }
  if (cursor < total) free.push([cursor, total - cursor]);
  for (const [origin, size] of free) {
    const w = size * scale;
    const label = svgEl('text', { x: x(origin) + w / 2, y: BAR_Y + BAR_H / 2 + 4, 'text-anchor': 'middle' });
    const g = svgEl('g', { class: 'gap', 'data-free-origin-mib': origin, 'data-free-mib': size });
    g.append(svgEl('rect', { x: x(origin), y: BAR_Y, width: w, height: BAR_H }), label,
      svgEl('title', {}, `free: ${origin}–${origin + size} MiB (${size} MiB); click: MVSTOR to here`));
    g.addEventListener('click', () => { $('op-origin').value = origin; });
    gaps.append(g);
    for (const text of [`free ${size} MiB`, `${size} MiB`, String(size)]) {
      fit(label, text, w - 6);
      if (label.style.display !== 'none') break;
    }
  }

  // LPAR groups live across refreshes, so that CSS transitions slide and stretch them.
  const selected = $('op-lpar').value;
  for (const [name, g] of groups) {
    if (!placed.some((l) => l.name === name)) { g.remove(); groups.delete(name); }
  }
  for (const l of placed) {
    let g = groups.get(l.name);
    if (!g) {
      const line = (y, cls = 'line') => svgEl('text', { class: cls, x: 8, y: BAR_Y + y });
      g = svgEl('g', {});
      g.parts = [svgEl('rect', { class: 'body', x: 0, y: BAR_Y, height: BAR_H, rx: 3 }), line(32, 'name'),
        line(56), line(74), line(92), svgEl('title', {})];
      g.append(...g.parts);
      g.addEventListener('click', () => { $('op-lpar').value = l.name; renderMap(); });
      groups.set(l.name, g);
      $('map-lpars').append(g);
    }
    const d = drawn(l), moving = moves.has(l.name);
    const state = moving ? 'relocating' : l.state;
    attrs(g, { 'data-lpar': l.name, 'data-origin-mib': l.origin, 'data-size-mib': l.size, 'data-state': l.state,
      class: `lpar ${stateClass(state)}${moving ? ' moving' : ''}${l.name === selected ? ' selected' : ''}` });
    g.style.transform = `translate(${x(d.origin)}px, 0px)`;
    const w = Math.max(2, d.size * scale), [body, name, origin, size, kind, title] = g.parts;
    body.setAttribute('width', w);
    body.style.width = `${w}px`;  // as a CSS property, so that it transitions
    // A name too wide for its LPAR is written upwards (shortened if need be).
    attrs(name, { x: 8, y: BAR_Y + 32, transform: '', 'text-anchor': 'start' });
    fit(name, l.name, w - 14);
    if (name.style.display === 'none' && w >= 16) {
      const transform = `translate(${w / 2 + 5} ${BAR_Y + BAR_H / 2}) rotate(-90)`;
      attrs(name, { x: 0, y: 0, transform, 'text-anchor': 'middle' });
      fit(name, l.name, BAR_H - 12, true);
    }
    fit(origin, `origin ${l.origin} MiB`, w - 14);
    fit(size, `size ${l.size} MiB`, w - 14);
    fit(kind, [state, l.guest].filter(Boolean).join(' · '), w - 14);
    title.textContent = `${l.name}: ${l.origin}–${l.origin + l.size} MiB (${l.size} MiB), ${l.state}` +
      `${l.guest ? `, ${l.guest}` : ''}${l.reason ? `: ${l.reason}` : ''}`;
  }

  // Ghosts, dashed under the LPARs: a move's target, or the storage an EXPAND is plugging.
  const ghosts = [...moves].map(([name, m]) => [name, m.to, m.size, `→ ${m.to} MiB`]);
  for (const [name, r] of resizes) {
    const l = placed.find((p) => p.name === name);
    if (l && r.kind === 'expand') ghosts.push([name, l.origin + r.base, r.total, `+${r.total} MiB`]);
  }
  $('map-ghosts').replaceChildren();
  for (const [name, origin, size, text] of ghosts) {
    const w = Math.max(2, size * scale), label = svgEl('text', { x: x(origin) + w - 8, y: BAR_Y + BAR_H - 10 });
    const gh = svgEl('g', { class: 'ghost', 'data-ghost': name });
    gh.append(svgEl('rect', { x: x(origin), y: BAR_Y + 1, width: w, height: BAR_H - 2, rx: 3 }), label);
    $('map-ghosts').append(gh);
    fit(label, text, w - 16);
  }
  renderScale(W, total, scale, x);
}

// The MiB scale: a 1-2-5 step that gives a labelled tick every ~90 px, a small one between.
function renderScale(W, total, scale, x) {
  const axis = $('map-scale'), y = BAR_Y + BAR_H + 6;
  axis.replaceChildren();
  if (total <= 0) return;
  axis.append(svgEl('line', { class: 'axis', x1: PAD, x2: W - PAD, y1: y, y2: y }));
  const raw = total / Math.max(2, (W - 2 * PAD) / 90), mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const tick = (mib, major, text) => {
    const cls = major ? 'tick' : 'tick minor';
    axis.append(svgEl('line', { class: cls, x1: x(mib), x2: x(mib), y1: y, y2: y + (major ? 6 : 3) }));
    const anchor = mib === 0 ? 'start' : mib === total ? 'end' : 'middle';
    if (text) axis.append(svgEl('text', { x: x(mib), y: y + 19, 'text-anchor': anchor }, text));
  };
  for (let i = 0; i * step / 2 < total; i++) {
    const mib = i * step / 2;
    tick(mib, i % 2 === 0, i % 2 === 0 && (total - mib) * scale > 60 ? String(mib) : '');
  }
  tick(total, true, `${total} MiB`);
}

// ---- the table and the form's LPAR lists ----
function renderTable() {
  const rows = layout.lpars.map((l) => {
    const tr = el('tr'), state = el('td');
    tr.dataset.name = l.name;
    state.append(el('span', `dot ${stateClass(l.state)}`), l.state);
    tr.append(el('td', 'name', l.name), state, el('td', 'n', l.placed ? String(l.origin) : 'not placed'),
      el('td', 'n', String(l.size)), el('td', 'n', l.placed ? show(l.gap) : '–'), el('td', '', l.guest || '–'),
      el('td', 'n', show(l.vcpus)), el('td', 'n', l.max == null ? '–' : `${show(l.plugged)} / ${l.max}`),
      el('td', 'reason', l.reason));
    return tr;
  });
  $('lpar-rows').replaceChildren(...rows);
}

function renderSelects() {
  const names = layout.lpars.map((l) => l.name);
  for (const id of ['op-lpar', 'op-b']) {
    const select = $(id), keep = select.value;
    if ([...select.options].map((o) => o.value).join('\n') === names.join('\n')) continue;
    select.replaceChildren(...names.map((n) => { const o = el('option', '', n); o.value = n; return o; }));
    if (names.includes(keep)) select.value = keep;
    else if (id === 'op-b' && names.length > 1) select.value = names[1];
  }
}

// ---- the running operations ----
function opUpdate(family, lpar, patch) {
  if (!layout.lpars.some((l) => l.name === lpar)) return;  // junk, or an LPAR the next refetch brings
  const key = `${family} ${lpar}`;
  const op = ops.get(key) || { family, lpar, title: `${family.toUpperCase()} ${lpar}`, phase: '', frac: null };
  ops.set(key, Object.assign(op, patch, { seen: Date.now() }));
}
// onlyRunning: a call's answer may come before or after the stream's last event; the event says more.
function opFinish(family, lpar, text, onlyRunning) {
  if (ops.delete(`${family} ${lpar}`) || !onlyRunning) lastOp = text;
}

function renderOperation() {
  const box = $('operation');
  box.dataset.active = String(ops.size > 0 || pendingCalls > 0);
  const idle = pendingCalls ? 'waiting for the daemon…' : lastOp ? `last: ${lastOp}` : 'no operation running';
  box.replaceChildren(...(ops.size ? [] : [idle]));
  for (const op of ops.values()) {
    const percent = op.frac == null ? null : Math.round(op.frac * 100);
    const detail = [percent == null ? 'started' : `${percent}% ${VERBS[op.family]}`, op.phase && `${op.phase} done`];
    const line = el('div', 'op-line'), bar = el('div', 'bar'), fill = el('div', 'fill');
    fill.style.width = `${percent || 0}%`;
    bar.append(fill);
    line.append(el('div', 'op-title', op.title), el('div', 'op-detail', detail.filter(Boolean).join(' · ')), bar);
    box.append(line);
  }
}

// ---- events ----
function summarise(e) {
  const t = str(e.event);
  if (t.endsWith('.phase')) return `${str(e.phase)} ${ms(e.us)}`;
  if (t.endsWith('.failed')) return str(e.message);
  switch (t) {
    case 'lpar.state': return `${str(e.state)}${e.reason ? `: ${str(e.reason)}` : ''}`;
    case 'lpar.restart': return `${str(e.cause)} at ${num(e.origin_mib)} MiB`;
    case 'lpar.guest_event':
      return `${str(e.guest_event)} → ${str(e.action)}${e.reason ? `: ${str(e.reason)}` : ''}`;
    case 'mvstor.started':
      return `${num(e.old_origin_mib)} → ${num(e.new_origin_mib)} MiB, ${num(e.size_mib)} MiB, ${str(e.mode)}`;
    case 'mvstor.progress': case 'exchange.progress':
      return `${Math.round(part(e.copied, e.total) * 100)}% of ${Math.round(num(e.total) / 1048576)} MiB`;
    case 'expand.progress': case 'shrink.progress':
      return `${num(e.plugged_mib ?? e.released_mib)} of ${num(e.total_mib)} MiB ${VERBS[t.split('.')[0]]}`;
    case 'mvstor.done': return `${num(e.old_origin_mib)} → ${num(e.new_origin_mib)} MiB, ${str(e.mode)}, ` +
      `pause ${ms(e.pause_us)}, total ${ms(e.total_us)}${e.rounds ? `, ${num(e.rounds)} rounds` : ''}`;
    case 'exchange.done': return `${str(e.a)} → ${num(e.a_new_origin_mib)} MiB, ${str(e.b)} → ` +
      `${num(e.b_new_origin_mib)} MiB, pause ${ms(e.pause_us)}`;
    case 'storage.expanded': case 'storage.shrunk':
      return `${num(e.old_size_mib)} → ${num(e.new_size_mib)} MiB in ${ms(e.total_us)}`;
    case 'events.dropped': return `${num(e.count)} events missed: map reloaded`;
    default: return '';
  }
}

function logEvent(e) {
  const list = $('log'), type = str(e.event), lpar = str(e.lpar), time = new Date(str(e.time));
  const text = summarise(e).slice(0, 300);
  const li = el('li');
  li.dataset.key = `${type} ${lpar}`;
  li.title = text;
  const clock = Number.isNaN(time.getTime()) ? ''
    : `${time.toLocaleTimeString([], { hour12: false })}.${String(time.getMilliseconds()).padStart(3, '0')}`;
  li.append(el('span', 'time', clock), el('span', /failed|dropped/.test(type) ? 'type bad' : 'type', type),
    el('span', 'lpar', lpar), el('span', 'summary-text', text));
  list.querySelector('.none')?.remove();
  // Progress comes many times a second: it replaces the newest line of its kind, not repeats it.
  const first = list.firstElementChild;
  if (type.endsWith('.progress') && first && first.dataset.key === li.dataset.key) first.replaceWith(li);
  else list.prepend(li);
  while (list.children.length > LOG_MAX) list.lastElementChild.remove();
}

function onEvent(e) {
  logEvent(e);
  const type = str(e.event), lpar = str(e.lpar), family = type.split('.')[0];
  const committed = layout.lpars.find((l) => l.name === lpar);
  switch (type) {
    case 'mvstor.started': {
      const m = { from: num(e.old_origin_mib), to: num(e.new_origin_mib), size: num(e.size_mib), frac: 0 };
      moves.set(lpar, m);
      const title = `MVSTOR ${lpar} ${m.from} → ${m.to} MiB${e.mode ? ` (${str(e.mode)})` : ''}`;
      opUpdate('mvstor', lpar, { title, frac: 0 });
      break;
    }
    case 'mvstor.progress': case 'exchange.progress': {
      const m = moves.get(lpar);
      if (m && family === 'mvstor') m.frac = Math.max(m.frac, part(e.copied, e.total));
      opUpdate(family, lpar, { frac: part(e.copied, e.total) });
      break;
    }
    case 'expand.progress': case 'shrink.progress': {
      const done = num(family === 'expand' ? e.plugged_mib : e.released_mib), total = num(e.total_mib);
      if (!resizes.has(lpar) && committed) resizes.set(lpar, { kind: family, base: committed.size });
      if (resizes.has(lpar)) Object.assign(resizes.get(lpar), { mib: done, total });
      const title = `${family.toUpperCase()} ${lpar} ${family === 'expand' ? '+' : '−'}${total} MiB`;
      opUpdate(family, lpar, { title, frac: part(done, total) });
      break;
    }
    case 'mvstor.done':
      if (moves.has(lpar)) Object.assign(moves.get(lpar), { frac: 1, settleAfter: fetchSeq });
      opFinish('mvstor', lpar, `MVSTOR ${lpar} done: ${summarise(e)}`);
      break;
    case 'exchange.done': opFinish('exchange', lpar, `EXCHANGE done: ${summarise(e)}`); break;
    case 'storage.expanded': case 'storage.shrunk': {
      const kind = type === 'storage.expanded' ? 'expand' : 'shrink', r = resizes.get(lpar);
      if (r) Object.assign(r, { mib: Math.abs(num(e.new_size_mib, r.base) - r.base), settleAfter: fetchSeq });
      opFinish(kind, lpar, `${kind.toUpperCase()} ${lpar} done: ${summarise(e)}`);
      break;
    }
    default:
      if (type.endsWith('.phase') && VERBS[family]) opUpdate(family, lpar, { phase: str(e.phase) });
      if (type.endsWith('.failed') && VERBS[family]) {
        moves.delete(lpar);  // drawn where it was committed until the refetch says where it is
        resizes.delete(lpar);
        opFinish(family, lpar, `${family.toUpperCase()} ${lpar} failed: ${str(e.message)}`);
      }
  }
  if (['lpar', 'storage', 'events'].includes(family) || /\.(started|done|failed)$/.test(type)) refresh();
  renderOperation();
  renderMap();
}

// ---- the live connection ----
let source = null, retryMs = 1000;

function setConnected(on, text) {
  $('connection').dataset.connected = String(on);
  $('connection').textContent = text;
}

function connect() {
  source = new EventSource('/events');
  source.onopen = () => { retryMs = 1000; setConnected(true, 'live: events connected'); refresh(); };
  source.onmessage = (msg) => {
    let e = null;
    try { e = JSON.parse(msg.data); } catch { /* not JSON: skipped */ }
    if (e && typeof e === 'object' && !Array.isArray(e)) onEvent(e);
  };
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED) { setConnected(false, 'reconnecting…'); return; }
    // The browser gave up (an HTTP error, a wrong content type): retry ourselves, backing off.
    source.close();
    setConnected(false, `disconnected: retrying in ${Math.round(retryMs / 1000)} s`);
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 30000);
  };
}

// Drops operations whose events stopped (a lost event, a failed EXPAND started elsewhere).
function sweep() {
  let changed = false;
  for (const [key, op] of ops) {
    if (Date.now() - op.seen < STALE_MS) continue;
    ops.delete(key);
    moves.delete(op.lpar);
    resizes.delete(op.lpar);
    changed = true;
  }
  if (changed) { renderOperation(); renderMap(); refresh(); }
}

// ---- operations ----
let rpcId = 0;

function setResult(text, outcome) {
  $('op-result').textContent = text;
  if (outcome) $('op-result').dataset.outcome = outcome;
  else delete $('op-result').dataset.outcome;
}

function showFields() {
  const wanted = FIELDS[$('op-kind').value] || [];
  for (const label of document.querySelectorAll('[data-field]')) {
    label.hidden = !wanted.includes(label.dataset.field);
    // Disabled, a hidden input cannot block the form's validation.
    for (const input of label.querySelectorAll('input, select')) input.disabled = label.hidden;
  }
}

function showToken() {
  $('readonly-note').hidden = $('op-token').value.trim() !== '';
}

function request() {
  const kind = $('op-kind').value, lpar = $('op-lpar').value, int = (id) => Math.trunc(Number($(id).value));
  switch (kind) {
    case 'mvstor': return ['storage.mvstor', { lpar, origin_mib: int('op-origin'), mode: $('op-mode').value }];
    case 'exchange': return ['storage.exchange', { a: lpar, b: $('op-b').value }];
    case 'expand': case 'shrink': return [`storage.${kind}`, { lpar, mib: int('op-mib') }];
    default: return [`lpar.${kind}`, { lpar }];
  }
}

async function call(method, params) {
  const who = params.lpar ?? params.a, what = `${method} ${params.lpar ?? `${params.a} ↔ ${params.b}`}`;
  setResult(`running ${what}…`, null);
  pendingCalls++;
  renderOperation();
  let outcome, text;
  try {
    const headers = { 'Content-Type': 'application/json' }, token = $('op-token').value.trim();
    if (token) headers.Authorization = `Bearer ${token}`;
    const r = await fetch('/api/call', { method: 'POST', headers, cache: 'no-store',
      body: JSON.stringify({ jsonrpc: '2.0', id: ++rpcId, method, params }) });
    const body = await r.text();
    let j = null;
    try { j = r.status === 200 ? JSON.parse(body) : null; } catch { /* not JSON: below */ }
    if (j && j.error) [outcome, text] = ['error', str(j.error.message) || `error ${str(j.error.code)}`];
    else if (j && 'result' in j) [outcome, text] = ['ok', 'done'];
    else if (r.status === 200) [outcome, text] = ['failed', 'the answer is not a JSON-RPC response'];
    else {
      outcome = [401, 403].includes(r.status) ? 'refused' : 'failed';
      text = `HTTP ${r.status}: ${body.trim() || r.statusText}`;
    }
  } catch (err) {
    [outcome, text] = ['failed', `network error: ${err.message}`];
  }
  pendingCalls--;
  // The answer ends the operation, also where the stream's last events were lost.
  const family = method.startsWith('storage.') ? method.slice(8) : '';
  if (family) opFinish(family, who, `${what}: ${text}`, true);
  const m = family === 'mvstor' && moves.get(who), r = /expand|shrink/.test(family) && resizes.get(who);
  if (m && outcome === 'ok') Object.assign(m, { frac: 1, settleAfter: fetchSeq });
  else if (m) moves.delete(who);
  if (r && outcome === 'ok') Object.assign(r, { mib: r.total, settleAfter: fetchSeq });
  else if (r) resizes.delete(who);
  setResult(`${what}: ${text}`, outcome);
  renderOperation();
  renderMap();
  refresh();
}

// ---- start ----
function start() {
  const fragment = /^#token=([^&]+)/.exec(location.hash);
  if (fragment) {
    try { $('op-token').value = decodeURIComponent(fragment[1]); } catch { $('op-token').value = fragment[1]; }
    history.replaceState(null, '', location.pathname + location.search);  // not left on screen
  }
  showToken();
  showFields();
  $('op-kind').addEventListener('change', showFields);
  $('op-token').addEventListener('input', showToken);
  $('op-lpar').addEventListener('change', () => renderMap());
  $('op-form').addEventListener('submit', (ev) => { ev.preventDefault(); call(...request()); });
  $('log').append(el('li', 'none', 'no events yet'));
  new ResizeObserver(() => renderMap()).observe($('map').parentElement);  // the map is drawn in pixels
  setInterval(sweep, 5000);
  setConnected(false, 'connecting…');
  refresh();
  connect();
}

document.addEventListener('DOMContentLoaded', start);
