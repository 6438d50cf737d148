-- sources/generic.lua -- the adapter for sources without a carrier of
-- their own (and for envelopes such as Standard Webhooks' {type,
-- timestamp, data} or Stripe's {id, type, created, data}): the id is
-- body.id; the type is body.type, body.event or body.event_type (kept
-- when in the taxonomy, else "<source>.<name>", "<source>.unknown" when
-- absent); created_at is body.created_at, body.timestamp or body.created
-- (Unix seconds); data is body.data when it is a table, else the whole
-- body; the shipment fields are read under their usual names in data.
-- SPDX-License-Identifier: MIT

-- globals read once: the environment is read-only behind a proxy once
-- the rules have loaded, and a local is cheaper than a proxied global
local type, tostring, tonumber, pairs, ipairs, select, next, string, math, table =
      type, tostring, tonumber, pairs, ipairs, select, next, string, math, table

local taxonomy = require "taxonomy"

return function(body, headers, source)
  local id = body.id
  if type(id) ~= "string" and type(id) ~= "number" then id = nil end
  local kind = taxonomy.pick(body, "type", "event", "event_type")
  local t = taxonomy.normalize(source, kind)
  local data = body.data
  if type(data) ~= "table" then data = body end
  return {
    id = id,
    type = t,
    created_at = taxonomy.pick(body, "created_at", "timestamp") or taxonomy.iso8601(body.created),
    shipment = taxonomy.shipment(t, {
      tracking_number = taxonomy.pick(data, "tracking_number", "tracking_code"),
      carrier = taxonomy.pick(data, "carrier", "carrier_code", "slug"),
      status_detail = taxonomy.pick(data, "status_detail", "status"),
      occurred_at = taxonomy.pick(data, "occurred_at"),
      estimated_delivery = taxonomy.pick(data, "estimated_delivery", "estimated_delivery_date"),
      reference = taxonomy.pick(data, "order_id", "reference"),
    }),
    data = data,
  }
end
