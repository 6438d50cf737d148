// xsignature.js -- the receiver seed 002 (an X-Signature shipping API) tells
// merchants to write: Express, the raw body (bodyParser.raw for
// application/json), hex HMAC-SHA256 with crypto.createHmac, compared with
// crypto.timingSafeEqual; 200 'Valid signature' or 403 'Invalid signature'.
// As in the seed, a missing signature or one of another length makes
// timingSafeEqual throw (Express answers 500). Harness: harness.js.
'use strict';
const crypto = require('crypto');
const express = require('express');
const harness = require('./harness');

const app = express();
harness.before(app);
const secret = process.env.SINK_SECRET;

app.post(harness.route, express.raw(harness.parserOptions({ type: 'application/json' })), (req, res) => {
  const payload = req.body; // Raw body
  const receivedSignature = req.headers['x-signature'];
  // Generate the HMAC signature using the secret key
  const calculatedSignature = crypto.createHmac('sha256', secret).update(payload).digest('hex');
  // Compare the calculated signature with the received one
  if (crypto.timingSafeEqual(Buffer.from(calculatedSignature), Buffer.from(receivedSignature))) {
    // Signature is valid
    res.status(200).send('Valid signature');
  } else {
    // Invalid signature
    res.status(403).send('Invalid signature');
  }
});

harness.after(app);
harness.listen(app);
