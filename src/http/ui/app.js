// The operator page: one file, no framework, no build step.
//
// Every value that came from the network (patient names, AE titles, refusal
// reasons, UIDs) is hostile: it reaches the page only as a text node
// (textContent / append of a string), never parsed as markup, and never
// into an href except percent-encoded. The server's Content-Security-Policy
// forbids inline script as a second line of defence.
'use strict';

const view = document.getElementById('view');

// ---- DOM helpers -------------------------------------------------------

/** An element with attributes and children; strings become text nodes. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = String(text);
  return el;
}

function table(headers, rows, empty) {
  if (rows.length === 0) return h('p', { class: 'muted' }, empty || 'Nothing yet.');
  return h('table', {},
    h('thead', {}, h('tr', {}, headers.map(([label, cls]) => h('th', { class: cls }, label)))),
    h('tbody', {}, rows));
}

const td = (text, cls) => h('td', { class: cls }, text);

// ---- formatting --------------------------------------------------------

/** DICOM PN: components separated by ^, groups by =. */
function personName(pn) {
  if (!pn) return '';
  return pn.split('=')[0].split('^').map((p) => p.trim()).filter(Boolean).join(' ');
}

function dicomDate(d) {
  return /^\d{8}$/.test(d || '') ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : (d || '');
}

function bytes(n) {
  if (typeof n !== 'number') return '';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

function when(iso) {
  if (!iso) return '';
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? String(iso) : t.toLocaleString();
}

function duration(ms) {
  if (typeof ms !== 'number') return 'open';
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  return s < 120 ? `${s.toFixed(1)} s` : `${Math.round(s / 60)} min`;
}

const hex = (status) => `0x${Number(status).toString(16).toUpperCase().padStart(4, '0')}`;

// ---- links (only ever built from encoded values) ------------------------

const studyHref = (uid) => `#/study/${encodeURIComponent(uid)}`;
const downloadHref = (key) => `/api/download/${String(key).split('/').map(encodeURIComponent).join('/')}`;
const downloadLink = (key, label) => h('a', { href: downloadHref(key), download: '' }, label || 'Download');

// ---- data --------------------------------------------------------------

async function getJson(path) {
  const resp = await fetch(path, { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
  let body = null;
  try { body = await resp.json(); } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    const why = body && body.error ? body.error : `HTTP ${resp.status}`;
    throw new Error(`${path.split('?')[0]}: ${why}`);
  }
  return { body, total: resp.headers.get('X-Total-Count') };
}

// ---- the ingest chart --------------------------------------------------

/** Per-minute stored (blue) and refused (red) instances, stacked. */
function chart(perMinute) {
  const W = 1200; const H = 130; const left = 36; const bottom = 18; const top = 8;
  const max = Math.max(1, ...perMinute.map((m) => m.stored + m.refused));
  const bw = (W - left) / Math.max(1, perMinute.length);
  const y = (v) => (H - bottom) - ((H - bottom - top) * v) / max;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Instances received per minute, last hour' });
  svg.append(s('line', { class: 'axis', x1: left, y1: H - bottom, x2: W, y2: H - bottom }));
  svg.append(s('line', { class: 'axis', x1: left, y1: top, x2: left, y2: H - bottom }));
  svg.append(s('text', { x: left - 4, y: top + 8, 'text-anchor': 'end' }, max));
  svg.append(s('text', { x: left - 4, y: H - bottom, 'text-anchor': 'end' }, 0));
  svg.append(s('text', { x: left, y: H - 4 }, '60 min ago'));
  svg.append(s('text', { x: left + (W - left) / 2, y: H - 4, 'text-anchor': 'middle' }, '30 min ago'));
  svg.append(s('text', { x: W, y: H - 4, 'text-anchor': 'end' }, 'now'));
  perMinute.forEach((m, i) => {
    const x = left + i * bw + 1;
    const g = s('g', {});
    const label = `${new Date(m.minute * 1000).toLocaleTimeString()}: ${m.stored} stored, ${m.refused} refused, ${bytes(m.bytes)}`;
    g.append(s('title', {}, label));
    if (m.stored > 0) g.append(s('rect', { class: 'stored', x, width: Math.max(1, bw - 2), y: y(m.stored), height: (H - bottom) - y(m.stored) }));
    if (m.refused > 0) g.append(s('rect', { class: 'refused', x, width: Math.max(1, bw - 2), y: y(m.stored + m.refused), height: y(m.stored) - y(m.stored + m.refused) }));
    // A full-height invisible target so the tooltip works on empty minutes.
    g.append(s('rect', { x, width: Math.max(1, bw - 2), y: top, height: H - bottom - top, fill: 'transparent' }));
    svg.append(g);
  });
  const stored = perMinute.reduce((a, m) => a + m.stored, 0);
  const refused = perMinute.reduce((a, m) => a + m.refused, 0);
  const volume = perMinute.reduce((a, m) => a + m.bytes, 0);
  return h('section', { class: 'chart', id: 'ingest-chart' },
    h('div', { class: 'legend' },
      h('strong', {}, 'Ingest, last hour: '),
      h('span', {}, h('span', { class: 'key stored' }), `${stored} stored (${bytes(volume)})`),
      h('span', {}, h('span', { class: 'key refused' }), `${refused} refused`)),
    svg);
}

// ---- views -------------------------------------------------------------

const SEARCH_FIELDS = [
  ['q', 'Search (name, ID, accession, UID)', 'search'],
  ['patientName', 'Patient name', 'text'],
  ['patientId', 'Patient ID', 'text'],
  ['accession', 'Accession', 'text'],
  ['date', 'Study date', 'date'],
  ['uid', 'Study UID', 'text'],
];

async function studiesView(params) {
  const form = h('form', { class: 'search', id: 'search' },
    SEARCH_FIELDS.map(([name, label, type]) => {
      const value = params.get(name) || '';
      return h('label', {}, label, h('input', { name, type, value: type === 'date' ? dicomDate(value.replace(/-/g, '')) : value, maxlength: '128' }));
    }),
    h('button', { type: 'submit' }, 'Search'),
    h('button', { type: 'button', class: 'plain', onclick: () => { location.hash = '#/'; } }, 'Clear'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [name] of SEARCH_FIELDS) {
      const v = form.elements[name].value.trim();
      if (v) q.set(name, v);
    }
    const next = `#/studies?${q}`;
    if (location.hash === next) render(); else location.hash = next;
  });

  const query = new URLSearchParams();
  for (const [name] of SEARCH_FIELDS) if (params.get(name)) query.set(name, params.get(name));
  query.set('limit', '200');
  const [studies, activity] = await Promise.all([
    getJson(`/api/studies?${query}`),
    getJson('/api/activity').catch(() => null),
  ]);
  const rows = studies.body.map((st) => h('tr', { 'data-study': st.studyInstanceUid },
    h('td', {}, h('a', { href: studyHref(st.studyInstanceUid), class: 'patient' }, personName(st.patientName) || '(no name)')),
    td(st.patientId, 'nowrap'),
    td(dicomDate(st.studyDate), 'nowrap'),
    td(st.studyDescription),
    td(st.accessionNumber),
    td(st.instanceCount, 'num'),
    td(bytes(st.totalBytes), 'num'),
    td(when(st.lastReceived)),
    td(st.studyInstanceUid, 'uid')));
  const shown = studies.body.length;
  const total = studies.total === null ? shown : Number(studies.total);
  return [
    activity ? chart(activity.body.perMinute) : null,
    h('h1', {}, 'Studies'),
    form,
    h('p', { class: 'muted', id: 'count' }, total > shown ? `${shown} of ${total} matching studies (newest first)` : `${shown} ${shown === 1 ? 'study' : 'studies'}`),
    table([['Patient'], ['Patient ID'], ['Date'], ['Description'], ['Accession'], ['Instances', 'num'], ['Size', 'num'], ['Last received'], ['Study UID']],
      rows, 'No study matches.'),
  ];
}

/** At most this many instance rows per series; the rest are counted. */
const MAX_ROWS = 1000;

async function studyView(uid) {
  const [study, reports] = await Promise.all([
    getJson(`/api/studies/${encodeURIComponent(uid)}`),
    getJson('/api/reports').catch(() => ({ body: [] })),
  ]);
  const st = study.body;
  const facts = [
    ['Patient', personName(st.patientName)], ['Patient ID', st.patientId], ['Birth date', dicomDate(st.patientBirthDate)],
    ['Sex', st.patientSex], ['Study date', dicomDate(st.studyDate)], ['Description', st.studyDescription],
    ['Accession', st.accessionNumber], ['Referring', personName(st.referringPhysicianName)],
    ['Institution', st.institutionName], ['Instances', st.instanceCount], ['Size', bytes(st.totalBytes)],
    ['First received', when(st.firstReceived)], ['Last received', when(st.lastReceived)],
  ].filter(([, v]) => v !== undefined && v !== null && v !== '');
  const out = [
    h('p', {}, h('a', { href: '#/' }, '← Studies')),
    h('h1', {}, personName(st.patientName) || '(no name)', ' ', h('span', { class: 'muted' }, st.studyDescription || '')),
    h('dl', { class: 'facts' }, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    h('p', {}, 'Study Instance UID ', h('span', { class: 'uid', id: 'study-uid' }, st.studyInstanceUid)),
  ];
  out.push(h('h2', {}, `Series (${st.series.length})`));
  for (const se of st.series) {
    const rows = se.instances.slice(0, MAX_ROWS).map((i) => h('tr', { 'data-instance': i.sopInstanceUid },
      td(i.instanceNumber ?? '', 'num'),
      td(i.sopInstanceUid, 'uid'),
      td(i.rows && i.columns ? `${i.columns}×${i.rows}` : ''),
      td(i.numberOfFrames ?? ''),
      td(bytes(i.size), 'num'),
      td(i.transferSyntaxUid, 'uid'),
      td(i.source),
      td(when(i.receivedAt)),
      h('td', {}, downloadLink(i.objectKey))));
    out.push(h('section', { class: 'series', 'data-series': se.seriesInstanceUid },
      h('h2', {}, `${se.modality || '?'} · ${se.seriesDescription || 'series'}`, se.seriesNumber != null ? ` #${se.seriesNumber}` : '',
        h('span', { class: 'muted' }, ` — ${se.instanceCount} instance${se.instanceCount === 1 ? '' : 's'}`)),
      h('p', { class: 'uid muted' }, se.seriesInstanceUid),
      table([['#', 'num'], ['SOP Instance UID'], ['Size (px)'], ['Frames'], ['Bytes', 'num'], ['Transfer syntax'], ['From'], ['Received'], ['']], rows),
      se.instances.length > MAX_ROWS ? h('p', { class: 'muted' }, `… and ${se.instances.length - MAX_ROWS} more`) : null));
  }
  out.push(h('h2', {}, `Media and reports (${st.media.length})`));
  out.push(table([['File'], ['Type'], ['Size', 'num'], ['Stored'], ['From'], ['Report'], ['']],
    st.media.map((m) => h('tr', {},
      td(m.fileName), td(m.mimeType), td(bytes(m.size), 'num'), td(when(m.storedAt)), td(m.source),
      h('td', {}, m.report ? [m.report.reportId, m.report.isCritical ? h('span', { class: 'bad' }, ' critical') : null] : ''),
      h('td', {}, downloadLink(m.objectKey)))),
    'No media or reports.'));
  const jobs = reports.body.filter((j) => j.studyInstanceUid === st.studyInstanceUid);
  if (jobs.length > 0) {
    out.push(h('h2', {}, 'Report deliveries'));
    out.push(reportsTable(jobs));
  }
  return out;
}

function endClass(ended) {
  return ended === 'released' ? 'ok' : 'bad';
}

async function activityView() {
  const { body } = await getJson('/api/activity');
  const assocRow = (a) => h('tr', {},
    td(a.callingAe), td(a.peer), td(when(a.startedAt)), td(duration(a.durationMs), 'num'),
    td(a.stored, 'num'), td(a.refused, 'num'),
    h('td', { class: a.ended ? endClass(a.ended) : 'muted' }, a.ended || 'open'));
  const headers = [['Calling AE'], ['Peer'], ['Started'], ['Duration', 'num'], ['Stored', 'num'], ['Refused', 'num'], ['Ended']];
  return [
    chart(body.perMinute),
    h('h1', {}, 'Activity'),
    h('p', { class: 'muted' }, 'Kept in memory since the gateway started: the last 200 associations and refusals. ',
      h('button', { type: 'button', class: 'plain', onclick: () => render() }, 'Refresh')),
    h('h2', {}, `Open associations (${body.open.length})`),
    table(headers, body.open.map(assocRow), 'None open.'),
    h('h2', {}, 'Recent associations'),
    table(headers, body.associations.map(assocRow), 'None since the gateway started.'),
    h('h2', {}, 'Refused instances'),
    table([['When'], ['Calling AE'], ['Peer'], ['Status'], ['Reason'], ['SOP Instance UID']],
      body.refusals.map((r) => h('tr', {},
        td(when(r.at)), td(r.callingAe), td(r.peer), td(hex(r.status), 'bad'), td(r.reason), td(r.sopInstanceUid, 'uid'))),
      'None refused.'),
  ];
}

function reportsTable(jobs) {
  return table([['Report'], ['Study'], ['State'], ['Attempts', 'num'], ['Received'], ['Source'], ['Last error']],
    jobs.map((j) => h('tr', {},
      h('td', {}, j.report ? j.report.reportId : '', j.report && j.report.isCritical ? h('span', { class: 'bad' }, ' critical') : null),
      h('td', {}, j.studyInstanceUid ? h('a', { href: studyHref(j.studyInstanceUid), class: 'uid' }, j.studyInstanceUid) : (j.studyId || '')),
      h('td', { class: j.state === 'failed' ? 'bad' : (j.state === 'stored' ? 'ok' : '') }, j.state),
      td(j.attempts, 'num'),
      td(typeof j.receivedAt === 'number' ? new Date(j.receivedAt * 1000).toLocaleString() : ''),
      td(j.url), td(j.lastError))),
    'No report has been delivered.');
}

async function reportsView() {
  const { body } = await getJson('/api/reports');
  return [h('h1', {}, 'Report jobs'), reportsTable(body)];
}

// ---- routing -----------------------------------------------------------

/** `#/path?query` → [path, URLSearchParams]. */
function route() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const at = raw.indexOf('?');
  const path = at < 0 ? raw : raw.slice(0, at);
  return [path, new URLSearchParams(at < 0 ? '' : raw.slice(at + 1))];
}

/** A malformed %-escape in a typed address is kept as typed. */
function safeDecode(text) {
  try { return decodeURIComponent(text); } catch (_) { return text; }
}

let generation = 0;
let timer = null;

/** Builds the view the address names; `quiet` (the activity view's own
 * refresh) keeps the current view until the new one is ready. */
async function render(quiet) {
  const mine = ++generation;
  clearTimeout(timer);
  const hash = location.hash;
  const [path, params] = route();
  let name = 'studies';
  let work;
  if (path.startsWith('/study/')) {
    name = 'study';
    work = studyView(safeDecode(path.slice('/study/'.length)));
  } else if (path === '/activity') {
    name = 'activity';
    work = activityView();
  } else if (path === '/reports') {
    name = 'reports';
    work = reportsView();
  } else {
    work = studiesView(params);
  }
  for (const a of document.querySelectorAll('nav a')) {
    a.classList.toggle('current', a.dataset.nav === (name === 'study' ? 'studies' : name));
  }
  if (quiet !== true) {
    view.dataset.view = name;
    view.dataset.state = 'loading';
  }
  let content;
  let state = 'ready';
  try {
    content = await work;
  } catch (e) {
    content = h('p', { class: 'error', id: 'error' }, String(e.message || e));
    state = 'error';
  }
  if (mine !== generation) return; // a newer navigation won
  view.replaceChildren(...[content].flat().filter(Boolean));
  view.dataset.view = name;
  // Which address this view was built for (tests wait on it).
  view.dataset.route = hash;
  view.dataset.state = state;
  // The activity page follows along while it is shown.
  if (name === 'activity') {
    timer = setTimeout(() => render(true), 10000);
  }
}

window.addEventListener('hashchange', () => render());
render();
