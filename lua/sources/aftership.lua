-- sources/aftership.lua -- AfterShip tracking webhooks (seeds/001):
-- { event, event_id, msg = { id, tracking_number, tag, subtag, ... }, ts }.
-- The tracking tag names the type (tracking.*); the event id is event_id
-- (older payloads without one fall back to the body's digest).
-- SPDX-License-Identifier: MIT

local taxonomy = require "taxonomy"

local tags = {
  Pending = "tracking.unknown",            -- added, no carrier information yet
  InfoReceived = "tracking.accepted",      -- the carrier has the shipment's details
  InTransit = "tracking.in_transit",
  OutForDelivery = "tracking.out_for_delivery",
  AttemptFail = "tracking.failed_attempt",
  Delivered = "tracking.delivered",
  AvailableForPickup = "tracking.out_for_delivery", -- waiting at a pickup point: the last step
  Exception = "tracking.exception",
  Expired = "tracking.exception",          -- no carrier update for 30 days
}

return function(body, headers, source)
  local msg = body.msg
  if type(msg) ~= "table" then msg = {} end
  local tag = taxonomy.text(msg.tag)
  return {
    id = taxonomy.text(body.event_id),
    type = taxonomy.map(source, tags, tag),
    created_at = taxonomy.text(msg.updated_at) or taxonomy.iso8601(body.ts),
    data = next(msg) and msg or body,
  }
end
