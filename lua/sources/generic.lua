-- sources/generic.lua -- the adapter for carriers without their own: the
-- id is body.id; the type is body.type, body.event or body.event_type (kept
-- when in the taxonomy, else "<source>.<name>", "<source>.unknown" when
-- absent); data is body.data when it is a table, else the whole body.
-- SPDX-License-Identifier: MIT

local taxonomy = require "taxonomy"

local function text(v)
  if type(v) == "string" and v ~= "" then return v end
  return nil
end

return function(body, headers, source)
  local id = body.id
  if type(id) ~= "string" and type(id) ~= "number" then id = nil end
  local kind = text(body.type) or text(body.event) or text(body.event_type)
  local data = body.data
  if type(data) ~= "table" then data = body end
  return {
    id = id,
    type = taxonomy.normalize(source, kind),
    created_at = text(body.created_at),
    data = data,
  }
end
