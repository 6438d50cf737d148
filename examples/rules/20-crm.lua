-- 20-crm.lua -- the CRM sends a "your parcel arrived" email on delivery.
local function delivered(ev)
  local s = ev.shipment or {}
  if not s.reference then return end   -- nothing to attach the email to
  send("crm", {
    order     = s.reference,
    tracking  = s.tracking_number,
    event     = "parcel_delivered",
    at        = s.occurred_at or ev.created_at,
  })
end

on("tracking.delivered", delivered)
on("shipment.delivered", delivered)
