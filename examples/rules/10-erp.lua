-- 10-erp.lua -- what the ERP gets.

-- Every shipment event, as it came in (normalized), from any carrier.
on("shipment.*", { "erp" })

-- Delivered parcels close the order in the ERP: a compact record, not the
-- whole event. ev.shipment has the same fields for every carrier.
on("tracking.delivered", function(ev)
  local s = ev.shipment or {}
  send("erp", {
    order     = s.reference,
    tracking  = s.tracking_number,
    carrier   = s.carrier,
    delivered = s.occurred_at or ev.created_at,
    source    = ev.source,
  })
end)

-- Orders imported from a store (ShipEngine sales_orders_imported and the
-- like): the ERP only needs the id and the new state.
on("order.*", function(ev)
  send("erp", { order = ev.data.order_id, event = ev.type, at = ev.created_at })
end)
