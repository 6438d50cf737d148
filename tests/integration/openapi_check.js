// openapi_check.js -- validates real answers of the admin API against the
// OpenAPI 3.1 document's response schemas (JSON Schema 2020-12, ajv).
// stdin: {"doc": {...}, "answers": [{"path", "method", "status",
// "content_type", "body"}]}, path being the document's template
// ("/api/events/{id}"); or {"schema", "body"} to check a JSON text against
// one schema of the document (an SSE message's data). stdout: one JSON array, per answer null (valid) or
// the reason it is not.
"use strict";
const Ajv2020 = require("ajv/dist/2020");

function resolve(doc, obj) {
  while (obj && obj.$ref) {
    const parts = obj.$ref.replace(/^#\//, "").split("/").map(
      (p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
    obj = parts.reduce((o, p) => (o ? o[p] : undefined), doc);
  }
  return obj;
}

let input = "";
process.stdin.on("data", (c) => (input += c));
process.stdin.on("end", () => {
  const { doc, answers } = JSON.parse(input);
  const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });
  ajv.addSchema({ $id: "urn:waybill:doc", components: doc.components });
  const cache = new Map();
  const check = (key, schema, value) => {
    let validate = cache.get(key);
    if (!validate) {
      const text = JSON.stringify(schema).replace(/"#\/components\//g, '"urn:waybill:doc#/components/');
      validate = ajv.compile(JSON.parse(text));
      cache.set(key, validate);
    }
    return validate(value) ? null : ajv.errorsText(validate.errors, { separator: "; " });
  };
  const out = answers.map((a) => {
    if (a.schema) { // {"schema": {...}, "body": JSON text}: one schema of the document
      try { return check(JSON.stringify(a.schema), a.schema, JSON.parse(a.body)); }
      catch (e) { return `not JSON: ${e.message}`; }
    }
    const op = (doc.paths[a.path] || {})[a.method.toLowerCase()];
    if (!op) return `no operation ${a.method} ${a.path} in the document`;
    const resp = resolve(doc, op.responses[String(a.status)]);
    if (!resp) return `status ${a.status} is not documented for ${a.method} ${a.path}`;
    if (!resp.content) return a.body === "" ? null : `body where none is documented: ${a.body.slice(0, 200)}`;
    const ctype = (a.content_type || "").split(";")[0].trim();
    const media = resp.content[ctype];
    if (!media) return `content type ${ctype} not documented (${Object.keys(resp.content)})`;
    let value = a.body;
    if (ctype === "application/json") {
      try { value = JSON.parse(a.body); } catch (e) { return `not JSON: ${e.message}`; }
    }
    return check(`${a.path} ${a.method} ${a.status} ${ctype}`, media.schema, value);
  });
  process.stdout.write(JSON.stringify(out));
});
