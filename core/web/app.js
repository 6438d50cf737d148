/* app.js -- waybill's dashboard: one page, views by the URL's hash, each
 * polling the admin API every 2 s while the tab is visible. Every string
 * that came from the gateway (carrier payloads, headers, responses) goes
 * into the page as text (textContent / text nodes), never as HTML. */
'use strict';

const POLL_MS = 1500;
const TYPES = ['shipment.created', 'shipment.cancelled', 'shipment.delivered', 'shipment.returned',
  'shipment.exception', 'tracking.accepted', 'tracking.in_transit', 'tracking.out_for_delivery',
  'tracking.delivered', 'tracking.failed_attempt', 'tracking.exception', 'tracking.unknown',
  'order.imported', 'order.updated', 'order.cancelled', 'batch.completed', 'rate.updated',
  'carrier.connected', 'store.refreshed', 'balance.low', 'billing.adjustment'];

let timer = null;
let current = null; /* the view's refresh function */
let seq = 0; /* bumps on every navigation: a late answer for an old view is dropped */
/* Each update of a view is numbered: an answer older than one already
 * shown is dropped, so a poll sent before a filter changed cannot put the
 * unfiltered list back over the filtered one. */
let asked = 0, shown = 0;

/* Whether the update (mine: its view, me: its number) may be shown. */
function showable(mine, me) {
  if (mine !== seq || me < shown) return false;
  shown = me;
  return true;
}

/* ---- DOM helpers: text only ---- */

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  if (tag === 'pre') e.tabIndex = 0; /* a scrolling region: reachable by keyboard */
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function when(iso) {
  if (!iso) return el('span', { class: 'muted' }, '—');
  const d = new Date(iso);
  if (isNaN(d)) return el('span', {}, iso);
  return el('time', { datetime: iso, title: d.toISOString().replace('.000Z', 'Z') + ' UTC' },
    d.toLocaleString());
}

function badge(s) { return el('span', { class: 'badge ' + (s || '') }, s || '—'); }
function pretty(v) { return typeof v === 'string' ? v : JSON.stringify(v, null, 2); }
function say(msg) { document.getElementById('live').textContent = msg; }

function table(headers, rows, caption) {
  return el('div', { class: 'scroll' }, el('table', {},
    caption ? el('caption', { class: 'sr' }, caption) : null,
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: headers.length,
      class: 'muted' }, 'nothing yet')))));
}

function field(label, input) {
  const id = 'f-' + label.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/-$/, '');
  input.id = id;
  return el('div', { class: 'field' }, el('label', { for: id }, label), input);
}

function select(options, value) {
  return el('select', {}, options.map(([v, t]) => el('option', { value: v, selected: v === value }, t)));
}

/* ---- the API ---- */

class SignedOut extends Error {}

async function api(method, path, body) {
  const opts = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
  if (r.status === 401 && path !== '/login') {
    showLogin('Your session ended; sign in again.');
    throw new SignedOut();
  }
  return { status: r.status, ok: r.ok, data };
}

function errorText(r) {
  const d = r.data || {};
  if (d.error) return d.error;
  if (Array.isArray(d.errors) && d.errors[0] && d.errors[0].message) return d.errors[0].message; /* ShipEngine's shape */
  return 'HTTP ' + r.status;
}

/* A list answer: {"data": [...]} or a bare array (ShipEngine's shape). */
function rows(r) { return Array.isArray(r.data) ? r.data : (r.data && r.data.data) || []; }

/* ---- sign-in ---- */

function showLogin(msg) {
  stop();
  document.getElementById('app').replaceChildren();
  document.getElementById('nav').hidden = true;
  document.getElementById('signout').hidden = true;
  document.getElementById('login').hidden = false;
  document.getElementById('login-msg').textContent = msg || '';
  document.getElementById('token').focus();
}

async function login(ev) {
  ev.preventDefault();
  const input = document.getElementById('token');
  const r = await api('POST', '/login', { token: input.value });
  input.value = '';
  if (r.status === 204) {
    document.getElementById('login').hidden = true;
    route();
  } else {
    document.getElementById('login-msg').textContent =
      r.status === 401 ? 'Wrong token: check admin.token in waybill.lua.' : errorText(r);
  }
}

async function logout() {
  await api('POST', '/logout');
  showLogin('Signed out.');
}

/* ---- the router ---- */

function stop() {
  if (timer) clearInterval(timer);
  timer = null;
  current = null;
  seq++;
}

async function tick() {
  if (!current || document.hidden) return;
  const mine = seq, me = ++asked;
  try {
    await current(mine, me);
  } catch (e) {
    if (e instanceof SignedOut || mine !== seq) return;
    say('Update failed: ' + e.message);
    console.error('waybill dashboard: update failed:', e);
  }
}

const VIEWS = {
  overview: viewOverview, events: viewEvents, deliveries: viewDeliveries,
  endpoints: viewEndpoints, batches: viewBatches, rules: viewRules, subscriptions: viewSubs,
};

async function route() {
  const s = await api('GET', '/session');
  if (!s.data || !s.data.signed_in) { showLogin(''); return; }
  stop();
  document.getElementById('login').hidden = true;
  document.getElementById('nav').hidden = false;
  document.getElementById('signout').hidden = false;
  const parts = location.hash.replace(/^#\/?/, '').split('/');
  const name = VIEWS[parts[0]] ? parts[0] : 'overview';
  for (const a of document.querySelectorAll('nav a'))
    a.toggleAttribute('aria-current', a.getAttribute('href') === '#/' + name);
  for (const a of document.querySelectorAll('nav a[aria-current]')) a.setAttribute('aria-current', 'page');
  const app = document.getElementById('app');
  app.replaceChildren();
  const id = parts.length > 1 ? decodeURIComponent(parts.slice(1).join('/')) : null;
  current = (name === 'events' && id) ? viewEvent(app, id) : VIEWS[name](app, id);
  await tick();
  timer = setInterval(tick, POLL_MS);
}

/* Replaces node's children with build(data) when data changed. */
function update(node, data, build) {
  const key = JSON.stringify(data);
  if (node.dataset.key === key) return;
  node.dataset.key = key;
  node.replaceChildren(...[build(data)].flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
}

/* ---- charts (SVG of our own) ---- */

function chart(title, series, unit) {
  const W = 300, H = 70;
  const all = series.flatMap((s) => s.values.filter((v) => v !== null));
  const max = Math.max(1e-9, ...all);
  const n = Math.max(2, ...series.map((s) => s.values.length));
  const last = series.map((s) => {
    const v = s.values.filter((x) => x !== null);
    return s.name + ' ' + (v.length ? fmt(v[v.length - 1]) : '—') + (unit ? ' ' + unit : '');
  }).join(' · ');
  const g = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none',
    role: 'img', 'aria-label': title + ' over the last hour; now ' + last });
  g.append(svg('line', { class: 'axis', x1: 0, y1: H - 1, x2: W, y2: H - 1 }));
  series.forEach((s, k) => {
    const pts = [];
    s.values.forEach((v, i) => {
      if (v !== null) pts.push(`${(i * W / (n - 1)).toFixed(1)},${(H - 2 - v / max * (H - 6)).toFixed(1)}`);
    });
    g.append(svg('polyline', { class: 's' + k, points: pts.join(' ') }));
  });
  return el('div', { class: 'card' }, el('h3', {}, title), g,
    el('div', { class: 'legend' }, last, ' (max ' + fmt(max) + ')'));
}

function fmt(v) {
  if (v === null || v === undefined) return '—';
  return Math.abs(v) >= 100 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(2);
}

/* ---- Overview ---- */

function viewOverview(app) {
  const cards = el('div', { class: 'cards' });
  const charts = el('div', { class: 'cards' });
  const eps = el('div');
  app.append(el('h1', {}, 'Overview'), cards, el('h2', {}, 'Last hour'), charts,
    el('h2', {}, 'Endpoints'), eps);
  let seriesAt = 0; /* the gateway samples every 10 s: the charts are asked for no more often */
  return async (mine, me) => {
    const fresh = Date.now() - seriesAt >= 10000;
    const [st, se, ep] = await Promise.all([api('GET', '/api/status'),
      fresh ? api('GET', '/api/series') : null, api('GET', '/api/endpoints')]);
    if (!showable(mine, me)) return;
    if (se && se.ok) seriesAt = Date.now();
    if (st.ok) update(cards, st.data, (d) => [
      ['Pending', d.queue.pending], ['Held', d.queue.held], ['Failed', d.queue.failed],
      ['Delivered', d.queue.delivered], ['Rules loaded', null]].map(([k, v]) =>
      el('div', { class: 'card' }, el('h3', {}, k),
        v === null ? el('div', {}, when(d.rules_loaded_at)) : el('div', { class: 'big' }, String(v)))));
    if (se && se.ok) update(charts, se.data.points, (p) => {
      const col = (k) => p.map((x) => x[k]);
      return [chart('Received / s', [{ name: 'received', values: col('received_per_s') }]),
        chart('Delivered / s', [{ name: 'delivered', values: col('delivered_per_s') }]),
        chart('Failed', [{ name: 'failed', values: col('failed') }]),
        chart('Retries', [{ name: 'retries', values: col('retries') }]),
        chart('Queue depth', [{ name: 'pending', values: col('pending') },
          { name: 'held', values: col('held') }]),
        chart('Attempt latency', [{ name: 'p50', values: col('p50_ms') },
          { name: 'p99', values: col('p99_ms') }], 'ms')];
    });
    if (ep.ok) update(eps, ep.data.data, (list) => table(
      ['Endpoint', 'Success rate', 'Last error', 'State', 'Held', 'In flight'],
      list.map((e) => el('tr', {},
        el('td', {}, e.name),
        el('td', { class: 'num' }, e.success_rate === null ? '—' : (e.success_rate * 100).toFixed(1) + ' %'),
        el('td', {}, e.last_error || '', e.last_error_at ? [' ', when(e.last_error_at)] : null),
        el('td', {}, badge(e.disabled ? 'disabled' : 'enabled')),
        el('td', { class: 'num' }, String(e.held)),
        el('td', { class: 'num' }, String(e.in_flight === undefined ? 0 : e.in_flight)))),
      'Endpoints'));
  };
}

/* ---- Events ---- */

function viewEvents(app) {
  const source = el('input', { type: 'text', placeholder: 'atoship' });
  const type = el('input', { type: 'text', placeholder: 'tracking.delivered', list: 'types' });
  const status = select([['', 'any'], ['received', 'received'], ['routed', 'routed'],
    ['unrouted', 'unrouted'], ['partial', 'partial'], ['rule_error', 'rule_error']], '');
  const since = el('input', { type: 'datetime-local', step: '1' });
  const until = el('input', { type: 'datetime-local', step: '1' });
  const find = el('input', { type: 'search', placeholder: 'evt_… or tracking number' });
  const msg = el('p', { class: 'error', role: 'alert' });
  const list = el('div');
  const form = el('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); tick(); } },
    field('Source', source), field('Type', type), field('Status', status), field('Since', since),
    field('Until', until),
    el('datalist', { id: 'types' }, TYPES.map((t) => el('option', { value: t }))),
    el('button', { type: 'submit' }, 'Filter'));
  const found = el('div');
  const findForm = el('form', { class: 'filters', role: 'search', onsubmit: async (e) => {
    e.preventDefault();
    const q = find.value.trim();
    msg.textContent = '';
    found.replaceChildren();
    if (q.length < 3) { msg.textContent = 'Type at least 3 characters.'; return; }
    const r = await api('GET', '/api/find?q=' + encodeURIComponent(q));
    if (!r.ok) { msg.textContent = errorText(r); return; }
    if (r.data.data.length === 1 || r.data.data[0] === q) { location.hash = '#/events/' + encodeURIComponent(r.data.data[0]); return; }
    if (!r.data.data.length) { msg.textContent = 'No event has ' + q + ' as its id, carrier id, or in its data.'; return; }
    found.replaceChildren(el('p', {}, r.data.data.length + ' events mention ' + q + ' (newest first):'),
      el('ul', {}, r.data.data.map((id) => el('li', {}, el('a', { href: '#/events/' + encodeURIComponent(id) }, id)))));
  } }, field('Find by event id or tracking number', find), el('button', { type: 'submit' }, 'Find'));
  /* pages: the cursors of the pages before this one (Newer goes back) */
  let after = '', back = [], next = null;
  const newer = el('button', { type: 'button', id: 'newer', hidden: true, onclick: () => { after = back.pop() || ''; tick(); } }, '← Newer');
  const older = el('button', { type: 'button', id: 'older', hidden: true, onclick: () => { back.push(after); after = next; tick(); } }, 'Older →');
  const pager = el('div', { class: 'row' }, newer, older);
  [source, type, status, since, until].forEach((i) => i.addEventListener('change', () => {
    after = ''; back = []; tick();
  }));
  app.append(el('h1', {}, 'Events'), form, findForm, msg, found, list, pager);
  return async (mine, me) => {
    const q = new URLSearchParams({ limit: '100' });
    if (source.value.trim()) q.set('source', source.value.trim());
    if (type.value.trim()) q.set('type', type.value.trim());
    if (status.value) q.set('status', status.value);
    /* the window, in the browser's zone, sent as UTC: the server filters */
    for (const [name, input] of [['since', since], ['until', until]]) {
      const t = input.value ? new Date(input.value) : null;
      if (t && !isNaN(t)) q.set(name, t.toISOString());
    }
    if (after) q.set('after', after);
    const r = await api('GET', '/api/events?' + q);
    if (!showable(mine, me)) return;
    if (!r.ok) { msg.textContent = errorText(r); return; }
    msg.textContent = '';
    next = r.data.next;
    newer.hidden = !after;
    older.hidden = !next;
    update(list, r.data.data, (data) => table(['Received', 'Event', 'Source', 'Type', 'Status', 'Error'],
      data.map((e) => el('tr', {},
        el('td', {}, when(e.received_at)),
        el('td', {}, el('a', { href: '#/events/' + encodeURIComponent(e.id) }, e.id)),
        el('td', {}, e.source), el('td', {}, e.type), el('td', {}, badge(e.status)),
        el('td', { class: 'error' }, e.error || ''))), 'Events, newest first'));
  };
}

function attemptsTable(attempts) {
  return table(['#', 'At', 'Code', 'Latency', 'Error', 'Response (excerpt)'],
    attempts.map((a) => el('tr', {},
      el('td', { class: 'num' }, String(a.n)), el('td', {}, when(a.at)),
      el('td', { class: 'num' }, a.status_code ? String(a.status_code) : '—'),
      el('td', { class: 'num' }, a.latency_ms + ' ms'), el('td', { class: 'error' }, a.error || ''),
      el('td', {}, el('pre', {}, (a.response || '').slice(0, 500))))), 'Attempts');
}

/* Which rule handlers matched the event and what each sent, as recorded
 * when it was routed (the rules may have changed since). */
function matchedList(matched) {
  if (matched === null || matched === undefined)
    return el('p', { class: 'muted' }, 'Not recorded: routed before this waybill recorded it, or not routed by rules (a test event).');
  if (!matched.length) return el('p', { class: 'muted' }, 'No rule matched this event.');
  return el('ul', { class: 'matched' }, matched.map((m) => el('li', {},
    el('code', {}, m.rule), ' on("', el('code', {}, m.on), '")',
    m.failed ? [' ', badge('failed')] : null,
    m.sent.length ? el('ul', {}, m.sent.map((x) => el('li', {}, 'sent to ', el('strong', {}, x.endpoint), ' ',
      x.delivery ? el('code', {}, x.delivery) : ['batched, window from ', when(x.window_start)])))
      : el('div', { class: 'muted' }, 'sent nothing'))));
}

function viewEvent(app, id) {
  const body = el('div');
  const msg = el('p', { role: 'status' });
  const replay = el('button', { type: 'button', onclick: async () => {
    const r = await api('POST', '/api/events/' + encodeURIComponent(id) + '/replay');
    msg.textContent = r.ok ? 'Replayed: routed again with the rules loaded now.' : 'Replay failed: ' + errorText(r);
    tick();
  } }, 'Replay');
  app.append(el('p', {}, el('a', { href: '#/events' }, '← Events')),
    el('h1', {}, 'Event ', el('code', {}, id)),
    el('div', { class: 'row' }, replay,
      el('a', { href: '#/rules/' + encodeURIComponent(id) }, 'Dry run with the rules loaded now'), msg), body);
  return async (mine, me) => {
    const r = await api('GET', '/api/events/' + encodeURIComponent(id));
    if (!showable(mine, me)) return;
    if (!r.ok) { body.replaceChildren(el('p', { class: 'error' }, errorText(r))); return; }
    update(body, r.data, (ev) => [
      el('dl', { class: 'meta' },
        el('dt', {}, 'Source'), el('dd', {}, ev.source),
        el('dt', {}, 'Carrier id'), el('dd', {}, ev.source_id || '—'),
        el('dt', {}, 'Type'), el('dd', {}, ev.type),
        el('dt', {}, 'Status'), el('dd', {}, badge(ev.status)),
        el('dt', {}, 'Received'), el('dd', {}, when(ev.received_at)),
        el('dt', {}, 'Carrier time'), el('dd', {}, ev.created_at || '—'),
        ev.error ? [el('dt', {}, 'Error'), el('dd', { class: 'error' }, ev.error)] : null),
      el('h2', {}, 'Rules that matched'),
      el('section', { class: 'matched', 'aria-label': 'Rules that matched' }, matchedList(ev.matched)),
      el('h2', {}, 'Deliveries (what the rules sent)'),
      el('p', { class: 'muted' }, 'One per endpoint a rule sent this event to, with the payload it built.'),
      ev.deliveries.length ? ev.deliveries.map((d) => el('section', { class: 'delivery',
        'aria-label': 'Delivery to ' + d.endpoint },
        el('div', { class: 'row' }, el('strong', {}, d.endpoint), badge(d.status),
          d.id ? el('code', {}, d.id) : null, d.window_end ? ['closes ', when(d.window_end)] : null,
          d.status === 'failed' && d.id ? retryButton(d.id) : null),
        el('details', {}, el('summary', {}, 'Payload sent'), el('pre', {}, pretty(d.payload))),
        d.attempts.length ? attemptsTable(d.attempts) : el('p', { class: 'muted' }, 'No attempt yet.')))
        : el('p', { class: 'muted' }, 'No delivery: no rule sent this event.'),
      el('h2', {}, 'Normalized event'),
      el('pre', {}, pretty({ type: ev.type, source_id: ev.source_id, created_at: ev.created_at,
        shipment: ev.shipment, data: ev.data })),
      el('h2', {}, 'Raw body'), el('pre', {}, ev.raw === null ? '' : ev.raw),
      el('h2', {}, 'Verified headers'),
      table(['Header', 'Value'], Object.entries(ev.headers || {}).map(([k, v]) =>
        el('tr', {}, el('td', {}, k), el('td', {}, pretty(v)))), 'Headers')]);
  };
}

function retryButton(id) {
  return el('button', { type: 'button', 'data-retry': id, onclick: async (e) => {
    e.target.disabled = true;
    const r = await api('POST', '/api/deliveries/' + encodeURIComponent(id) + '/retry');
    say(r.ok ? 'Delivery ' + id + ' queued again.' : 'Retry failed: ' + errorText(r));
    tick();
  } }, 'Retry');
}

/* ---- Deliveries ---- */

function viewDeliveries(app) {
  const status = select([['', 'any'], ['pending', 'pending'], ['delivered', 'delivered'],
    ['failed', 'failed'], ['held', 'held']], '');
  const endpoint = el('input', { type: 'text' });
  const list = el('div');
  const msg = el('p', { class: 'error', role: 'alert' });
  [status, endpoint].forEach((i) => i.addEventListener('change', () => tick()));
  app.append(el('h1', {}, 'Deliveries'), el('form', { class: 'filters',
    onsubmit: (e) => { e.preventDefault(); tick(); } }, field('Status', status),
  field('Endpoint', endpoint), el('button', { type: 'submit' }, 'Filter')), msg, list);
  return async (mine, me) => {
    const q = new URLSearchParams({ limit: '100' });
    if (status.value) q.set('status', status.value);
    if (endpoint.value.trim()) q.set('endpoint', endpoint.value.trim());
    const r = await api('GET', '/api/deliveries?' + q);
    if (!showable(mine, me)) return;
    if (!r.ok) { msg.textContent = errorText(r); return; }
    msg.textContent = '';
    update(list, r.data.data, (data) => table(['Created', 'Delivery', 'Event', 'Endpoint', 'Type',
      'Status', 'Attempts', 'Last code', 'Last error', 'Next', ''],
    data.map((d) => el('tr', { 'data-id': d.id },
      el('td', {}, when(d.created_at)), el('td', {}, el('code', {}, d.id)),
      el('td', {}, el('a', { href: '#/events/' + encodeURIComponent(d.event_id) }, d.event_id)),
      el('td', {}, d.endpoint), el('td', {}, d.event_type), el('td', {}, badge(d.status)),
      el('td', { class: 'num' }, String(d.attempts)),
      el('td', { class: 'num' }, d.last_status_code === null ? '—' : String(d.last_status_code)),
      el('td', { class: 'error' }, d.last_error || ''), el('td', {}, when(d.next_at)),
      el('td', {}, d.status === 'failed' ? retryButton(d.id) : null))), 'Deliveries, newest first'));
  };
}

/* ---- Endpoints ---- */

function viewEndpoints(app) {
  const list = el('div');
  const msg = el('p', { role: 'status' });
  app.append(el('h1', {}, 'Endpoints'), msg, list);
  const act = async (path, body, done) => {
    const r = await api('POST', path, body);
    msg.textContent = r.ok ? done(r.data) : 'Failed: ' + errorText(r);
    msg.className = r.ok ? 'ok' : 'error';
    tick();
  };
  return async (mine, me) => {
    const r = await api('GET', '/api/endpoints');
    if (!showable(mine, me)) return;
    update(list, r.data.data, (data) => table(['Endpoint', 'URL', 'State', 'Success rate', 'Pending',
      'Held', 'In flight', 'Last error', 'Actions'], data.map((e) => {
      const n = encodeURIComponent(e.name);
      const type = select(TYPES.map((t) => [t, t]), 'tracking.delivered');
      type.setAttribute('aria-label', 'Test event type for ' + e.name);
      return el('tr', { 'data-endpoint': e.name },
        el('td', {}, e.name), el('td', { class: 'hide-narrow' }, e.url),
        el('td', {}, badge(e.disabled ? 'disabled' : 'enabled'),
          e.disabled_reason ? el('div', { class: 'muted' }, e.disabled_reason) : null),
        el('td', { class: 'num' }, e.success_rate === null ? '—' : (e.success_rate * 100).toFixed(1) + ' %'),
        el('td', { class: 'num' }, String(e.pending)), el('td', { class: 'num' }, String(e.held)),
        el('td', { class: 'num' }, String(e.in_flight === undefined ? 0 : e.in_flight)),
        el('td', { class: 'error' }, e.last_error || ''),
        el('td', {}, el('div', { class: 'row' },
          el('button', { type: 'button', onclick: () => act('/api/endpoints/' + n + (e.disabled ? '/enable' : '/disable'),
            undefined, (d) => e.name + (d.disabled ? ' disabled.' : ' enabled.')) },
          (e.disabled ? 'Enable ' : 'Disable ') + e.name),
          type,
          el('button', { type: 'button', onclick: () => act('/api/endpoints/' + n + '/test',
            { type: type.value }, (d) => 'Test event ' + d.id + ' sent to ' + e.name + '.') },
          'Send test to ' + e.name))));
    }), 'Endpoints'));
  };
}

/* ---- Batches ---- */

function viewBatches(app) {
  const list = el('div');
  app.append(el('h1', {}, 'Batches'), el('p', { class: 'muted' }, 'Open batch windows.'), list);
  return async (mine, me) => {
    const r = await api('GET', '/api/batches');
    if (!showable(mine, me)) return;
    update(list, r.data.data, (data) => table(['Endpoint', 'Window start', 'Closes', 'Items'],
      data.map((b) => el('tr', {}, el('td', {}, b.endpoint), el('td', {}, when(b.window_start)),
        el('td', {}, when(b.closes_at)), el('td', { class: 'num' }, String(b.items)))), 'Open windows'));
  };
}

/* ---- Rules ---- */

function viewRules(app, eventArg) {
  const state = el('div');
  const msg = el('p', { role: 'status', id: 'rules-msg' });
  const source = el('select');
  const eventId = el('input', { type: 'text', placeholder: 'evt_…', value: eventArg || null });
  const body = el('textarea', { spellcheck: 'false' });
  const out = el('div', { 'aria-live': 'polite' });
  const reload = el('button', { type: 'button', id: 'reload', onclick: async () => {
    const r = await api('POST', '/api/reload');
    msg.className = r.ok ? 'ok' : 'error';
    msg.textContent = r.ok ? 'Reloaded at ' + r.data.rules_loaded_at + '.' :
      'Reload failed; the rules loaded before stay in use: ' + errorText(r);
    tick();
  } }, 'Reload rules');
  const dry = el('form', { onsubmit: async (e) => {
    e.preventDefault();
    const q = eventId.value.trim() ? { event_id: eventId.value.trim() } : { source: source.value, body: body.value };
    const r = await api('POST', '/api/dryrun', q);
    out.replaceChildren(...(r.ok ? dryResult(r.data) : [el('p', { class: 'error' }, errorText(r))]));
  } }, el('div', { class: 'filters' }, field('Source', source), field('Or a stored event', eventId)),
  field('Carrier body (JSON)', body), el('button', { type: 'submit', id: 'dryrun' }, 'Dry run'));
  app.append(el('h1', {}, 'Rules'), el('div', { class: 'row' }, reload, msg), state,
    el('h2', {}, 'Dry run'), el('p', { class: 'muted' },
      'Runs the source\'s adapter and the rules loaded now over an event, as `waybill route` does; nothing is stored or sent.'),
    dry, out);
  return async (mine, me) => {
    const r = await api('GET', '/api/rules');
    if (!showable(mine, me)) return;
    if (!source.options.length)
      source.replaceChildren(...r.data.sources.map((s) => el('option', { value: s }, s)));
    update(state, r.data, (d) => [el('dl', { class: 'meta' },
      el('dt', {}, 'Directory'), el('dd', {}, d.dir || '—'),
      el('dt', {}, 'Loaded'), el('dd', {}, when(d.loaded_at)),
      el('dt', {}, 'Files'), el('dd', {}, d.files.length ? el('ul', {}, d.files.map((f) => el('li', {}, f))) : '—'),
      el('dt', {}, 'Reloads'), el('dd', {}, d.reloads + ' (' + d.reload_failures + ' failed)'),
      el('dt', {}, 'Last reload'), el('dd', {}, d.last_reload_error ?
        el('pre', { class: 'error', id: 'reload-error' }, d.last_reload_error) : el('span', { class: 'ok' }, 'ok')))]);
  };
}

function dryResult(d) {
  return [el('p', {}, 'Result: ', badge(d.status), d.event ? ' ' + d.event.type : ''),
    d.error ? el('pre', { class: 'error' }, d.error) : null,
    table(['Endpoint', 'Window', 'Payload'], d.deliveries.map((s) => el('tr', { 'data-endpoint': s.endpoint },
      el('td', {}, s.endpoint), el('td', {}, s.window_ms ? s.window_ms + ' ms' : 'now'),
      el('td', {}, el('pre', { class: 'payload' }, pretty(s.payload))))), 'Sends')];
}

/* ---- Subscriptions ---- */

function viewSubs(app) {
  const list = el('div');
  const msg = el('p', { role: 'status' });
  const event = el('input', { type: 'text', list: 'sub-types', placeholder: 'track' });
  const url = el('input', { type: 'url', placeholder: 'https://erp.example.com/hooks' });
  app.append(el('h1', {}, 'Subscriptions'),
    el('form', { class: 'filters', onsubmit: async (e) => {
      e.preventDefault();
      const r = await api('POST', '/v1/environment/webhooks', { event: event.value.trim(), url: url.value.trim() });
      /* ShipEngine's answer has no secret: waybill's own route reads it */
      const s = r.ok ? await api('GET', '/api/subscriptions/' + encodeURIComponent(r.data.webhook_id)) : null;
      msg.className = r.ok ? 'ok' : 'error';
      msg.textContent = r.ok ? 'Created ' + r.data.webhook_id + '; the verification POST was answered 200. Secret: ' +
        (s.ok ? s.data.secret : 'not read (' + errorText(s) + ')') : 'Not created: ' + errorText(r);
      tick();
    } }, field('Event', event), field('URL', url),
    el('datalist', { id: 'sub-types' }, ['track', 'batch', 'rate', 'carrier_connected', 'order_source_refresh_complete',
      'report_complete', 'sales_orders_imported'].map((t) => el('option', { value: t }))),
    el('button', { type: 'submit', id: 'sub-create' }, 'Create')), msg, list);
  return async (mine, me) => {
    const r = await api('GET', '/api/subscriptions?limit=500');
    if (!showable(mine, me)) return;
    update(list, rows(r), (data) => table(['Webhook', 'Event', 'URL', 'Created', ''],
      data.map((s) => ({ ...s, webhook_id: s.id })).map((s) => el('tr', {}, el('td', {}, el('code', {}, s.webhook_id)), el('td', {}, s.event),
        el('td', {}, s.url), el('td', {}, when(s.created_at)),
        el('td', {}, el('button', { type: 'button', class: 'danger', onclick: async () => {
          const d = await api('DELETE', '/v1/environment/webhooks/' + encodeURIComponent(s.webhook_id));
          msg.className = d.ok ? 'ok' : 'error';
          msg.textContent = d.ok ? 'Deleted ' + s.webhook_id + '.' : 'Not deleted: ' + errorText(d);
          tick();
        } }, 'Delete ' + s.webhook_id)))), 'Subscriptions'));
  };
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('login-form').addEventListener('submit', login);
  document.getElementById('signout').addEventListener('click', logout);
  window.addEventListener('hashchange', route);
  document.addEventListener('visibilitychange', tick);
  route();
});
