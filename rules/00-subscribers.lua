-- waybill's default rules: what a fresh install does.
-- Every event goes, unchanged, to the subscriptions registered for its type
-- through the admin API (POST /v1/environment/webhooks). With no
-- subscription for a type, the event is stored as "unrouted": visible in
-- the admin API and replayable once a rule or subscription wants it.
on("*", function(ev)
  send(subscribers(ev.type), ev)
end)
