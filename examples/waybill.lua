-- waybill example gateway: what `make run` starts.
-- Carriers POST to http://127.0.0.1:8080/hooks/<source>; deliveries go to
-- the example receiver (examples/receiver.py) on 127.0.0.1:9000.

environment = "sandbox"                 -- batch windows default to 5m here
listen      = "127.0.0.1:8080"
admin       = { listen = "127.0.0.1:8081", token = env("WAYBILL_ADMIN_TOKEN") }
store       = "sqlite:waybill.db"       -- relative to this file's folder
max_body    = "1MiB"
allow_private = { "127.0.0.0/8" }       -- the example receiver is on loopback

-- atoship signs with X-Atoship-Signature: hex HMAC-SHA256 of the raw body.
source "atoship" { verify = "atoship", secret = env("ATOSHIP_SECRET") }

-- Any HMAC-signing API: X-Signature, hex HMAC-SHA256 of the raw body.
source "shop" { verify = "generic", secret = env("ATOSHIP_SECRET") }

-- The merchant's ERP, verifying Standard Webhooks signatures.
endpoint "erp" {
  url    = "http://127.0.0.1:9000/webhooks/erp",
  secret = env("ERP_SECRET"),           -- whsec_<base64>
  sign   = "standard",
  retry  = "atoship",                   -- 0, 1m, 5m, 30m, 2h, 6h
  timeout = "5s",
}

rules "rules/"
