-- 30-alerts.lua -- exceptions (lost, damaged, address problems) page the
-- on-call person, with a short text and a header for their alert router.
local function alert(ev)
  local s = ev.shipment or {}
  send("alerts", {
    text   = string.format("%s: %s %s (%s)", ev.type, s.carrier or "?",
                           s.tracking_number or "?", s.status_detail or "no detail given"),
    order  = s.reference,
    source = ev.source,
  }, { headers = { ["X-Alert-Severity"] = ev.type == "tracking.failed_attempt" and "low" or "high" } })
end

on("shipment.exception", alert)
on("tracking.exception", alert)
on("tracking.failed_attempt", alert)
