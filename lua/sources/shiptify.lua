-- sources/shiptify.lua -- Shiptify webhooks (seeds/004): the event fields
-- with event_type, and the signature fields timestamp, token, signature
-- (left out of data). Only the event types Shiptify documents are mapped
-- (create_shipment, and the freight_unit_* ones); any other is
-- "<source>.<event_type>". A tracking update carries no status waybill
-- could read, so it is tracking.unknown. The token, not an id from here,
-- is the event's dedupe key (kept as a nonce).
-- SPDX-License-Identifier: MIT

-- globals read once: the environment is read-only behind a proxy once
-- the rules have loaded, and a local is cheaper than a proxied global
local type, tostring, tonumber, pairs, ipairs, select, next, string, math, table =
      type, tostring, tonumber, pairs, ipairs, select, next, string, math, table

local taxonomy = require "taxonomy"

local events = {
  create_shipment = "shipment.created",
  freight_unit_create_shipment = "shipment.created",
  freight_unit_cancel_shipment = "shipment.cancelled",
  freight_unit_update_tracking = "tracking.unknown",
}

local signature_fields = { timestamp = true, token = true, signature = true }

return function(body, headers, source)
  local data = {}
  for k, v in pairs(body) do
    if not signature_fields[k] then data[k] = v end
  end
  local t = taxonomy.map(source, events, taxonomy.text(body.event_type))
  local s = type(body.shipment) == "table" and body.shipment or body
  return {
    type = t,
    created_at = taxonomy.iso8601(body.timestamp),
    shipment = taxonomy.shipment(t, {
      tracking_number = taxonomy.pick(s, "tracking_number", "tracking_id"),
      carrier = taxonomy.pick(s, "carrier", "carrier_name"),
      status_detail = taxonomy.pick(s, "status"),
      reference = taxonomy.pick(s, "reference", "shipment_reference", "id"),
    }),
    data = data,
  }
end
