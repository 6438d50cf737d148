-- taxonomy.lua -- the one event taxonomy every carrier adapter maps into
-- (SPEC section 4), and the rule for types outside it: "<source>.<name>".
-- Used by lua/sources/*.lua: local taxonomy = require "taxonomy"
-- SPDX-License-Identifier: MIT

local M = {}

M.types = {
  "shipment.created", "shipment.cancelled", "shipment.delivered", "shipment.returned",
  "shipment.exception",
  "tracking.accepted", "tracking.in_transit", "tracking.out_for_delivery", "tracking.delivered",
  "tracking.failed_attempt", "tracking.exception", "tracking.unknown",
  "order.imported", "order.updated", "order.cancelled",
  "batch.completed", "rate.updated", "carrier.connected", "store.refreshed",
  "balance.low", "billing.adjustment",
}

local known = {}
for _, t in ipairs(M.types) do known[t] = true end

-- Whether t is a taxonomy type.
function M.known(t)
  return known[t] == true
end

-- The normalized type for a carrier's own name: the name itself when it is
-- in the taxonomy, "<source>.<name>" when not, "<source>.unknown" when the
-- carrier gave none.
function M.normalize(source, name)
  if type(name) == "number" then name = tostring(name) end
  if type(name) ~= "string" or name == "" then return source .. ".unknown" end
  if known[name] then return name end
  return source .. "." .. name
end

return M
