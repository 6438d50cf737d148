// atoship-json.js -- the receiver seed 000 (atoship) shows: express.json(),
// HMAC-SHA256 over JSON.stringify(req.body) (the *parsed* body), hex,
// X-Atoship-Signature, crypto.timingSafeEqual on the hex-decoded buffers;
// 401 'Invalid signature', else 200 'OK'. It only accepts waybill's deliveries
// when their JSON is compact and round-trips through JSON.parse/stringify
// byte for byte (spec section 5). A signature of another length makes
// timingSafeEqual throw (Express answers 500). Harness: harness.js.
'use strict';
const crypto = require('crypto');
const express = require('express');
const harness = require('./harness');

const app = express();
harness.before(app);

function verifySignature(payload, signature, secret) {
  const expectedSig = crypto
    .createHmac('sha256', secret)
    .update(JSON.stringify(payload))
    .digest('hex');

  // Use timing-safe comparison
  return crypto.timingSafeEqual(
    Buffer.from(signature, 'hex'),
    Buffer.from(expectedSig, 'hex')
  );
}

app.post(harness.route, express.json(harness.parserOptions({})), (req, res) => {
  const signature = req.headers['x-atoship-signature'];
  const secret = process.env.SINK_SECRET;

  if (!verifySignature(req.body, signature, secret)) {
    console.error('Invalid webhook signature');
    return res.status(401).send('Invalid signature');
  }

  // Signature valid, process event
  res.locals.parsed = req.body;
  res.status(200).send('OK');
});

harness.after(app);
harness.listen(app);
