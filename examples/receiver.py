#!/usr/bin/env python3
"""Example merchant receiver for the README tour.

Listens on 127.0.0.1:9000, verifies each delivery's Standard Webhooks
signature (webhook-id, webhook-timestamp, webhook-signature) with the
endpoint's whsec_ secret, and prints what arrived.

    ERP_SECRET=whsec_... python3 examples/receiver.py
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = os.environ.get("ERP_SECRET", "whsec_ZGV2LWVycC1zZWNyZXQtZm9yLXdheWJpbGw=")
KEY = base64.b64decode(SECRET.split("_", 1)[1] if SECRET.startswith("whsec_") else SECRET)


# Each endpoint has its own secret: /webhooks/<name> is checked with
# <NAME>_SECRET (the values `make run` uses by default), else ERP_SECRET.
DEFAULTS = {
    "crm": "whsec_ZGV2LWNybS1zZWNyZXQtZm9yLXdheWJpbGw=",
    "alerts": "whsec_ZGV2LWFsZXJ0cy1zZWNyZXQtZm9yLXdheWI=",
    "warehouse": "whsec_ZGV2LXdhcmVob3VzZS1zZWNyZXQtZm9yLXc=",
}


def key_for(path):
    name = path.rstrip("/").rsplit("/", 1)[-1]
    secret = os.environ.get(name.upper() + "_SECRET", DEFAULTS.get(name, SECRET))
    return base64.b64decode(secret.split("_", 1)[1] if secret.startswith("whsec_") else secret)


def verified(headers, body, key=KEY):
    msg_id = headers.get("webhook-id", "")
    ts = headers.get("webhook-timestamp", "")
    if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
        return False
    signed = f"{msg_id}.{ts}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(sig.split(",", 1)[-1], expected)
               for sig in headers.get("webhook-signature", "").split())


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        ok = verified(self.headers, body, key_for(self.path))
        self.send_response(200 if ok else 401)
        self.end_headers()
        print(f"{'verified' if ok else 'BAD SIGNATURE'} {self.path} "
              f"type={self.headers.get('X-Waybill-Event-Type')} "
              f"delivery={self.headers.get('X-Waybill-Delivery')} "
              f"attempt={self.headers.get('X-Waybill-Attempt')}")
        try:
            print("  " + json.dumps(json.loads(body))[:400])
        except ValueError:
            print("  " + body[:400].decode(errors="replace"))
        sys.stdout.flush()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    print("example receiver on http://127.0.0.1:9000")
    HTTPServer(("127.0.0.1", 9000), Receiver).serve_forever()
