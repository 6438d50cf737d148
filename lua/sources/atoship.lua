-- sources/atoship.lua -- atoship's envelope (seeds/000) is waybill's own:
-- { id, type, created_at, data = { tracking_number, carrier, order_id,
-- ... }, metadata }. Types outside the taxonomy become "<source>.<type>".
-- SPDX-License-Identifier: MIT

-- globals read once: the environment is read-only behind a proxy once
-- the rules have loaded, and a local is cheaper than a proxied global
local type, tostring, tonumber, pairs, ipairs, select, next, string, math, table =
      type, tostring, tonumber, pairs, ipairs, select, next, string, math, table

local taxonomy = require "taxonomy"

return function(body, headers, source)
  local id, kind = body.id, body.type
  if type(id) ~= "string" and type(id) ~= "number" then id = nil end
  if type(kind) ~= "string" then kind = nil end
  local t = taxonomy.normalize(source, kind)
  local d = type(body.data) == "table" and body.data or {}
  local loc = type(d.location) == "table" and d.location or {}
  return {
    id = id,
    type = t,
    created_at = taxonomy.text(body.created_at),
    shipment = taxonomy.shipment(t, {
      tracking_number = d.tracking_number,
      carrier = d.carrier,
      status_detail = taxonomy.pick(d, "status_detail", "exception_reason", "status"),
      occurred_at = taxonomy.pick(d, "occurred_at", "delivered_at"),
      location = taxonomy.location(loc.city, loc.state, loc.postal_code, loc.country),
      estimated_delivery = taxonomy.pick(d, "estimated_delivery", "estimated_delivery_date"),
      reference = taxonomy.pick(d, "order_id", "order_reference", "reference"),
    }),
    data = body.data,
  }
end
