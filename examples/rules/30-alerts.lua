-- 30-alerts.lua -- exceptions (lost, damaged, address problems) page the
-- on-call person, with a short text and a header for their alert router.
local function alert(ev)
  local d = ev.data
  send("alerts", {
    text   = string.format("%s: %s %s (%s)", ev.type, d.carrier or "?",
                           d.tracking_number or "?", d.exception_reason or d.status or "no reason given"),
    order  = d.order_id,
    source = ev.source,
  }, { headers = { ["X-Alert-Severity"] = ev.type == "tracking.failed_attempt" and "low" or "high" } })
end

on("shipment.exception", alert)
on("tracking.exception", alert)
on("tracking.failed_attempt", alert)
