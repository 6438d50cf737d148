-- sources/stripe.lua -- bodies signed Stripe-style (t=,v1=): Stripe's own
-- { id, type, created, data = { object } } and Shippo's { event, data }
-- (Shippo signs with Shippo-Auth-Signature). Shippo's track_updated is
-- typed by data.tracking_status.status.
-- SPDX-License-Identifier: MIT

local taxonomy = require "taxonomy"

local shippo_track = {
  PRE_TRANSIT = "tracking.accepted",
  TRANSIT = "tracking.in_transit",
  DELIVERED = "tracking.delivered",
  RETURNED = "shipment.returned",
  FAILURE = "tracking.exception",
  UNKNOWN = "tracking.unknown",
}

local events = {
  transaction_created = "shipment.created",
  batch_purchased = "batch.completed",
}

return function(body, headers, source)
  local data = body.data
  if type(data) ~= "table" then data = body end
  local name = taxonomy.text(body.type) or taxonomy.text(body.event)
  local t
  if name == "track_updated" then
    local ts = type(data.tracking_status) == "table" and data.tracking_status or {}
    t = shippo_track[taxonomy.text(ts.status) or "UNKNOWN"] or "tracking.unknown"
  else
    t = taxonomy.map(source, events, name)
  end
  if type(data.object) == "table" and body.type then data = data.object end
  return {
    id = taxonomy.text(body.id),
    type = t,
    created_at = taxonomy.iso8601(body.created) or taxonomy.text(body.created_at),
    data = data,
  }
end
