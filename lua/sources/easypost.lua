-- sources/easypost.lua -- EasyPost events: { id, object = "Event",
-- description = "tracker.updated", result = {...}, created_at }. Tracker
-- events are typed by result.status; batch events by the batch's state
-- (done, failed, or still working: the catch-all); refunds and invoices
-- are billing adjustments; reports that are ready are report.completed.
-- Everything else (claims, insurance, payments, scan forms, a report not
-- ready) has no honest taxonomy type and becomes "<source>.<description>".
-- SPDX-License-Identifier: MIT

-- globals read once: the environment is read-only behind a proxy once
-- the rules have loaded, and a local is cheaper than a proxied global
local type, tostring, tonumber, pairs, ipairs, select, next, string, math, table =
      type, tostring, tonumber, pairs, ipairs, select, next, string, math, table

local taxonomy = require "taxonomy"

local tracker = {
  pre_transit = "tracking.accepted",
  in_transit = "tracking.in_transit",
  out_for_delivery = "tracking.out_for_delivery",
  available_for_pickup = "tracking.available_for_pickup",
  delivered = "tracking.delivered",
  return_to_sender = "shipment.returned",
  failure = "tracking.exception",
  error = "tracking.exception",
  cancelled = "shipment.cancelled",
  unknown = "tracking.unknown",
}

local batch_states = {
  purchased = "batch.completed",
  label_generated = "batch.completed",
  creation_failed = "batch.failed",
  purchase_failed = "batch.failed",
}

local events = {
  ["refund.successful"] = "billing.adjustment",
  ["shipment.invoice.created"] = "billing.adjustment",
  ["shipment.invoice.updated"] = "billing.adjustment",
  ["report.available"] = "report.completed",
  ["report.empty"] = "report.completed",
}

return function(body, headers, source)
  local desc = taxonomy.text(body.description)
  local result = type(body.result) == "table" and body.result or nil
  local r = result or {}
  local tracking = desc == "tracker.updated" or desc == "tracker.created"
  local t
  if tracking and result then
    t = tracker[taxonomy.text(r.status) or "unknown"] or "tracking.unknown"
  elseif (desc == "batch.created" or desc == "batch.updated") and result then
    t = batch_states[taxonomy.text(r.state) or ""] or taxonomy.normalize(source, desc)
  else
    t = taxonomy.map(source, events, desc)
  end
  local shipment
  if tracking or taxonomy.text(r.tracking_code) then
    local last_time, last = taxonomy.latest(r.tracking_details, "datetime")
    local loc = last and type(last.tracking_location) == "table" and last.tracking_location or {}
    shipment = taxonomy.shipment(t, {
      tracking_number = r.tracking_code,
      carrier = r.carrier,
      status_detail = taxonomy.text(r.status_detail) or (not tracking and taxonomy.text(r.status))
          or nil,
      occurred_at = last_time,
      location = taxonomy.location(loc.city, loc.state, loc.zip, loc.country),
      estimated_delivery = r.est_delivery_date,
      reference = taxonomy.pick(r, "reference", "shipment_id"),
    })
  end
  return {
    id = taxonomy.text(body.id),
    type = t,
    created_at = taxonomy.text(body.created_at),
    shipment = shipment,
    data = result or body,
  }
end
