// standard.js -- a Standard Webhooks receiver as the standardwebhooks npm
// package documents it: Express with the raw body, then
// new Webhook(secret).verify(rawBody, headers); 200 when it returns, 401 when
// it throws (missing headers, bad signature, timestamp outside 5 minutes).
// The secret is the endpoint's "whsec_..." string. Harness: harness.js.
'use strict';
const express = require('express');
const { Webhook } = require('standardwebhooks');
const harness = require('./harness');

const app = express();
harness.before(app);
const wh = new Webhook(process.env.SINK_SECRET);

app.post(harness.route, express.raw(harness.parserOptions({ type: 'application/json' })), (req, res) => {
  let payload;
  try {
    payload = wh.verify(req.body, req.headers);
  } catch (err) {
    res.locals.reason = err.message;
    return res.status(401).send('Invalid signature');
  }
  res.locals.parsed = payload;
  res.status(200).send('OK');
});

harness.after(app);
harness.listen(app);
