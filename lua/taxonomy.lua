-- taxonomy.lua -- the one event taxonomy every carrier adapter maps into
-- (SPEC section 4), the rule for types outside it ("<source>.<name>"), and
-- the one shipment table every carrier's parcel events carry.
-- Used by lua/sources/*.lua: local taxonomy = require "taxonomy"
-- SPDX-License-Identifier: MIT

-- globals read once: the environment is read-only behind a proxy once
-- the rules have loaded, and a local is cheaper than a proxied global
local type, tostring, tonumber, pairs, ipairs, select, next, string, math, table =
      type, tostring, tonumber, pairs, ipairs, select, next, string, math, table

local M = {}

M.types = {
  "shipment.created", "shipment.cancelled", "shipment.delivered", "shipment.returned",
  "shipment.exception",
  "tracking.accepted", "tracking.in_transit", "tracking.out_for_delivery",
  "tracking.available_for_pickup", "tracking.delivered", "tracking.failed_attempt",
  "tracking.exception", "tracking.estimate_changed", "tracking.unknown",
  "order.imported", "order.updated", "order.cancelled",
  "batch.completed", "batch.failed", "rate.updated", "carrier.connected", "store.refreshed",
  "report.completed", "balance.low", "billing.adjustment",
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

-- A path "a.b" split into its names, once per path (adapters use a few).
local path_parts = setmetatable({}, { __index = function(cache, path)
  local parts = {}
  for key in path:gmatch("[^.]+") do parts[#parts + 1] = key end
  cache[path] = parts
  return parts
end })

-- The first of t's fields (a path "a.b" reads t.a.b) that is text, or nil.
-- Called for every event: no pattern matching on the way (paths split once).
function M.pick(t, ...)
  if type(t) ~= "table" then return nil end
  for i = 1, select("#", ...) do
    local parts = path_parts[(select(i, ...))]
    local v = t
    for j = 1, #parts do
      v = type(v) == "table" and v[parts[j]] or nil
    end
    v = M.text(v)
    if v then return v end
  end
  return nil
end

-- Names one carrier goes by at different aggregators, to one code.
local carrier_alias = {
  dhlexpress = "dhl_express", dhl_express_worldwide = "dhl_express",
  stamps_com = "usps", endicia = "usps", usps_ship = "usps",
  fedex_ground = "fedex", fedex_express = "fedex",
  canadapost = "canada_post", royalmail = "royal_mail",
}

-- Codes already worked out, by the carrier's own text (a few hundred
-- names at most in practice; capped so a hostile sender cannot grow it).
local carrier_codes, ncarrier_codes = {}, 0

-- A shipping carrier's name as a lower-case code ("USPS" -> "usps",
-- "DHLExpress" -> "dhl_express"); nil when there is none.
function M.carrier_code(v)
  v = M.text(v)
  if not v then return nil end
  local code = carrier_codes[v]
  if code ~= nil then return code or nil end
  code = v:lower():gsub("[^%w]+", "_"):gsub("^_+", ""):gsub("_+$", "")
  if code == "" then code = false else code = carrier_alias[code] or code end
  if ncarrier_codes < 1024 then
    carrier_codes[v], ncarrier_codes = code, ncarrier_codes + 1
  end
  return code or nil
end

-- {city, state, postal_code, country} from what is text, or nil if none.
function M.location(city, state, postal_code, country)
  city, state, postal_code, country = M.text(city), M.text(state), M.text(postal_code),
                                      M.text(country)
  if not (city or state or postal_code or country) then return nil end
  return { city = city, state = state, postal_code = postal_code, country = country }
end

-- Per type: whether it is about a parcel by its name, and its status (the
-- type's last part); types repeat, so each is worked out once (capped:
-- "<source>.<name>" types come from carriers).
local type_infos, ntype_infos = {}, 0

local function type_info(t)
  local info = type_infos[t]
  if info then return info end
  info = { parcel = t:find("^shipment%.") ~= nil or t:find("^tracking%.") ~= nil,
           status = t:match("([^.]+)$") }
  if ntype_infos < 1024 then
    type_infos[t], ntype_infos = info, ntype_infos + 1
  end
  return info
end

-- The shipment table (SPEC section 4) of an event of type t, from f's
-- fields as the adapter found them: the same names for every carrier,
-- status the type's last part. nil for an event not about a parcel (no
-- tracking number and not a shipment.* or tracking.* type).
function M.shipment(t, f)
  local s = {
    tracking_number = M.text(f.tracking_number),
    carrier = M.carrier_code(f.carrier),
    status_detail = M.text(f.status_detail),
    occurred_at = M.text(f.occurred_at),
    location = type(f.location) == "table" and next(f.location) and f.location or nil,
    estimated_delivery = M.text(f.estimated_delivery),
    reference = M.text(f.reference),
  }
  local info = type_info(t)
  if not s.tracking_number and not info.parcel then
    return nil
  end
  s.status = info.status
  return s
end

-- The latest of the text times at key in list's entries (RFC 3339 texts in
-- one form compare as text), and that entry; nil when none has one.
function M.latest(list, key)
  local best, entry
  if type(list) ~= "table" then return nil end
  for _, e in ipairs(list) do
    local t = type(e) == "table" and M.text(e[key])
    if t and (not best or t > best) then best, entry = t, e end
  end
  return best, entry
end

return M
