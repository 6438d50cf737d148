-- sources/shippo.lua -- Shippo webhooks: { event, test, data }, signed
-- Stripe-style in Shippo-Auth-Signature (verify = "shippo").
-- track_updated is typed by data.tracking_status.status, or its substatus
-- where that says more (out for delivery, an attempt, a pickup point, a
-- return); a transaction (a label purchase) by its status: SUCCESS is
-- shipment.created, REFUNDED shipment.cancelled, anything else (QUEUED,
-- WAITING, ERROR, a refund pending or rejected) "<source>.<event>";
-- batch_purchased is batch.completed. Shippo sends no event id: the id is
-- made from the object the event is about (a tracking status, a
-- transaction and its update time, a batch) so a retry is a duplicate.
-- SPDX-License-Identifier: MIT

-- globals read once: the environment is read-only behind a proxy once
-- the rules have loaded, and a local is cheaper than a proxied global
local type, tostring, tonumber, pairs, ipairs, select, next, string, math, table =
      type, tostring, tonumber, pairs, ipairs, select, next, string, math, table

local taxonomy = require "taxonomy"

local track_status = {
  PRE_TRANSIT = "tracking.accepted",
  TRANSIT = "tracking.in_transit",
  DELIVERED = "tracking.delivered",
  RETURNED = "shipment.returned",
  FAILURE = "tracking.exception",
  UNKNOWN = "tracking.unknown",
}

local substatus = {
  out_for_delivery = "tracking.out_for_delivery",
  delivery_attempted = "tracking.failed_attempt",
  pickup_available = "tracking.available_for_pickup",
  return_to_sender = "shipment.returned",
}

local transaction_status = {
  SUCCESS = "shipment.created",
  REFUNDED = "shipment.cancelled",
}

local events = {
  batch_purchased = "batch.completed",
}

local function track(body, data, source)
  local ts = type(data.tracking_status) == "table" and data.tracking_status or {}
  local sub = type(ts.substatus) == "table" and taxonomy.text(ts.substatus.code) or nil
  local t = substatus[sub or ""] or track_status[taxonomy.text(ts.status) or "UNKNOWN"]
      or "tracking.unknown"
  local loc = type(ts.location) == "table" and ts.location or {}
  local id = taxonomy.text(ts.object_id)
  return {
    id = id and "track_updated:" .. id,
    type = t,
    created_at = taxonomy.text(ts.object_created) or taxonomy.text(ts.status_date),
    shipment = taxonomy.shipment(t, {
      tracking_number = data.tracking_number,
      carrier = data.carrier,
      status_detail = sub,
      occurred_at = ts.status_date,
      location = taxonomy.location(loc.city, loc.state, loc.zip, loc.country),
      estimated_delivery = data.eta,
      reference = data.metadata,
    }),
    data = data,
  }
end

local function transaction(name, data, source)
  local status = taxonomy.text(data.status)
  local t = transaction_status[status or ""] or taxonomy.normalize(source, name)
  local id = taxonomy.text(data.object_id)
  local updated = taxonomy.text(data.object_updated) or taxonomy.text(data.object_created)
  local rate = type(data.rate) == "table" and data.rate or {}
  return {
    id = id and name .. ":" .. id .. ":" .. (status or "") .. ":" .. (updated or ""),
    type = t,
    created_at = updated,
    shipment = taxonomy.shipment(t, {
      tracking_number = data.tracking_number,
      carrier = rate.provider,
      status_detail = status,
      estimated_delivery = data.eta,
      reference = data.metadata,
    }),
    data = data,
  }
end

return function(body, headers, source)
  local name = taxonomy.text(body.event)
  local data = body.data
  if name == "track_updated" and type(data) == "table" then
    return track(body, data, source)
  elseif (name == "transaction_created" or name == "transaction_updated")
      and type(data) == "table" then
    return transaction(name, data, source)
  end
  local text = taxonomy.text(data) -- batches: "batch <id> created" and the like
  return {
    id = text and name and name .. ":" .. text,
    type = taxonomy.map(source, events, name),
    data = type(data) == "table" and data or body,
  }
end
