// jsondiff.js -- the differential JSON test's generator and oracle (Node's own
// JSON.parse / JSON.stringify). Used by test_json_diff.py; no npm modules.
//
//   node jsondiff.js gen SEED COUNT OUT
//     writes COUNT carrier bodies (atoship's envelope, {"id":"dN",...,"data":DOC})
//     as JSON lines {i, label, body_b64, node_ok, depth, expect_b64}: DOC is a
//     seeded random document mixed with the edge cases of issue 21 (numbers
//     past 2^53 and the double range, -0, 1e21, 5e-324, U+2028, surrogates,
//     NUL, control characters, invalid UTF-8, a BOM, deep nesting, duplicate
//     and index-like keys, 1 MB strings). node_ok: express.json() would parse
//     the body (UTF-8 decoded with U+FFFD for bad bytes, a BOM stripped);
//     expect: JSON.stringify(JSON.parse(body).data), the bytes a receiver
//     re-serializes; depth: how deep the body nests.
//
//   node jsondiff.js check GEN GOT MAX_DEPTH
//     GOT: JSON lines {i, status, answer} (what waybill answered each body)
//     and {delivery: {path, body_b64, verdict}} (what the seed-000 receiver
//     got). Prints one JSON line per difference, then {"differences":N,...}.
//     A body Node parses must be accepted (200) unless it nests deeper than
//     MAX_DEPTH (waybill's documented limit: 400 naming the nesting); one
//     Node refuses must get 400. Each accepted body must reach /list, /fn and
//     /send exactly once, verified by the receiver, as bytes equal to
//     JSON.stringify(JSON.parse(bytes)) whose data re-serializes to expect.
'use strict';
const fs = require('fs');

function rng(seed) { // mulberry32
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const NUMBERS = [
  '0', '-0', '0.0', '-0.0', '1', '-1', '1.0', '1e2', '1E2', '1e+2', '100', '1e21', '1e+21', '1e20',
  '123456789012345678901', '999999999999999999999', '5e-324', '-5e-324', '2e-324', '1e-400',
  '1e400', '-1e400', '1.7976931348623157e308', '1.7976931348623159e308', '0.1', '0.2',
  '0.30000000000000004', '0.000001', '1e-7', '1.5e-7', '4.35', '123e-20',
  '9007199254740991', '9007199254740992', '9007199254740993', '-9007199254740993',
  '9007199254740995', '18014398509481985', '1152921504606846976', '1152921504606846977',
  '9223372036854775807', '9223372036854775808', '-9223372036854775808', '-9223372036854775809',
  '18446744073709551615', '18446744073709551616', '123456789012345678901234567890',
  '4294967295', '4294967296', '2.5', '-2.5e-3', '1.0000000000000002', '3.141592653589793',
];

const STRING_PIECES = [
  'abc', 'Hello, world', ' ', '\\"', '\\\\', '\\/', '\\n', '\\t', '\\b', '\\f', '\\r', '\\u001f',
  '\\u007f', '\\u0000', 'a\\u0000b', '\\u2028', '\\u2029', '\u2028', '\u2029', '\\u00e9', 'é',
  '日本', '\u{1F600}', '\\ud83d\\ude00', '\\uD83D\\uDE00', '\\ud800', '\\udc00', '\\udfff',
  '\\ud800x', '\\ud83d\\ud83d', '\\udc00\\ud800', '\\u0041', '\x7f', '\\uFEFF', '\uFEFF',
];

// Raw byte sequences that are not UTF-8 (Node decodes each to U+FFFD).
const BAD_BYTES = [
  [0xff], [0xfe], [0xc0, 0x80], [0xc1, 0xbf], [0xe2, 0x82], [0xed, 0xa0, 0x80], [0xed, 0xbf, 0xbf],
  [0xf0, 0x9f, 0x98], [0xf4, 0x90, 0x80, 0x80], [0xf5, 0x80], [0x80], [0xbf, 0x41], [0xe0, 0x80, 0xaf],
  [0xf0, 0x80, 0x80, 0xaf], [0xc3],
];

const KEYS = [
  'a', 'b', 'c', 'id', 'name', 'zeta', 'alpha', 'Z', '_', '', ' ', '0', '1', '2', '10', '17', '01',
  '-1', '1.5', '4294967294', '4294967295', '99999999999', '__proto__', 'constructor', 'é', '日本',
  'a\\u0000b', '\\u0000', '\\ud800', '\\n', 'key with space', 'tracking_number', 'status',
];

function gen(seed, count) {
  const r = rng(seed);
  const pick = (a) => a[Math.floor(r() * a.length)];
  const int = (n) => Math.floor(r() * n);

  function number() {
    switch (int(5)) {
      case 0: return String(int(1000000) - 500000);
      case 1: return String((r() - 0.5) * Math.pow(10, int(40) - 20));
      case 2: return (r() * 1000).toFixed(int(6));
      case 3: { // near 2^53 and 2^63, written exactly
        const base = pick([2n ** 53n, 2n ** 63n, 2n ** 60n, 2n ** 64n]);
        const v = base + BigInt(int(20)) - 10n;
        return (r() < 0.3 ? '-' : '') + v.toString();
      }
      default: return pick(NUMBERS);
    }
  }

  function stringParts() { // a list of Buffers (text and bad bytes)
    const parts = [];
    const n = int(5);
    for (let i = 0; i < n; i++) {
      const k = r();
      if (k < 0.45) parts.push(Buffer.from(pick(STRING_PIECES), 'utf8'));
      else if (k < 0.55) parts.push(Buffer.from(pick(BAD_BYTES)));
      else parts.push(Buffer.from(Math.floor(r() * 1e9).toString(36), 'utf8'));
    }
    return parts;
  }
  const str = () => Buffer.concat([Buffer.from('"'), ...stringParts(), Buffer.from('"')]);
  const key = () => (r() < 0.8 ? Buffer.from('"' + pick(KEYS) + '"', 'utf8') : str());

  function value(depth) {
    const k = r();
    if (depth < 6 && k < 0.25) {
      const n = int(7), seen = [], parts = [];
      for (let i = 0; i < n; i++) {
        const kb = seen.length && r() < 0.15 ? pick(seen) : key(); // duplicates too
        seen.push(kb);
        parts.push(Buffer.concat([kb, Buffer.from(':'), value(depth + 1)]));
      }
      return Buffer.concat([Buffer.from('{'), join(parts), Buffer.from('}')]);
    }
    if (depth < 6 && k < 0.4) {
      const n = int(6), parts = [];
      for (let i = 0; i < n; i++) parts.push(value(depth + 1));
      return Buffer.concat([Buffer.from('['), join(parts), Buffer.from(']')]);
    }
    if (k < 0.65) return Buffer.from(number());
    if (k < 0.9) return str();
    return Buffer.from(pick(['true', 'false', 'null']));
  }

  function join(parts) {
    const out = [];
    parts.forEach((p, i) => { if (i) out.push(Buffer.from(',')); out.push(p); });
    return Buffer.concat(out);
  }

  function nested(levels, inner) {
    const open = [], close = [];
    for (let i = 0; i < levels; i++) {
      const obj = i % 3 === 1;
      open.push(obj ? '{"k":' : '[');
      close.unshift(obj ? '}' : ']');
    }
    return Buffer.from(open.join('') + inner + close.join(''));
  }

  // Hand-picked documents first, then random ones.
  const special = [
    ['key order', Buffer.from('{"b":1,"a":2,"10":3,"2":4,"01":5,"":6,"z":{"y":1,"x":2}}')],
    ['integer past 2^53', Buffer.from('{"n":9007199254740993}')],
    ['2^60', Buffer.from('{"n":1152921504606846976}')],
    ['double overflow', Buffer.from('{"n":1e400,"m":-1e400,"t":1e-400}')],
    ['NUL in a key', Buffer.from('{"a\\u0000b":1,"\\u0000":2}')],
    ['lone surrogates', Buffer.from('{"s":"\\ud800","t":"x\\udc00y","\\udbff":["\\ud83d\\ud83d"]}')],
    ['invalid UTF-8', Buffer.concat([Buffer.from('{"s":"a'), Buffer.from([0xff, 0xc0, 0x80, 0xed, 0xa0, 0x80]), Buffer.from('z"}')])],
    ['duplicate keys', Buffer.from('{"a":1,"b":2,"a":3,"c":{"x":1,"x":{"y":2}}}')],
    ['1 MB string', Buffer.from('{"big":"' + 'x'.repeat(1 << 20) + '","after":1}')],
    ['1 MB of escapes', Buffer.from('{"big":"' + '\\u2028\\n'.repeat(1 << 16) + '"}')],
    ['U+2028 raw', Buffer.from('{"s":"a\u2028b\u2029c"}')],
    ['numbers', Buffer.from('[' + NUMBERS.join(',') + ']')],
    ['empty containers', Buffer.from('{"a":{},"b":[],"c":[{}],"d":[[]]}')],
    ['scalar data', Buffer.from('"just a string"')],
    ['null data', Buffer.from('null')],
  ];
  for (const levels of [100, 1000, 2044, 2045, 2046, 2047, 2048, 2049, 2050, 3000])
    special.push(['nesting ' + levels, nested(levels, '1')]);

  const docs = [];
  for (let i = 0; i < count; i++) {
    let label, doc;
    if (i < special.length) [label, doc] = special[i];
    else {
      label = 'random';
      doc = value(0);
      if (r() < 0.7) doc = Buffer.concat([Buffer.from('{"doc":'), doc, Buffer.from('}')]);
    }
    let body = Buffer.concat([
      Buffer.from(`{"id":"d${i}","type":"diff.${i % 3}","created_at":"2024-05-01T10:00:00Z","data":`),
      doc, Buffer.from('}')]);
    if (r() < 0.05 || label === 'key order') body = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), body]);
    if (r() < 0.05) body = Buffer.concat([Buffer.from(' \n\t'), body, Buffer.from('\r\n')]);
    if (label === 'random' && r() < 0.03) { // broken: cut short, or a raw control character
      label = 'broken';
      body = r() < 0.5 ? body.subarray(0, int(body.length)) : Buffer.concat([body.subarray(0, body.length - 1), Buffer.from('"\x01"}')]);
    }
    docs.push(describe(i, label, body));
  }
  return docs;
}

// How deep the body nests (brackets outside strings).
function depthOf(text) {
  let d = 0, max = 0, inStr = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inStr) {
      if (c === '\\') i++;
      else if (c === '"') inStr = false;
    } else if (c === '"') inStr = true;
    else if (c === '{' || c === '[') max = Math.max(max, ++d);
    else if (c === '}' || c === ']') d--;
  }
  return max;
}

// What express.json() makes of the body (body-parser: iconv-lite's UTF-8
// decoder, which strips a BOM, then JSON.parse; non-strict mode off: the
// body must start with '{' or '[').
function nodeParse(body) {
  let text = body.toString('utf8');
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  if (!/^[\x20\x09\x0a\x0d]*[{[]/.test(text)) throw new Error('not strict');
  return JSON.parse(text);
}

function describe(i, label, body) {
  let nodeOk = true, expect = null;
  try {
    const v = nodeParse(body);
    expect = Buffer.from(JSON.stringify(v.data), 'utf8').toString('base64');
  } catch (e) {
    nodeOk = false;
  }
  return { i, label, body_b64: body.toString('base64'), node_ok: nodeOk,
           depth: depthOf(body.toString('latin1')), expect_b64: expect };
}

function readLines(path) {
  return fs.readFileSync(path, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

function check(genPath, gotPath, maxDepth) {
  const docs = readLines(genPath), got = readLines(gotPath);
  const diffs = [];
  const answers = new Map(), seen = new Map();
  const short = (s) => (s.length > 160 ? s.slice(0, 160) + '...(' + s.length + ' chars)' : s);
  for (const g of got) if (g.i !== undefined) answers.set(g.i, g);
  for (const g of got) {
    if (!g.delivery) continue;
    const raw = Buffer.from(g.delivery.body_b64, 'base64');
    const text = raw.toString('utf8');
    const handler = g.delivery.path.replace(/^\//, '');
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      diffs.push({ kind: 'delivery not JSON', handler, body: short(text) });
      continue;
    }
    const id = handler === 'fn' ? parsed.id : parsed.source_id;
    const i = typeof id === 'string' && /^d\d+$/.test(id) ? Number(id.slice(1)) : -1;
    const doc = docs[i];
    if (!doc) {
      diffs.push({ kind: 'delivery of no document', handler, body: short(text) });
      continue;
    }
    const k = i + '/' + handler;
    seen.set(k, (seen.get(k) || 0) + 1);
    if (seen.get(k) > 1) {
      diffs.push({ i, label: doc.label, handler, kind: 'delivered more than once (a retry?)' });
      continue;
    }
    const again = JSON.stringify(parsed);
    if (again !== text) {
      let at = 0;
      while (at < text.length && text[at] === again[at]) at++;
      diffs.push({ i, label: doc.label, handler, kind: 'sent bytes are not JSON.stringify(JSON.parse(bytes))',
                   sent: short(text.slice(Math.max(0, at - 40))), node: short(again.slice(Math.max(0, at - 40))) });
    }
    const want = Buffer.from(doc.expect_b64 || '', 'base64').toString('utf8');
    const have = JSON.stringify(parsed.data);
    if (have !== want)
      diffs.push({ i, label: doc.label, handler, kind: 'data differs from JSON.stringify(JSON.parse(input).data)',
                   sent: short(have), node: short(want) });
    if (g.delivery.verdict !== 'valid')
      diffs.push({ i, label: doc.label, handler, kind: 'seed-000 receiver: ' + g.delivery.verdict });
  }
  let accepted = 0, refused = 0;
  for (const doc of docs) {
    const a = answers.get(doc.i);
    const status = a ? a.status : 'no answer';
    const deep = doc.depth > maxDepth;
    if (doc.node_ok && !deep) {
      if (status !== 200) {
        diffs.push({ i: doc.i, label: doc.label, kind: 'Node parses it, waybill answered ' + status,
                     answer: a && short(a.answer) });
        continue;
      }
      accepted++;
      for (const h of ['list', 'fn', 'send'])
        if (!seen.get(doc.i + '/' + h))
          diffs.push({ i: doc.i, label: doc.label, handler: h, kind: 'accepted, never delivered' });
    } else {
      refused++;
      const why = deep ? /nest/.test((a && a.answer) || '') : true;
      if (status !== 400 || !why)
        diffs.push({ i: doc.i, label: doc.label, kind: (deep ? 'nested deeper than ' + maxDepth
                     : 'Node refuses it') + ', waybill answered ' + status, answer: a && short(a.answer) });
    }
  }
  for (const d of diffs) process.stdout.write(JSON.stringify(d) + '\n');
  process.stdout.write(JSON.stringify({ differences: diffs.length, documents: docs.length,
                                        accepted, refused, deliveries: got.length - answers.size }) + '\n');
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'gen') {
  const docs = gen(Number(args[0]), Number(args[1]));
  fs.writeFileSync(args[2], docs.map((d) => JSON.stringify(d)).join('\n') + '\n');
} else if (cmd === 'check') {
  check(args[0], args[1], Number(args[2]));
} else {
  process.stderr.write('usage: jsondiff.js gen SEED COUNT OUT | check GEN GOT MAX_DEPTH\n');
  process.exit(2);
}
