-- 40-warehouse.lua -- tracking updates go to the warehouse system in
-- batches (its window is 1m, see waybill.lua): one POST per window with
-- {"type":"batch","window_start","window_end","count","events":[...]}.
on("tracking.*", function(ev)
  batch("warehouse", {
    tracking = ev.data.tracking_number,
    status   = ev.type,
    carrier  = ev.data.carrier,
    at       = ev.created_at,
  })
end)
