-- 20-crm.lua -- the CRM sends a "your parcel arrived" email on delivery.
local function delivered(ev)
  if not ev.data.order_id then return end   -- nothing to attach the email to
  send("crm", {
    order     = ev.data.order_id,
    event     = "parcel_delivered",
    at        = ev.data.delivered_at or ev.created_at,
    signed_by = ev.data.signed_by,
  })
end

on("tracking.delivered", delivered)
on("shipment.delivered", delivered)
