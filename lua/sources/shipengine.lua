-- sources/shipengine.lua -- ShipEngine webhooks (seeds/003):
-- { resource_url, resource_type, data }. API_TRACK carries a tracking
-- status code (AC IT DE EX UN AT NY SP) that names the tracking.* type; the
-- other resource types map one to one. ShipEngine sends no event id: the
-- body's digest is the dedupe key.
-- SPDX-License-Identifier: MIT

local taxonomy = require "taxonomy"

local resources = {
  API_BATCH = "batch.completed",
  API_RATE = "rate.updated",
  API_CARRIER_CONNECTED = "carrier.connected",
  API_SALES_ORDERS_IMPORTED = "order.imported",
  API_ORDER_SOURCE_REFRESH_COMPLETE = "store.refreshed",
  API_ORDER_SOURCE_REFRESH = "store.refreshed",
}

local track = {
  AC = "tracking.accepted",
  IT = "tracking.in_transit",
  DE = "tracking.delivered",
  EX = "tracking.exception",
  UN = "tracking.unknown",
  AT = "tracking.failed_attempt",
  NY = "tracking.unknown",   -- not yet in the carrier's system
  SP = "tracking.delivered", -- delivered to a service point
}

return function(body, headers, source)
  local kind = taxonomy.text(body.resource_type)
  local data = body.data
  local t
  if kind == "API_TRACK" then
    local code = type(data) == "table" and taxonomy.text(data.status_code)
    t = code and track[code] or "tracking.unknown"
  else
    t = taxonomy.map(source, resources, kind)
  end
  local created_at
  if type(data) == "table" and data.occurred_at then created_at = taxonomy.text(data.occurred_at) end
  return {
    type = t,
    created_at = created_at,
    data = type(data) == "table" and data or body,
  }
end
