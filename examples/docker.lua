-- waybill in a container (examples/Dockerfile): /etc/waybill/waybill.lua.
-- Mount your own over it (docker run -v ./waybill.lua:/etc/waybill/waybill.lua:ro
-- -v ./rules:/etc/waybill/rules:ro) or pass the secrets it reads:
--   docker run -p 8080:8080 -p 127.0.0.1:8081:8081 -v waybill:/var/lib/waybill \
--     -e WAYBILL_ADMIN_TOKEN=... -e ATOSHIP_SECRET=... waybill
-- Endpoints come from subscriptions (POST /v1/environment/webhooks) and the
-- default rule in rules/; add endpoint blocks and rules of your own.

environment = "production"
listen      = "0.0.0.0:8080"
admin       = { listen = "0.0.0.0:8081", token = env("WAYBILL_ADMIN_TOKEN") } -- publish it on 127.0.0.1 only
store       = "sqlite:/var/lib/waybill/waybill.db"                            -- the image's volume
log_format  = "json"                                                          -- docker logs, one object a line

source "atoship" { verify = "atoship", secret = env("ATOSHIP_SECRET") }

rules "rules/"                                                                -- /etc/waybill/rules/*.lua
