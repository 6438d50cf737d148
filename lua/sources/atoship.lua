-- sources/atoship.lua -- atoship's envelope (seeds/000) is waybill's own:
-- { id, type, created_at, data, metadata }. Types outside the taxonomy
-- become "<source>.<type>".
-- SPDX-License-Identifier: MIT

local taxonomy = require "taxonomy"

return function(body, headers, source)
  local id, kind = body.id, body.type
  if type(id) ~= "string" and type(id) ~= "number" then id = nil end
  if type(kind) ~= "string" then kind = nil end
  local created_at = body.created_at
  if type(created_at) ~= "string" then created_at = nil end
  return {
    id = id,
    type = taxonomy.normalize(source, kind),
    created_at = created_at,
    data = body.data,
  }
end
