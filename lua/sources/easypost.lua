-- sources/easypost.lua -- EasyPost events: { id, object = "Event",
-- description = "tracker.updated", result = {...}, created_at }. Tracker
-- events are typed by result.status; batch and refund events map to the
-- taxonomy; anything else becomes "<source>.<description>".
-- SPDX-License-Identifier: MIT

local taxonomy = require "taxonomy"

local tracker = {
  pre_transit = "tracking.accepted",
  in_transit = "tracking.in_transit",
  out_for_delivery = "tracking.out_for_delivery",
  available_for_pickup = "tracking.out_for_delivery",
  delivered = "tracking.delivered",
  return_to_sender = "shipment.returned",
  failure = "tracking.exception",
  error = "tracking.exception",
  cancelled = "shipment.cancelled",
  unknown = "tracking.unknown",
}

local events = {
  ["batch.updated"] = "batch.completed",
  ["shipment.invoice.created"] = "billing.adjustment",
  ["shipment.invoice.updated"] = "billing.adjustment",
}

return function(body, headers, source)
  local desc = taxonomy.text(body.description)
  local result = type(body.result) == "table" and body.result or nil
  local t
  if (desc == "tracker.updated" or desc == "tracker.created") and result then
    t = tracker[taxonomy.text(result.status) or "unknown"] or "tracking.unknown"
  else
    t = taxonomy.map(source, events, desc)
  end
  return {
    id = taxonomy.text(body.id),
    type = t,
    created_at = taxonomy.text(body.created_at),
    data = result or body,
  }
end
