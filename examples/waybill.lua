-- waybill example gateway: what `make run` starts.
-- Five carriers POST to http://127.0.0.1:8080/hooks/<source>; deliveries go
-- to the example receiver (examples/receiver.py) on 127.0.0.1:9000, which
-- plays the merchant's ERP, CRM, alerting and warehouse systems.
-- Every secret comes from the environment; the second argument of env() is
-- the development default this loopback sandbox runs with (remove it in
-- production, so an unset variable stops the start). Try the rules without
-- a server:
--   waybill route -c examples/waybill.lua --source atoship examples/shipment.json

environment = "sandbox"                 -- batch windows default to 5m here (30m in production)
-- (WAYBILL_LISTEN, WAYBILL_ADMIN_LISTEN, WAYBILL_STORE and WAYBILL_PIDFILE run
-- a second instance of this file beside the first on one PostgreSQL: README,
-- "Running several instances")
listen      = env("WAYBILL_LISTEN", "127.0.0.1:8080")
admin       = { listen = env("WAYBILL_ADMIN_LISTEN", "127.0.0.1:8081"),
                token = env("WAYBILL_ADMIN_TOKEN", "dev-admin-token") }
store       = env("WAYBILL_STORE", "sqlite:../.run/waybill.db") -- relative to this file: the repo's .run/ (git-ignored)
pidfile     = env("WAYBILL_PIDFILE", "../.run/waybill.pid") -- for `waybill reload --pidfile` / kill -HUP
max_body    = "1MiB"
allow_private = { "127.0.0.0/8" }       -- the example receiver is on loopback

---- sources: who sends us webhooks ----------------------------------------

-- atoship: X-Atoship-Signature, hex HMAC-SHA256 of the raw body.
source "atoship" { verify = "atoship", secret = env("ATOSHIP_SECRET", "dev-atoship-secret") }

-- AfterShip: aftership-hmac-sha256, base64 HMAC-SHA256. While rotating,
-- give both: secret = { env("AFTERSHIP_SECRET"), env("AFTERSHIP_OLD_SECRET") }.
source "aftership" { verify = "aftership", secret = env("AFTERSHIP_SECRET", "dev-aftership-secret") }

-- ShipEngine: RSA-signed requests checked against its published keys.
-- The keys come from ShipEngine's JWKS URL in production; this file holds a
-- development key so the example starts offline.
source "shipengine" { verify = "shipengine", jwks = "shipengine-jwks.json" }

-- Shiptify: hex HMAC-SHA256 of timestamp..token carried in the body.
source "shiptify" { verify = "shiptify", secret = env("SHIPTIFY_SECRET", "dev-shiptify-secret") }

-- Any API signing X-Signature with a hex HMAC-SHA256 of the body (seed 002).
source "shop" { path = "/hooks/shop",
                verify = { scheme = "hmac-sha256", header = "X-Signature", encoding = "hex" },
                secret = env("SHOP_SECRET", "dev-shop-secret") }

---- endpoints: the merchant's systems -------------------------------------

-- The ERP verifies Standard Webhooks signatures (webhook-id/-timestamp/-signature).
endpoint "erp" {
  url    = "http://127.0.0.1:9000/webhooks/erp",
  secret = env("ERP_SECRET", "whsec_ZGV2LWVycC1zZWNyZXQtZm9yLXdheWJpbGw="), -- whsec_<base64>
  sign   = "standard",
  retry  = "atoship",                   -- 0, 1m, 5m, 30m, 2h, 6h
  timeout = "5s",
}

-- The CRM only learns about deliveries, to send a "how was it?" email.
endpoint "crm" {
  url    = "http://127.0.0.1:9000/webhooks/crm",
  secret = env("CRM_SECRET", "whsec_ZGV2LWNybS1zZWNyZXQtZm9yLXdheWJpbGw="),
  sign   = "standard",
  concurrency = 4,
}

-- Exceptions page someone: short timeout, fast retries.
endpoint "alerts" {
  url    = "http://127.0.0.1:9000/webhooks/alerts",
  secret = env("ALERTS_SECRET", "whsec_ZGV2LWFsZXJ0cy1zZWNyZXQtZm9yLXdheWI="),
  sign   = "standard",
  timeout = "2s",
  retry  = { "0s", "10s", "1m", "5m" },
}

-- The warehouse system takes tracking updates in batches: one POST per
-- clock-aligned minute, earlier when 500 updates are waiting.
endpoint "warehouse" {
  url    = "http://127.0.0.1:9000/webhooks/warehouse",
  secret = env("WAREHOUSE_SECRET", "whsec_ZGV2LXdhcmVob3VzZS1zZWNyZXQtZm9yLXc="),
  sign   = "standard",
  window = "1m",
  max_batch = 500,
}

rules "rules/"                          -- examples/rules/*.lua, in name order
