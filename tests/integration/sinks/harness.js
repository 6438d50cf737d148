// harness.js -- what the receivers in this folder share: the port they print,
// the per-request record they print for tests/integration/wb.py (NodeSink),
// and the programmed status sequence. The receivers' own code (the route
// handlers in standard.js, xsignature.js, atoship-json.js) stays as the
// carriers' docs write it; this file only watches it from the outside.
//
// Environment: SINK_SECRET, SINK_PORT (0 = any), SINK_STATUSES ("500,500,200":
// answers for requests the receiver accepts, then its own 200), SINK_LIMIT
// (body-parser limit; unset = the parser's default, 100kb, as the docs'
// receivers run), SINK_QUIET=1 (bench: no recording, no harness middleware).
//
// stdout: first line {"port":N}; then, per request, one JSON line
// {n, time, method, path, headers, body_b64, verdict, status, reason, parsed}
// where verdict is "valid" (the handler answered 200), "invalid" (it answered
// its rejection, 401/403) or "error: <message>" (it threw: Express's 500).
'use strict';
const express = require('express');

const quiet = process.env.SINK_QUIET === '1';
const statuses = (process.env.SINK_STATUSES || '').split(',').filter(Boolean).map(Number);
const limit = process.env.SINK_LIMIT || undefined;
let seq = 0;

// Every path but the harness's own /_sink/... routes.
const route = /^\/(?!_sink\/).*/;

function parserOptions(extra) {
  const o = Object.assign({}, extra);
  if (limit) o.limit = limit;
  if (!quiet) {
    // Keep the raw bytes for the record; does not change what the parser does.
    o.verify = (req, res, buf) => { req.rawBody = Buffer.from(buf); };
  }
  return o;
}

function record(req, res) {
  const intended = res.locals.intended;
  let verdict;
  if (res.locals.error !== undefined) verdict = 'error: ' + res.locals.error;
  else if (intended === 200) verdict = 'valid';
  else if (intended === 401 || intended === 403) verdict = 'invalid';
  else verdict = 'status ' + intended;
  let body = req.rawBody;
  if (!body && Buffer.isBuffer(req.body)) body = req.body;
  const line = {
    n: ++seq,
    time: Date.now() / 1000,
    method: req.method,
    path: req.originalUrl,
    headers: req.headers,
    body_b64: body ? body.toString('base64') : '',
    verdict,
    status: res.statusCode,
    reason: res.locals.reason,
    parsed: res.locals.parsed,
  };
  process.stdout.write(JSON.stringify(line) + '\n');
}

// Call before the receiver's routes.
function before(app) {
  app.disable('x-powered-by');
  if (quiet) return;
  app.post('/_sink/statuses', express.text({ type: '*/*' }), (req, res) => {
    statuses.splice(0, statuses.length, ...JSON.parse(req.body));
    res.send('ok');
  });
  app.use((req, res, next) => {
    const status = res.status.bind(res);
    res.status = (code) => {
      if (res.locals.intended === undefined) res.locals.intended = code;
      if (code === 200 && statuses.length) code = statuses.shift();
      return status(code);
    };
    res.on('finish', () => record(req, res));
    next();
  });
}

// Call after the receiver's routes: a throwing handler is Express's 500
// (a parser's error keeps its own status), recorded as verdict "error: ...".
function after(app) {
  if (quiet) return;
  app.use((err, req, res, next) => { // eslint-disable-line no-unused-vars
    res.locals.error = err.message;
    res.status(err.status || err.statusCode || 500).send('error');
  });
}

function listen(app) {
  const server = app.listen(Number(process.env.SINK_PORT || 0), '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
  });
  server.keepAliveTimeout = 30000;
  process.on('SIGTERM', () => process.exit(0));
  return server;
}

module.exports = { route, parserOptions, before, after, listen };
