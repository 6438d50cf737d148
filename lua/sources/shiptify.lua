-- sources/shiptify.lua -- Shiptify webhooks (seeds/004): the event fields
-- with event_type, and the signature fields timestamp, token, signature
-- (left out of data). The token, not an id from here, is the event's
-- dedupe key (server.c keeps it as a nonce).
-- SPDX-License-Identifier: MIT

local taxonomy = require "taxonomy"

local events = {
  create_shipment = "shipment.created",
  confirm_shipment = "shipment.created",
  cancel_shipment = "shipment.cancelled",
  delete_shipment = "shipment.cancelled",
  deliver_shipment = "shipment.delivered",
  delivery_notification = "shipment.delivered",
  return_shipment = "shipment.returned",
  incident = "shipment.exception",
  shipment_exception = "shipment.exception",
  pickup_shipment = "tracking.accepted",
  update_tracking = "tracking.in_transit",
  tracking_update = "tracking.in_transit",
}

local signature_fields = { timestamp = true, token = true, signature = true }

return function(body, headers, source)
  local data = {}
  for k, v in pairs(body) do
    if not signature_fields[k] then data[k] = v end
  end
  return {
    type = taxonomy.map(source, events, taxonomy.text(body.event_type)),
    created_at = taxonomy.iso8601(body.timestamp),
    data = data,
  }
end
