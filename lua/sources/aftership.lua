-- sources/aftership.lua -- AfterShip tracking webhooks (seeds/001):
-- { event, event_id, msg = { id, tracking_number, slug, tag, subtag,
-- checkpoints, ... }, ts }. The webhook's event names the kind:
-- tracking_update is typed by the tag, or the subtag where it says more (a
-- return to sender); edd_revise is an estimate change; any other event is
-- "<source>.<event>". The event id is event_id (older payloads without one
-- fall back to the body's digest).
-- SPDX-License-Identifier: MIT

-- globals read once: the environment is read-only behind a proxy once
-- the rules have loaded, and a local is cheaper than a proxied global
local type, tostring, tonumber, pairs, ipairs, select, next, string, math, table =
      type, tostring, tonumber, pairs, ipairs, select, next, string, math, table

local taxonomy = require "taxonomy"

local tags = {
  Pending = "tracking.unknown",            -- added, no carrier information yet
  InfoReceived = "tracking.accepted",      -- the carrier has the shipment's details
  InTransit = "tracking.in_transit",
  OutForDelivery = "tracking.out_for_delivery",
  AttemptFail = "tracking.failed_attempt",
  Delivered = "tracking.delivered",
  AvailableForPickup = "tracking.available_for_pickup",
  Exception = "tracking.exception",
  Expired = "tracking.exception",          -- no carrier update for 30 days
}

local subtags = {
  Exception_010 = "shipment.returned",     -- being returned to sender
  Exception_011 = "shipment.returned",     -- returned to sender
}

local events = {
  edd_revise = "tracking.estimate_changed",
}

return function(body, headers, source)
  local msg = body.msg
  if type(msg) ~= "table" then msg = {} end
  local event = taxonomy.text(body.event)
  local tag, subtag = taxonomy.text(msg.tag), taxonomy.text(msg.subtag)
  local t
  if event == nil or event == "tracking_update" then
    t = subtags[subtag or ""] or taxonomy.map(source, tags, tag)
  else
    t = taxonomy.map(source, events, event)
  end
  local last_time, last = taxonomy.latest(msg.checkpoints, "checkpoint_time")
  last = last or {}
  local created_at = taxonomy.iso8601(body.ts) or taxonomy.text(msg.updated_at)
  return {
    id = taxonomy.text(body.event_id),
    type = t,
    created_at = created_at,
    shipment = taxonomy.shipment(t, {
      tracking_number = msg.tracking_number,
      carrier = msg.slug,
      status_detail = subtag,
      occurred_at = last_time,
      location = taxonomy.location(last.city, last.state, last.postal_code,
                                   last.country_region or last.country_iso3),
      estimated_delivery = taxonomy.pick(msg, "latest_estimated_delivery.datetime",
                                         "expected_delivery",
                                         "courier_estimated_delivery_date.estimated_delivery_date"),
      reference = taxonomy.pick(msg, "order_number", "order_id"),
    }),
    data = next(msg) and msg or body,
  }
end
