-- 40-warehouse.lua -- tracking updates go to the warehouse system in
-- batches (its window is 1m, see waybill.lua): one POST per window with
-- {"type":"batch","window_start","window_end","count","events":[...]}.
on("tracking.*", function(ev)
  local s = ev.shipment or {}
  batch("warehouse", {
    tracking = s.tracking_number,
    status   = ev.type,
    carrier  = s.carrier,
    at       = s.occurred_at or ev.created_at,
  })
end)
