-- 50-subscribers.lua -- events also go, unchanged, to the subscriptions made
-- through the admin API (POST /v1/environment/webhooks; try
-- `python3 examples/receiver.py subscribe "tracking.*"`).
on("*", function(ev)
  send(subscribers(ev.type), ev)
end)
