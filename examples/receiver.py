#!/usr/bin/env python3
"""Example merchant receiver for the README tour.

    python3 examples/receiver.py [PORT]            serve (default $RECEIVER_PORT or 9000)
    python3 examples/receiver.py subscribe EVENT [NAME]
        subscribe http://127.0.0.1:9000/webhooks/NAME (default "subscriber")
        to EVENT through waybill's admin API; the secret in the answer is kept
        in .run/receiver-secrets.json, where the serving receiver finds it

Each delivery's Standard Webhooks signature (webhook-id, webhook-timestamp,
webhook-signature) is checked with its endpoint's whsec_ secret: /webhooks/erp
with ERP_SECRET, /webhooks/crm with CRM_SECRET, ... (default: the values of
examples/waybill.lua), a subscription's with the secret `subscribe` kept.
A subscription's verification POST (X-Waybill-Event-Type:
webhook.verification) is answered 200: its secret is new, read after the
answer from GET /api/subscriptions/{id}. One line is printed per request:

    verified /webhooks/erp type=shipment.delivered delivery=dlv_... attempt=1

(WAYBILL_ADMIN_URL, default http://127.0.0.1:8081, and WAYBILL_ADMIN_TOKEN,
default dev-admin-token, are the admin API `subscribe` uses.)
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
SECRETS_FILE = os.path.join(os.path.dirname(HERE), ".run", "receiver-secrets.json")

# Each endpoint has its own secret: /webhooks/<name> is checked with
# <NAME>_SECRET, else these (the defaults of examples/waybill.lua).
DEFAULTS = {
    "erp": "whsec_ZGV2LWVycC1zZWNyZXQtZm9yLXdheWJpbGw=",
    "crm": "whsec_ZGV2LWNybS1zZWNyZXQtZm9yLXdheWJpbGw=",
    "alerts": "whsec_ZGV2LWFsZXJ0cy1zZWNyZXQtZm9yLXdheWI=",
    "warehouse": "whsec_ZGV2LXdhcmVob3VzZS1zZWNyZXQtZm9yLXc=",
}


def key_of(secret):
    return base64.b64decode(secret.split("_", 1)[1] if secret.startswith("whsec_") else secret)


def secret_for(path):
    name = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    secret = os.environ.get(name.upper() + "_SECRET") or DEFAULTS.get(name)
    if not secret:
        try:
            with open(SECRETS_FILE) as f:
                secret = json.load(f).get(path.split("?", 1)[0])
        except (OSError, ValueError):
            secret = None
    return secret


def verified(headers, body, secret):
    if not secret:
        return False
    msg_id = headers.get("webhook-id", "")
    ts = headers.get("webhook-timestamp", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
        return False
    signed = f"{msg_id}.{ts}.".encode() + body
    expected = base64.b64encode(hmac.new(key_of(secret), signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(sig.split(",", 1)[-1], expected)
               for sig in headers.get("webhook-signature", "").split())


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        kind = self.headers.get("X-Waybill-Event-Type")
        if kind == "webhook.verification":
            self.send_response(200)
            self.end_headers()
            print(f"verification POST {self.path}: answered 200 (the new secret comes with "
                  f"the subscription's answer)")
            sys.stdout.flush()
            return
        ok = verified(self.headers, body, secret_for(self.path))
        self.send_response(200 if ok else 401)
        self.end_headers()
        print(f"{'verified' if ok else 'BAD SIGNATURE'} {self.path} type={kind} "
              f"delivery={self.headers.get('X-Waybill-Delivery')} "
              f"attempt={self.headers.get('X-Waybill-Attempt')}")
        sys.stdout.flush()

    def log_message(self, *args):
        pass


def subscribe(event, name="subscriber"):
    port = int(os.environ.get("RECEIVER_PORT", "9000"))
    url = "http://127.0.0.1:%d/webhooks/%s" % (port, name)
    admin = os.environ.get("WAYBILL_ADMIN_URL", "http://127.0.0.1:8081")
    token = os.environ.get("WAYBILL_ADMIN_TOKEN", "dev-admin-token")
    auth = {"Authorization": "Bearer " + token}
    req = urllib.request.Request(admin + "/v1/environment/webhooks", method="POST",
                                 data=json.dumps({"url": url, "event": event}).encode(),
                                 headers=dict(auth, **{"Content-Type": "application/json"}))
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
        # ShipEngine's answer has no secret: waybill's own route has it
        req = urllib.request.Request(admin + "/api/subscriptions/" + answer["webhook_id"],
                                     headers=auth)
        with urllib.request.urlopen(req, timeout=30) as r:
            answer["secret"] = json.loads(r.read())["secret"]
    except urllib.error.HTTPError as e:
        print("subscribe: HTTP %d: %s" % (e.code, e.read().decode(errors="replace")))
        return 1
    try:
        with open(SECRETS_FILE) as f:
            kept = json.load(f)
    except (OSError, ValueError):
        kept = {}
    kept["/webhooks/" + name] = answer["secret"]
    os.makedirs(os.path.dirname(SECRETS_FILE), exist_ok=True)
    with open(SECRETS_FILE, "w") as f:
        json.dump(kept, f)
    os.chmod(SECRETS_FILE, 0o600)
    print("subscribed %s to %s as %s (secret kept in %s)"
          % (url, event, answer["webhook_id"], os.path.relpath(SECRETS_FILE)))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["subscribe"] and len(sys.argv) in (3, 4):
        sys.exit(subscribe(*sys.argv[2:]))
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("RECEIVER_PORT", "9000"))
    print("example receiver on http://127.0.0.1:%d" % port)
    sys.stdout.flush()
    HTTPServer(("127.0.0.1", port), Receiver).serve_forever()
