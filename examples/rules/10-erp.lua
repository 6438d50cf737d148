-- Every shipment and tracking event goes to the ERP as it came in.
on("shipment.*", { "erp" })
on("tracking.*", { "erp" })

-- Orders: the ERP only needs the id and the new state.
on("order.*", function(ev)
  send("erp", { order = ev.data.order_id, event = ev.type, at = ev.created_at })
end)
