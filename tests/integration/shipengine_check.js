// shipengine_check.js -- validates real answers of waybill's
// /v1/environment/webhooks routes against ShipEngine's own published
// OpenAPI description (npm shipengine-openapi), with ajv: what a client
// generated from that description accepts.
// stdin: [{"operation": "create_webhook", "status": 200, "content_type",
// "body"}, ...]; an answer may instead name a schema of the description
// ({"schema": "error_response_body", "body"}: for a status ShipEngine does
// not list, such as 401 or 422) or check a request body ({"operation",
// "request": {...}}). stdout: one JSON array, per item null (valid) or the
// reason it is not.
//
// One adaptation, and only one: ShipEngine's schemas put
// "additionalProperties": false beside an "allOf" that holds the properties
// (create_webhook_response_body, get_webhook_by_id_response_body). Read
// literally by JSON Schema that forbids every property, so no answer could
// pass; code generators merge the allOf, meaning "exactly these
// properties". JSON Schema 2020-12 says that with "unevaluatedProperties":
// false, which sees the properties the allOf evaluates, so that is what the
// check uses there. Nothing else of the description is changed.
"use strict";
const Ajv2020 = require("ajv/dist/2020");
const doc = require("shipengine-openapi/openapi.json");

function adapt(o) {
  if (Array.isArray(o)) return o.map(adapt);
  if (!o || typeof o !== "object") return o;
  const out = {};
  for (const [k, v] of Object.entries(o)) out[k] = adapt(v);
  if (out.additionalProperties === false && out.allOf && !out.properties) {
    delete out.additionalProperties;
    out.unevaluatedProperties = false;
  }
  return out;
}

function operation(id) {
  for (const [path, item] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(item))
      if (op && op.operationId === id) return { path, method, op };
  return null;
}

let input = "";
process.stdin.on("data", (c) => (input += c));
process.stdin.on("end", () => {
  const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: false });
  const check = (schema, value) => {
    const validate = ajv.compile(adapt(schema));
    return validate(value) ? null : ajv.errorsText(validate.errors, { separator: "; " });
  };
  const parse = (text) => {
    try { return [JSON.parse(text), null]; } catch (e) { return [null, `not JSON: ${e.message}`]; }
  };
  const out = JSON.parse(input).map((a) => {
    if (a.schema) {
      const schema = doc.components.schemas[a.schema];
      if (!schema) return `no schema ${a.schema} in ShipEngine's description`;
      const [value, err] = parse(a.body);
      return err || check(schema, value);
    }
    const found = operation(a.operation);
    if (!found) return `no operation ${a.operation} in ShipEngine's description`;
    if (a.request !== undefined)
      return check(found.op.requestBody.content["application/json"].schema, a.request);
    const resp = found.op.responses[String(a.status)];
    if (!resp) return `status ${a.status} is not documented for ${a.operation}`;
    const ctype = (a.content_type || "").split(";")[0].trim();
    if (!resp.content) return a.body === "" ? null : `a body where none is documented`;
    if (a.body === "" && String(a.status) === "204") return null; // empty_response_body
    const media = resp.content[ctype];
    if (!media) return `content type ${ctype} not documented (${Object.keys(resp.content)})`;
    const [value, err] = parse(a.body);
    return err || check(media.schema, value);
  });
  process.stdout.write(JSON.stringify(out));
});
