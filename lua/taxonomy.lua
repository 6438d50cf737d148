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

-- A carrier's value as text: non-empty strings as they are, integers as
-- decimal text; nil for anything else.
function M.text(v)
  if type(v) == "string" and v ~= "" then return v end
  if math.type(v) == "integer" then return tostring(v) end
  return nil
end

-- RFC 3339 UTC text for a Unix time in seconds, or in milliseconds when
-- it is past 10^12 (as Shiptify sends); nil when t is not a number.
function M.iso8601(t)
  if type(t) == "string" and t:match("^%d+$") then t = tonumber(t) end
  if type(t) ~= "number" or t ~= t or t < 0 or t > 1e15 then return nil end
  if t > 1e12 then t = t / 1000 end
  local secs = math.floor(t)
  local days, rem = secs // 86400, secs % 86400
  -- civil_from_days (Howard Hinnant), for days since 1970-01-01
  local z = days + 719468
  local era = z // 146097
  local doe = z - era * 146097
  local yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
  local mp = (5 * doy + 2) // 153
  local d = doy - (153 * mp + 2) // 5 + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return string.format("%04d-%02d-%02dT%02d:%02d:%02dZ", y, m, d, rem // 3600, rem % 3600 // 60,
                       rem % 60)
end

-- The type for a carrier name looked up in map: the mapped taxonomy type,
-- else normalize(source, name).
function M.map(source, map, name)
  if name ~= nil and map[name] then return map[name] end
  return M.normalize(source, name)
end

return M
