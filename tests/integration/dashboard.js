// dashboard.js -- drives the dashboard in Debian's chromium (headless, through
// puppeteer-core) for test_dashboard.py, against the real gateway it started.
//
//     node dashboard.js ADMIN_URL TOKEN SCREENSHOT_DIR
//
// It asks the Python side for what a browser cannot do (post a signed
// carrier event, flip the failing sink, break the rules file, run
// `waybill route`, count what a sink received): it prints `ASK {json}` and
// reads one JSON line from stdin. It prints `OK step` per step that passed and
// ends with `DONE` or `FAIL step: reason` (exit 1). A page that logs a console
// error, throws, opens a dialog, or gets a response >= 400 the step did not
// expect, fails the step that was running.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const puppeteer = require('puppeteer-core');

const [ADMIN, TOKEN, SHOTS] = process.argv.slice(2);
const AXE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const SLOW = process.env.WB_ASAN === '1' ? 3 : 1;

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(q) {
  process.stdout.write('ASK ' + JSON.stringify(q) + '\n');
  const { value } = await lines.next();
  const a = JSON.parse(value);
  if (a.error) throw new Error('python: ' + a.error);
  return a;
}

let step = 'start';
let allowed = []; // [method, path prefix, status] the running step expects
const problems = [];
const dialogs = [];

function expectHttp(...list) { allowed = list; }

function watch(page) {
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const url = (m.location() && m.location().url) || '';
    // chromium logs every response >= 400 as a console error; those are
    // judged by the response handler below
    if (/Failed to load resource: the server responded with a status of/.test(m.text())) return;
    problems.push(`${step}: console error: ${m.text()} ${url}`);
  });
  page.on('pageerror', (e) => problems.push(`${step}: page error: ${e.message}`));
  page.on('requestfailed', (r) => {
    const why = r.failure() ? r.failure().errorText : '';
    if (why !== 'net::ERR_ABORTED') problems.push(`${step}: request failed: ${r.url()} ${why}`);
  });
  page.on('response', (r) => {
    if (r.status() < 400) return;
    const u = new URL(r.url());
    const m = r.request().method();
    if (!allowed.some(([am, ap, as]) => am === m && u.pathname.startsWith(ap) && as === r.status()))
      problems.push(`${step}: unexpected ${r.status()} for ${m} ${u.pathname}`);
  });
  page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });
}

function check(cond, msg) { if (!cond) throw new Error(msg); }

async function textOf(page, sel) {
  return page.$eval(sel, (e) => e.textContent);
}

// Waits until fn (run in the page) returns truthy; returns its value.
async function until(page, fn, arg, timeout, what) {
  try {
    const h = await page.waitForFunction(fn, { timeout: timeout * SLOW, polling: 100 }, arg);
    return await h.jsonValue();
  } catch (e) {
    throw new Error(`timed out (${timeout * SLOW} ms) waiting for ${what}`);
  }
}

async function axe(page, what) {
  await page.evaluate(AXE); // Runtime.evaluate: not the page's script, CSP does not apply
  const res = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => `${v.id} (${v.impact}): ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
  });
  check(res.length === 0, `axe on ${what}: ${res.join('; ')}`);
}

async function go(page, hash, ready) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  await page.waitForSelector(ready, { timeout: 5000 * SLOW });
}

async function run(name, fn) {
  step = name;
  allowed = [];
  const before = problems.length;
  await fn();
  // let late responses of the step arrive before judging it
  await new Promise((r) => setTimeout(r, 150));
  if (problems.length > before) throw new Error(problems.slice(before).join('\n'));
  if (dialogs.length) throw new Error('a dialog opened: ' + dialogs.join(', '));
  process.stdout.write('OK ' + name + '\n');
}

async function main() {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    watch(page);
    let eventId, failedDelivery, tracking;

    await run('headers', async () => {
      const r = await page.goto(ADMIN + '/', { waitUntil: 'load' });
      const h = r.headers();
      check(r.status() === 200, 'GET / answered ' + r.status());
      check(/default-src 'self'/.test(h['content-security-policy']) &&
        /frame-ancestors 'none'/.test(h['content-security-policy']) &&
        !/unsafe-inline/.test(h['content-security-policy']), 'CSP: ' + h['content-security-policy']);
      check(h['x-content-type-options'] === 'nosniff', 'nosniff missing');
      check(/^"[0-9a-f]{16}"$/.test(h.etag || ''), 'ETag: ' + h.etag);
      await page.waitForSelector('#login:not([hidden])');
      const scripts = await page.$$eval('script', (s) => s.map((x) => x.src ? 'src' : 'inline'));
      check(scripts.every((s) => s === 'src'), 'an inline script in the page');
    });

    await run('sign in with a wrong token', async () => {
      expectHttp(['POST', '/login', 401], ['GET', '/api/status', 401]);
      const waitLogin = page.waitForResponse((r) => r.url().endsWith('/login'));
      await page.type('#token', 'not-the-token');
      await page.keyboard.press('Enter');
      const r = await waitLogin;
      check(r.status() === 401, '/login answered ' + r.status());
      await until(page, () => document.getElementById('login-msg').textContent.includes('Wrong token'),
        null, 2000, 'the wrong-token message');
      check(await page.$eval('#nav', (n) => n.hidden), 'navigation shown after a wrong token');
      check(await page.$eval('#app', (a) => a.children.length === 0), 'data shown after a wrong token');
      const st = await page.evaluate(() => fetch('/api/status').then((r) => r.status));
      check(st === 401, 'the API answered ' + st + ' after a wrong token');
    });

    await run('sign in', async () => {
      await page.type('#token', TOKEN);
      await page.keyboard.press('Enter');
      await page.waitForSelector('#nav:not([hidden])', { timeout: 3000 * SLOW });
      await until(page, () => document.querySelectorAll('.card svg.chart').length === 6, null, 3000, 'the charts');
      const c = (await page.cookies()).find((k) => k.name === 'waybill_session');
      check(c && c.httpOnly && c.sameSite === 'Strict' && c.expires > Date.now() / 1000,
        'session cookie: ' + JSON.stringify(c));
      check(!(await page.evaluate(() => document.cookie)).includes('waybill_session'),
        'the session cookie is readable by script');
    });

    await run('a cross-origin state change is refused', async () => {
      // the cookie goes with a request from a page of another origin only
      // when SameSite lets it; the Origin check refuses it regardless
      const c = (await page.cookies()).find((k) => k.name === 'waybill_session');
      const r = await fetch(ADMIN + '/api/reload', { method: 'POST',
        headers: { Cookie: 'waybill_session=' + c.value, Origin: 'http://evil.example' } });
      check(r.status === 403, 'a cross-origin POST with the cookie answered ' + r.status);
      const ok = await fetch(ADMIN + '/api/status', { headers: { Cookie: 'waybill_session=' + c.value } });
      check(ok.status === 200, 'GET with the cookie answered ' + ok.status);
    });

    await run('an event appears in Events without a reload', async () => {
      await go(page, '#/events', 'table');
      const t0 = Date.now();
      const posted = await ask({ do: 'post' });
      eventId = posted.id;
      tracking = posted.tracking_number;
      await until(page, (id) => [...document.querySelectorAll('td a')].some((a) => a.textContent === id),
        eventId, 3000, 'the event in the list (2 s poll)');
      process.stdout.write(`NOTE event shown ${Date.now() - t0} ms after the post\n`);
      const body = await page.evaluate(() => document.body.innerText);
      check(!body.includes('undefined'), 'an undefined in the list');
    });

    await run('find an event by its tracking number', async () => {
      await page.type('#f-find-by-event-id-or-tracking-number', tracking);
      await page.keyboard.press('Enter');
      await until(page, (id) => location.hash === '#/events/' + id, eventId, 3000, 'the event page');
      await go(page, '#/events', 'table');
    });

    await run('untrusted payloads render as text', async () => {
      await page.waitForSelector(`a[href="#/events/${eventId}"]`, { timeout: 3000 * SLOW });
      await page.click(`a[href="#/events/${eventId}"]`);
      await page.waitForSelector('section.delivery', { timeout: 5000 * SLOW });
      await until(page, () => document.querySelector('section.delivery td.num'), null, 5000, 'an attempt');
      const html = await page.evaluate(() => document.body.innerText);
      check(html.includes('<img src=x onerror=alert(1)>'), 'the img payload is not shown as text');
      check(html.includes('<script>window.__xss=1</script>'), 'the script payload is not shown as text');
      check(await page.evaluate(() => !document.querySelector('main img, main script') && window.__xss === undefined),
        'a payload became markup');
      check(dialogs.length === 0, 'alert() ran');
    });

    await run('the event page shows deliveries and attempts', async () => {
      await until(page, () => document.querySelector('section.delivery .badge.failed'), null, 5000,
        'the failed delivery');
      const t = await textOf(page, 'section.delivery');
      check(t.includes('erp') && t.includes('500'), 'delivery/attempt text: ' + t.slice(0, 300));
      failedDelivery = await page.$eval('section.delivery code', (c) => c.textContent);
      for (const h of ['Normalized event', 'Raw body', 'Verified headers'])
        check((await page.evaluate(() => document.body.innerText)).includes(h), 'no section ' + h);
      const hdr = await page.evaluate(() => document.body.innerText);
      check(!hdr.includes(process.env.NONE || 'atoship-dash-secret'), 'a secret on the page');
      await page.screenshot({ path: path.join(SHOTS, 'event.png'), fullPage: false });
      await axe(page, 'the event page');
    });

    await run('the event page shows the rules that matched', async () => {
      const t = await textOf(page, 'section.matched');
      const rules = t.match(/10-main\.lua:\d+/g) || [];
      check(JSON.stringify(rules) === JSON.stringify(['10-main.lua:1', '10-main.lua:2']),
        'matched rules: ' + t.slice(0, 400));
      check(t.includes('sent to erp ' + failedDelivery) && /sent to crm dlv_\w+/.test(t),
        'what each rule sent: ' + t.slice(0, 400));
    });

    await run('retry a failed delivery from Deliveries', async () => {
      await go(page, '#/deliveries', 'table');
      await page.waitForSelector(`tr[data-id="${failedDelivery}"] button[data-retry]`, { timeout: 3000 * SLOW });
      await ask({ do: 'flip' });
      await page.click(`tr[data-id="${failedDelivery}"] button[data-retry]`);
      await until(page, (id) => {
        const row = document.querySelector(`tr[data-id="${id}"] .badge`);
        return row && row.textContent === 'delivered';
      }, failedDelivery, 5000, 'the row to turn delivered');
      const n = (await ask({ do: 'count', sink: 'erp' })).count;
      check(n === 2, 'the sink got ' + n + ' requests, not 2');
      await axe(page, 'Deliveries');
    });

    await run('the time filter finds an event older than the newest 100', async () => {
      const { id, received_at: at, posted } = await ask({ do: 'post_old_then_many', n: 105 });
      await go(page, '#/events', '#f-since'); // the Events view's own (Deliveries has a table too)
      await until(page, (n) => document.querySelectorAll('tbody tr').length === n, 100, 5000,
        'the newest 100 events');
      check(!(await page.$(`a[href="#/events/${id}"]`)), 'the old event is among the newest 100');
      // the next page has it; Newer goes back
      await page.waitForSelector('#older:not([hidden])', { timeout: 3000 * SLOW });
      await page.click('#older');
      await until(page, (eid) => !!document.querySelector(`a[href="#/events/${eid}"]`), id, 5000,
        'the old event on the next page');
      await page.click('#newer');
      await until(page, (eid) => !document.querySelector(`a[href="#/events/${eid}"]`) &&
        document.querySelector('#newer').hidden, id, 5000, 'the first page again');
      // Hold the next poll (an unfiltered list request) while the window is
      // set, and answer it only once the window's list is on screen: sent
      // before the filter changed, it must not put the newest 100 back.
      let held = null, holding = true;
      const onRequest = (req) => {
        if (holding && !held && req.method() === 'GET' && req.url().includes('/api/events?') &&
            !req.url().includes('since=')) {
          held = req;
          return;
        }
        req.continue();
      };
      await page.setRequestInterception(true);
      page.on('request', onRequest);
      const t0 = Date.now();
      while (!held && Date.now() - t0 < 6000 * SLOW)
        await new Promise((r) => setTimeout(r, 50));
      holding = false;
      check(!!held, 'no poll of the list was seen within 6 s');
      // the second it was received in, as the inputs take it (the browser's zone)
      await page.evaluate((iso) => {
        const local = (ms) => { const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
          return d.toISOString().slice(0, 19); };
        const t = Math.floor(new Date(iso).getTime() / 1000) * 1000;
        for (const [sel, v] of [['#f-since', local(t)], ['#f-until', local(t + 1000)]]) {
          const i = document.querySelector(sel);
          i.value = v;
          i.dispatchEvent(new Event('change'));
        }
      }, at);
      // Each input's change reloads the list: the answer to since alone
      // (every later event too) can be on screen before the one to both, so
      // wait for the window's answer, then check it lists nothing later.
      await until(page, ([eid, later]) => !!document.querySelector(`a[href="#/events/${eid}"]`) &&
        ![...document.querySelectorAll('tbody tr a')].some((a) => later.includes(a.textContent)),
        [id, posted], 5000, 'the old event alone in the window (no event from after it listed)');
      if (held) {
        const answered = page.waitForResponse((r) => r.request() === held, { timeout: 5000 * SLOW });
        await held.continue();
        await answered;
        await new Promise((r) => setTimeout(r, 300)); // time to render it, were it shown
      }
      page.off('request', onRequest);
      await page.setRequestInterception(false);
      const shown = await page.$$eval('tbody tr a', (a) => a.map((x) => x.textContent));
      check(!shown.some((x) => posted.includes(x)),
        'an event from after the window is listed (a list answered late replaced the filtered one)');
      for (const sel of ['#f-since', '#f-until'])
        await page.$eval(sel, (i) => { i.value = ''; i.dispatchEvent(new Event('change')); });
      await axe(page, 'Events with a time window');
    });

    await run('disable, enable, test an endpoint', async () => {
      await go(page, '#/endpoints', 'tr[data-endpoint="crm"]');
      const state = () => page.$eval('tr[data-endpoint="crm"] .badge', (b) => b.textContent);
      await page.click('tr[data-endpoint="crm"] button');
      await until(page, () => document.querySelector('tr[data-endpoint="crm"] .badge').textContent === 'disabled',
        null, 3000, 'crm disabled');
      check((await ask({ do: 'endpoint', name: 'crm' })).disabled === true, 'the API does not say disabled');
      await page.click('tr[data-endpoint="crm"] button');
      await until(page, () => document.querySelector('tr[data-endpoint="crm"] .badge').textContent === 'enabled',
        null, 3000, 'crm enabled');
      check((await state()) === 'enabled', 'not enabled');
      await page.select('tr[data-endpoint="crm"] select', 'shipment.exception');
      const [b1, b2] = await page.$$('tr[data-endpoint="crm"] button');
      void b1;
      await b2.click();
      await until(page, () => /Test event evt_\S+ sent to crm/.test(document.body.innerText), null, 3000,
        'the test event message');
      const got = await ask({ do: 'wait_count', sink: 'crm', n: 1 });
      check(got.types.includes('shipment.exception'), 'the crm sink got ' + JSON.stringify(got.types));
      await axe(page, 'Endpoints');
    });

    await run('a broken rules file: Reload shows file:line, old rules still route', async () => {
      const { file } = await ask({ do: 'break_rules' });
      await go(page, '#/rules', 'dl.meta');
      expectHttp(['POST', '/api/reload', 422]);
      await page.click('#reload');
      const msg = await until(page, () => {
        const e = document.getElementById('reload-error');
        return e && e.textContent;
      }, null, 3000, 'the reload error');
      check(new RegExp(file.replace('.', '\\.') + ':\\d+').test(msg), 'no file:line in ' + msg);
      const status = await page.evaluate(() => document.getElementById('rules-msg').textContent);
      check(/Reload failed/.test(status), 'message: ' + status);
      const r = await ask({ do: 'post_and_wait', sink: 'erp' });
      check(r.delivered, 'the old rules did not route a new event');
      await ask({ do: 'fix_rules' });
    });

    await run('a dry run shows what waybill route prints', async () => {
      const { body, route } = await ask({ do: 'route_body' });
      await page.select('#f-source', 'atoship');
      await page.$eval('#f-carrier-body-json', (t, b) => { t.value = b; }, body);
      const waitRun = page.waitForResponse((r) => r.url().endsWith('/api/dryrun'));
      await page.click('#dryrun');
      await waitRun;
      await page.waitForSelector('tr[data-endpoint] pre.payload', { timeout: 3000 * SLOW });
      const shown = await page.$$eval('tr[data-endpoint]', (rows) => rows.map((r) => ({
        endpoint: r.dataset.endpoint, payload: JSON.parse(r.querySelector('pre.payload').textContent) })));
      const strip = (p) => { const c = JSON.parse(JSON.stringify(p)); delete c.id; delete c.received_at; return c; };
      const want = route.deliveries.map((d) => ({ endpoint: d.endpoint, payload: strip(d.payload) }));
      const got = shown.map((d) => ({ endpoint: d.endpoint, payload: strip(d.payload) }));
      check(JSON.stringify(got) === JSON.stringify(want),
        'dry run ' + JSON.stringify(got) + '\nwaybill route ' + JSON.stringify(want));
      await axe(page, 'Rules');
    });

    await run('batches and subscriptions', async () => {
      await go(page, '#/batches', 'table');
      const n = (await ask({ do: 'batch_event' })).window;
      await until(page, () => [...document.querySelectorAll('td')].some((t) => t.textContent === 'bi'),
        null, 3000, 'the open window of bi');
      void n;
      await axe(page, 'Batches');
      await go(page, '#/subscriptions', '#sub-create'); // its own form (the sign-in form is always in the page)
      const { url, bad } = await ask({ do: 'sub_urls' });
      await page.type('#f-event', 'track');
      await page.type('#f-url', bad);
      expectHttp(['POST', '/v1/environment/webhooks', 422]);
      await page.click('#sub-create');
      await until(page, () => /Not created: verification POST/.test(document.body.innerText), null, 5000,
        'the failed verification');
      await page.$eval('#f-url', (i) => { i.value = ''; });
      await page.type('#f-url', url);
      await page.click('#sub-create');
      await until(page, () => /Created wh_|Created \S+; the verification POST was answered 200/.test(document.body.innerText),
        null, 5000, 'the created subscription');
      await until(page, () => document.querySelectorAll('button.danger').length === 1, null, 3000, 'the list');
      await page.click('button.danger');
      await until(page, () => document.querySelectorAll('button.danger').length === 0, null, 3000,
        'the deleted subscription gone');
      await axe(page, 'Subscriptions');
    });

    await run('overview, narrow screen, dark mode', async () => {
      await go(page, '#/overview', '.card svg.chart');
      await until(page, () => /erp/.test(document.body.innerText), null, 3000, 'the endpoint rows');
      await page.screenshot({ path: path.join(SHOTS, 'overview.png'), fullPage: false });
      await axe(page, 'Overview');
      await page.emulateMediaFeatures([{ name: 'prefers-color-scheme', value: 'dark' }]);
      await axe(page, 'Overview (dark)');
      await page.setViewport({ width: 390, height: 844 });
      for (const v of ['#/overview', '#/events', '#/deliveries']) {
        await go(page, v, 'h1');
        await new Promise((r) => setTimeout(r, 300));
        const over = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        check(over <= 1, `${v} is ${over} px wider than a phone screen`);
      }
      await page.emulateMediaFeatures([]);
      await page.setViewport({ width: 1280, height: 900 });
    });

    await run('sign out', async () => {
      const c = (await page.cookies()).find((k) => k.name === 'waybill_session');
      await go(page, '#/overview', 'h1');
      await page.click('#signout');
      await page.waitForSelector('#login:not([hidden])', { timeout: 3000 });
      const r = await fetch(ADMIN + '/api/status', { headers: { Cookie: 'waybill_session=' + c.value } });
      check(r.status === 401, 'the old cookie still works after sign-out: ' + r.status);
      check(!(await page.cookies()).some((k) => k.name === 'waybill_session'), 'cookie kept');
    });
    process.stdout.write('DONE\n');
  } catch (e) {
    process.stdout.write('FAIL ' + step + ': ' + (e && e.message ? e.message : e).replace(/\n/g, '\n  ') + '\n');
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

main().then(() => process.exit(process.exitCode || 0));
