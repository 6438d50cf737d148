-- sources/shipengine.lua -- ShipEngine (ShipStation API) webhooks
-- (seeds/003): { resource_url, resource_type, data }. A tracking event
-- (API_TRACK, or ShipStation v2's TRACK_EVENT_V2) carries a status code
-- (AC IT DE EX UN AT NY SP) that names the tracking.* type and the
-- tracking events whose latest time is the event's; the other resource
-- types map one to one. ShipEngine sends no event id: the body's digest is
-- the dedupe key.
-- SPDX-License-Identifier: MIT

-- globals read once: the environment is read-only behind a proxy once
-- the rules have loaded, and a local is cheaper than a proxied global
local type, tostring, tonumber, pairs, ipairs, select, next, string, math, table =
      type, tostring, tonumber, pairs, ipairs, select, next, string, math, table

local taxonomy = require "taxonomy"

local resources = {
  API_BATCH = "batch.completed",
  BATCH_PROCESSED_V2 = "batch.completed",
  API_RATE = "rate.updated",
  API_CARRIER_CONNECTED = "carrier.connected",
  API_SALES_ORDERS_IMPORTED = "order.imported",
  API_ORDER_SOURCE_REFRESH_COMPLETE = "store.refreshed",
  API_ORDER_SOURCE_REFRESH = "store.refreshed",
  API_REPORT_COMPLETE = "report.completed",
}

local tracking = { API_TRACK = true, TRACK_EVENT_V2 = true }

local track = {
  AC = "tracking.accepted",
  IT = "tracking.in_transit",
  DE = "tracking.delivered",
  EX = "tracking.exception",
  UN = "tracking.unknown",
  AT = "tracking.failed_attempt",
  NY = "tracking.unknown",                  -- not yet in the carrier's system
  SP = "tracking.available_for_pickup",     -- delivered to a collection point
}

return function(body, headers, source)
  local kind = taxonomy.text(body.resource_type)
  local data = body.data
  local d = type(data) == "table" and data or {}
  local t, shipment, created_at
  if tracking[kind] then
    local code = taxonomy.text(d.status_code)
    t = code and track[code] or "tracking.unknown"
    local last_time, last = taxonomy.latest(d.events, "occurred_at")
    last = last or {}
    created_at = last_time
    local url = taxonomy.text(body.resource_url) or ""
    shipment = taxonomy.shipment(t, {
      tracking_number = d.tracking_number,
      carrier = taxonomy.text(d.carrier_code) or url:match("[?&]carrier_code=([%w_%-]+)"),
      status_detail = taxonomy.text(d.status_detail_code) or taxonomy.text(d.carrier_status_code),
      occurred_at = last_time or taxonomy.text(d.actual_delivery_date),
      location = taxonomy.location(last.city_locality, last.state_province, last.postal_code,
                                   last.country_code),
      estimated_delivery = d.estimated_delivery_date,
      reference = taxonomy.pick(d, "label_id", "shipment_id"),
    })
  else
    t = taxonomy.map(source, resources, kind)
  end
  return {
    type = t,
    created_at = created_at,
    shipment = shipment,
    data = type(data) == "table" and data or body,
  }
end
