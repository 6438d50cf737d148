-- sources/standard.lua -- Standard Webhooks payloads: { type, timestamp,
-- data }. The event id is the webhook-id header (server.c uses it when the
-- adapter gives none).
-- SPDX-License-Identifier: MIT

local taxonomy = require "taxonomy"

return function(body, headers, source)
  local data = body.data
  if type(data) ~= "table" then data = body end
  return {
    type = taxonomy.normalize(source, taxonomy.text(body.type) or taxonomy.text(body.event_type)),
    created_at = taxonomy.text(body.timestamp),
    data = data,
  }
end
