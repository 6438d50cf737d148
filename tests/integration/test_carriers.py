"""Every carrier in: each verify preset accepts what its carrier sends, types
it into the one taxonomy, and rejects (401, nothing stored) what it must;
ShipEngine keys come from a JWKS served by a local HTTP server; Shiptify
tokens are durable nonces; inbound TLS; `waybill sign` for every scheme;
outbound sign presets checked by receivers written as the merchants would.
"""
import base64
import http.client
import http.server
import json
import os
import socket
import ssl
import subprocess
import threading
import time

import wb

FIXTURES = os.path.join(wb.ROOT, "tests", "fixtures", "carriers")
ERP_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STD_OLD = "whsec_" + base64.b64encode(b"the-old-standard-secret-0123456").decode()
STD_NEW = "whsec_" + base64.b64encode(b"the-new-standard-secret-6543210").decode()


def fixture(name):
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read()


def stored(g):
    return g.db_rows("SELECT source, source_id, type FROM events ORDER BY seq")


# Every HMAC-style preset: (source name, source options, how to sign).
SOURCES = '''
    source "atoship"   {{ verify = "atoship",   secret = {{ "ato-new", "ato-old" }} }}
    source "shop"      {{ verify = "generic",   secret = {{ "gen-new", "gen-old" }} }}
    source "aftership" {{ verify = "aftership", secret = {{ "as-new", "as-old" }} }}
    source "easypost"  {{ verify = "easypost",  secret = {{ "ep-new", "ep-old" }} }}
    source "stripe"    {{ verify = "stripe",    secret = {{ "st-new", "st-old" }} }}
    source "shippo"    {{ verify = {{ scheme = "stripe", header = "Shippo-Auth-Signature" }},
                          carrier = "shippo", secret = {{ "sh-new", "sh-old" }} }}
    source "std"       {{ verify = "standard",  secret = {{ {std_new}, {std_old} }} }}
    source "shiptify"  {{ verify = "shiptify",  secret = {{ "sy-new", "sy-old" }} }}
    source "acme"      {{ verify = {{ scheme = "hmac-sha256", header = "X-Acme-Sig", encoding = "base64",
                                     prefix = "sha256=" }}, secret = {{ "ac-new", "ac-old" }} }}
    source "se"        {{ verify = "shipengine", jwks = "jwks.json" }}
'''


def carriers_gateway(sink, rsa, extra=""):
    cfg = wb.config(SOURCES.format(std_new=wb.lua(STD_NEW), std_old=wb.lua(STD_OLD)) + f'''
        endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ERP_SECRET)} }}
        {extra}
        rules "rules/"
    ''')
    return wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"erp"})',
                                  "jwks.json": json.dumps(rsa.jwks())})


def distinct_events(g, sink, n, timeout=10):
    """The first n distinct events the sink got (by waybill event id), waiting
    for them; a repeat delivery (at-least-once) is counted once."""
    def seen():
        out = {}
        for q in list(sink.requests):
            out.setdefault(q.json()["id"], q)
        return out if len(out) >= n else None
    return list(g.wait_for(seen, timeout=timeout, message="%d distinct events" % n).values())


def sign_for(source, secret, body, **kw):
    """Headers (and possibly a new body) a sender of source's preset attaches."""
    if source == "atoship":
        return body, wb.signed_headers("atoship", secret, body)
    if source == "shop":
        return body, wb.signed_headers("generic", secret, body)
    if source == "aftership":
        return body, wb.signed_headers("aftership", secret, body)
    if source == "easypost":
        return body, wb.signed_headers("easypost", secret, body)
    if source == "stripe":
        return body, wb.signed_headers("stripe", secret, body, ts=kw.get("ts"))
    if source == "shippo":
        return body, wb.signed_headers("shippo", secret, body, ts=kw.get("ts"))
    if source == "std":
        return body, wb.signed_headers("standard", secret, body, ts=kw.get("ts"))
    if source == "acme":
        return body, wb.signed_headers("hmac-sha256", secret, body, header="X-Acme-Sig",
                                       encoding="base64", prefix="sha256=")
    if source == "shiptify":
        b = wb.shiptify_body(secret, json.loads(body), timestamp=kw.get("ts"))
        return b, {"Content-Type": "application/json"}
    raise ValueError(source)


BODIES = {
    "atoship": (lambda: wb.atoship_event("shipment.delivered"), "shipment.delivered"),
    "shop": (lambda: wb.compact({"id": wb.new_id("g_"), "type": "label.printed"}), "shop.label.printed"),
    "aftership": (lambda: wb.compact({"event": "tracking_update", "event_id": wb.new_id("as_"),
                                      "msg": {"id": "t1", "tag": "OutForDelivery"}, "ts": int(time.time())}),
                  "tracking.out_for_delivery"),
    "easypost": (lambda: wb.compact({"id": wb.new_id("evt_"), "object": "Event", "description": "tracker.updated",
                                     "result": {"id": "trk_1", "status": "in_transit"}}), "tracking.in_transit"),
    "stripe": (lambda: wb.compact({"id": wb.new_id("evt_"), "type": "charge.succeeded", "created": int(time.time()),
                                   "data": {"object": {"id": "ch_1"}}}), "stripe.charge.succeeded"),
    "shippo": (lambda: wb.compact({"event": "track_updated", "test": True,
                                   "data": {"tracking_number": wb.new_id("9205"), "tracking_status": {"status": "DELIVERED"}}}),
               "tracking.delivered"),
    "std": (lambda: wb.compact({"type": "order.cancelled", "timestamp": "2024-01-15T10:30:00Z",
                                "data": {"order_id": wb.new_id("o_")}}), "order.cancelled"),
    "acme": (lambda: wb.compact({"event": "pickup.scheduled", "n": wb.new_id("")}), "acme.pickup.scheduled"),
    "shiptify": (lambda: wb.compact({"event_type": "create_shipment", "shipment": {"id": wb.new_id("s_")}}),
                 "shipment.created"),
}

NEW = {"atoship": "ato-new", "shop": "gen-new", "aftership": "as-new", "easypost": "ep-new",
       "stripe": "st-new", "shippo": "sh-new", "std": STD_NEW, "acme": "ac-new", "shiptify": "sy-new"}
OLD = {"atoship": "ato-old", "shop": "gen-old", "aftership": "as-old", "easypost": "ep-old",
       "stripe": "st-old", "shippo": "sh-old", "std": STD_OLD, "acme": "ac-old", "shiptify": "sy-old"}
WRONG = {k: ("whsec_" + base64.b64encode(b"wrong-secret-wrong-secret").decode() if k == "std" else "wrong")
         for k in NEW}
PATHS = {"acme": "/hooks/acme"}


def test_every_preset_accepts_rotates_and_types_into_the_taxonomy():
    sink = wb.Sink()
    rsa = wb.RsaKey("se-key-1")
    g = carriers_gateway(sink, rsa)
    want = {}
    for source, (make, typ) in BODIES.items():
        for secret in (NEW[source], OLD[source]):  # rotation: the old secret still works
            body, headers = sign_for(source, secret, make())
            r = g.post("/hooks/" + source, body, headers)
            assert r.status == 200, (source, secret, r)
            want[r.json()["id"]] = (source, typ)
    # ShipEngine: the seed's payloads, RSA-signed, keys from the JWKS file
    for name, typ in (("shipengine-track-delivered.json", "tracking.delivered"),
                      ("shipengine-batch.json", "batch.completed"),
                      ("shipengine-rate.json", "rate.updated"),
                      ("shipengine-carrier-connected.json", "carrier.connected"),
                      ("shipengine-sales-orders-imported.json", "order.imported")):
        body = fixture(name)
        r = g.post("/hooks/se", body, rsa.shipengine_headers(body))
        assert r.status == 200, (name, r)
        want[r.json()["id"]] = ("se", typ)
    # (poll for the ids: a delivery may come twice under at-least-once)
    g.wait_for(lambda: set(want) <= {q.json()["id"] for q in sink.requests}, timeout=10,
               message="every event delivered")
    reqs = list(sink.requests)
    got = {q.json()["id"]: (q.json()["source"], q.headers["x-waybill-event-type"]) for q in reqs}
    assert got == want, {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    for q in reqs:
        assert q.json()["type"] == q.headers["x-waybill-event-type"]
    # Shiptify's signature fields are not part of the event's data
    sy = [q.json() for q in reqs if q.json()["source"] == "shiptify"]
    assert sy and all(set(e["data"]) == {"event_type", "shipment"} for e in sy), sy


def test_seed_fixtures_are_typed_by_their_adapters():
    sink = wb.Sink()
    rsa = wb.RsaKey("se-key-1")
    g = carriers_gateway(sink, rsa)
    body = fixture("atoship-shipment-delivered.json")
    r = g.post("/hooks/atoship", body, wb.signed_headers("atoship", "ato-new", body))
    assert r.status == 200, r
    body = fixture("aftership-out-for-delivery.json")
    r = g.post("/hooks/aftership", body, wb.signed_headers("aftership", "as-new", body))
    assert r.status == 200, r
    sy = json.loads(fixture("shiptify-create-shipment.json"))
    del sy["signature"], sy["token"]
    body = wb.shiptify_body("sy-new", sy, timestamp=int(time.time() * 1000))  # milliseconds
    r = g.post("/hooks/shiptify", body, {})
    assert r.status == 200, r
    reqs = distinct_events(g, sink, 3)
    events = sorted((q.json()["source"], q.json()["type"], q.json()["source_id"]) for q in reqs)
    assert events == [("aftership", "tracking.out_for_delivery", "3c6e5a53-0bb3-4c1a-8a8d-6d1a1a1a0001"),
                      ("atoship", "shipment.delivered", "evt_1234567890abcdef"),
                      ("shiptify", "shipment.created", json.loads(body)["token"])], events


def test_rejections_are_401_and_store_nothing():
    sink = wb.Sink()
    rsa = wb.RsaKey("se-key-1")
    g = carriers_gateway(sink, rsa)
    stale = int(time.time()) - 600
    for source, (make, _) in BODIES.items():
        path = "/hooks/" + source
        body, good = sign_for(source, NEW[source], make())
        cases = []
        b, h = sign_for(source, WRONG[source], make())
        cases.append(("wrong secret", b, h))
        if source != "shiptify":
            cases.append(("missing header", body, {"Content-Type": "application/json"}))
            for k, v in good.items():
                if k.lower() in ("content-type", "webhook-id", "webhook-timestamp"):
                    continue
                # malformed: bad hex / base64, missing t= or v1=
                for bad in (v[:-3] + "zz!", v.split(",")[-1] if "," in v else "", "v1=" + "0" * 64):
                    cases.append(("malformed %s=%r" % (k, bad[:20]), body, dict(good, **{k: bad})))
                if source in ("stripe", "shippo"):
                    cases.append(("no t=", body, dict(good, **{k: v.split(",", 1)[1]})))
                    cases.append(("no v1=", body, dict(good, **{k: v.split(",", 1)[0]})))
            cases.append(("tampered body", body + b" ", good))
        if source in ("stripe", "shippo", "std", "shiptify"):
            b, h = sign_for(source, NEW[source], make(), ts=stale)
            cases.append(("stale timestamp", b, h))
        if source == "shiptify":
            j = json.loads(body)
            for field in ("timestamp", "token", "signature"):
                cases.append(("missing " + field, wb.compact({k: v for k, v in j.items() if k != field}), good))
            cases.append(("bad hex", wb.compact(dict(j, signature="zz" * 32)), good))
            cases.append(("token tampered", wb.compact(dict(j, token=j["token"] + "x")), good))
        for what, b, h in cases:
            r = g.post(path, b, h)
            assert r.status == 401, (source, what, r)
            assert r.json() == {"error": "signature verification failed"}
    # ShipEngine: missing/garbled headers, stale timestamp, wrong key
    body = fixture("shipengine-batch.json")
    good = rsa.shipengine_headers(body)
    other = wb.RsaKey("se-key-1")  # same kid, different key
    for what, h in (("missing sig", {k: v for k, v in good.items() if "signature" not in k}),
                    ("missing kid", {k: v for k, v in good.items() if "key-id" not in k}),
                    ("missing ts", {k: v for k, v in good.items() if "timestamp" not in k}),
                    ("bad base64", dict(good, **{"x-shipengine-rsa-sha256-signature": "@@@"})),
                    ("bad ts", dict(good, **{"x-shipengine-timestamp": "yesterday"})),
                    ("stale", rsa.shipengine_headers(body, ts=wb._iso(time.time() - 600))),
                    ("other key", other.shipengine_headers(body))):
        r = g.post("/hooks/se", body, h)
        assert r.status == 401, (what, r)
    r = g.post("/hooks/se", body + b" ", good)
    assert r.status == 401, r
    assert stored(g) == []
    assert sink.count == 0
    log = g.log()
    assert "rejected request" in log
    for s in list(NEW.values()) + list(OLD.values()):
        assert s not in log


def test_shiptify_checks_json_first_and_keeps_tokens_across_restart():
    sink = wb.Sink()
    cfg = wb.config(f'''
        source "shiptify" {{ verify = "shiptify", secret = "sy-new", tolerance = "10m" }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ERP_SECRET)} }}
        rules "rules/"
    ''')
    g = wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"erp"})'})
    # JSON before the signature: a body that is no JSON is 400, not 401
    r = g.post("/hooks/shiptify", b"timestamp=1&token=x", {})
    assert r.status == 400 and "invalid JSON" in r.json()["error"], r
    body = wb.shiptify_body("sy-new", {"event_type": "freight_unit_cancel_shipment", "shipment": {"id": 7}},
                            timestamp=str(int(time.time())))  # a string timestamp
    first = g.post("/hooks/shiptify", body, {})
    assert first.status == 200, first
    again = g.post("/hooks/shiptify", body, {})
    assert again.status == 200 and again.json() == {"id": first.json()["id"], "duplicate": True}, again
    j = json.loads(body)
    replay = wb.compact(dict(j, event_type="delivery_notification"))  # same token+signature, other body
    r = g.post("/hooks/shiptify", replay, {})
    assert r.status == 401, r
    assert "replayed" in g.log()
    sink.wait_for_count(1)
    g.wait_event(first.json()["id"], lambda e: e["deliveries"] and e["deliveries"][0]["status"] == "delivered")
    g.kill9()
    g.restart()
    r = g.post("/hooks/shiptify", replay, {})
    assert r.status == 401, r  # the token survived the crash
    r = g.post("/hooks/shiptify", body, {})
    assert r.status == 200 and r.json()["duplicate"] is True, r
    reqs = sink.wait_for_count(1)
    time.sleep(0.3)
    # neither the duplicate nor the replay was routed: one delivery (which a
    # kill -9 may make the gateway attempt again, under the same id)
    assert {q.headers["x-waybill-delivery"] for q in sink.requests} == {reqs[0].headers["x-waybill-delivery"]}
    assert reqs[0].headers["x-waybill-event-type"] == "shipment.cancelled"
    assert [row[2] for row in stored(g)] == ["shipment.cancelled"]


def test_shiptify_token_and_its_replay_at_once_store_one_event():
    """A token and its replay (other body) racing into the same loop turn:
    the token goes in before its event and the event only after the token's
    answer, so whichever body wins is stored and answered 200, the other is
    401 and stores nothing; the same body again is a 200 duplicate."""
    sink = wb.Sink()
    cfg = wb.config(f'''
        source "shiptify" {{ verify = "shiptify", secret = "sy-race", tolerance = "10m" }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ERP_SECRET)} }}
        rules "rules/"
    ''')
    g = wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"erp"})'})
    pairs = []
    for i in range(8):
        body = wb.shiptify_body("sy-race", {"event_type": "freight_unit_cancel_shipment",
                                            "shipment": {"id": 100 + i}})
        j = json.loads(body)
        replay = wb.compact(dict(j, event_type="delivery_notification"))
        pairs.append((body, replay))
    answers = {}

    def post(key, body):
        r = g.post("/hooks/shiptify", body, {})
        answers[key] = (r.status, r.json() if r.status == 200 else None)

    threads = [threading.Thread(target=post, args=((i, k), b))
               for i, pair in enumerate(pairs) for k, b in enumerate(pair)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = []
    for i in range(len(pairs)):
        got = sorted(answers[(i, 0)][0:1] + answers[(i, 1)][0:1])
        assert got == [200, 401], (i, answers[(i, 0)], answers[(i, 1)])
        won = 0 if answers[(i, 0)][0] == 200 else 1
        assert "duplicate" not in answers[(i, won)][1], answers[(i, won)]
        winners.append(won)
        again = g.post("/hooks/shiptify", pairs[i][won], {})
        assert again.status == 200 and again.json() == dict(answers[(i, won)][1], duplicate=True), again
        lost = g.post("/hooks/shiptify", pairs[i][1 - won], {})
        assert lost.status == 401, lost
    assert len(stored(g)) == len(pairs), stored(g)  # no replay stored an event
    for i, won in enumerate(winners):  # each stored event is the body answered 200
        raw = g.db_rows("SELECT raw FROM events WHERE id = ?", (answers[(i, won)][1]["id"],))
        assert raw and bytes(raw[0][0]) == pairs[i][won], (i, raw)
    sink.wait_for_count(len(pairs))


class _JwksServer:
    """A local HTTP server answering GET with the current JWKS, counting hits."""

    def __init__(self, jwks):
        self.jwks = jwks
        self.hits = 0
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.hits += 1
                data = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self):
        return "http://127.0.0.1:%d/.well-known/jwks.json" % self.port

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_shipengine_jwks_url_refetches_once_per_unknown_kid():
    k1, k2 = wb.RsaKey("kid-1"), wb.RsaKey("kid-2")
    srv = _JwksServer(k1.jwks())
    try:
        sink = wb.Sink()
        cfg = wb.config(f'''
            source "shipengine" {{ verify = "shipengine", jwks = {wb.lua(srv.url)} }}
            endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ERP_SECRET)} }}
            rules "rules/"
        ''')
        g = wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"erp"})'})
        body = fixture("shipengine-track-delivered.json")
        r = g.post("/hooks/shipengine", body, k1.shipengine_headers(body))
        assert r.status == 200, r
        g.wait_for(lambda: srv.hits >= 1)
        hits = srv.hits
        assert hits == 1, hits  # the start-up fetch, cached since
        # an unknown kid: one refetch (the JWKS still lacks it), then 401
        b2 = fixture("shipengine-batch.json")
        r = g.post("/hooks/shipengine", b2, k2.shipengine_headers(b2))
        assert r.status == 401, r
        assert srv.hits == hits + 1, srv.hits
        r = g.post("/hooks/shipengine", b2, k2.shipengine_headers(b2))
        assert r.status == 401 and srv.hits == hits + 1, (r, srv.hits)  # no second refetch for it
        # ShipEngine rotates: kid-3 appears in the JWKS; its first request refetches and passes
        k3 = wb.RsaKey("kid-3")
        srv.jwks = {"keys": [k1.jwk(), k3.jwk()]}
        r = g.post("/hooks/shipengine", b2, k3.shipengine_headers(b2))
        assert r.status == 200, r
        assert srv.hits == hits + 2
        reqs = distinct_events(g, sink, 2)
        assert sorted(q.headers["x-waybill-event-type"] for q in reqs) == ["batch.completed",
                                                                            "tracking.delivered"]
        # made-up kids: each refetches until 10 refetches ran this minute, then none
        for i in range(12):
            h = dict(k3.shipengine_headers(b2), **{"x-shipengine-rsa-sha256-key-id": "made-up-%d" % i})
            assert g.post("/hooks/shipengine", b2, h).status == 401
        assert srv.hits == hits + 10, srv.hits
        assert "not refetching" in g.log()
    finally:
        srv.close()


def test_shipengine_jwks_file_errors_fail_the_config():
    g = wb.Gateway(wb.config('''
        source "se" { verify = "shipengine", jwks = "keys.json" }
    '''), files={"keys.json": '{"keys": [{"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB"}]}'},
        start=False)
    r = g.cli("check")
    assert r.returncode == 1 and b"jwks" in r.stderr and b"too weak" in r.stderr, r.stderr
    g.write("keys.json", "not json")
    r = g.cli("check")
    assert r.returncode == 1 and b"invalid JSON" in r.stderr, r.stderr


def test_sign_command_for_every_scheme_is_accepted():
    sink = wb.Sink()
    rsa = wb.RsaKey("se-key-1")
    g = carriers_gateway(sink, rsa)
    n = 0
    for source, scheme, extra in (("atoship", "atoship", []), ("shop", "generic", []),
                                  ("shop", "hex", []), ("aftership", "aftership", []),
                                  ("easypost", "easypost", []), ("stripe", "stripe", []),
                                  ("shippo", "stripe", ["--header", "Shippo-Auth-Signature"]),
                                  ("std", "standard", []),
                                  ("acme", "hmac-sha256", ["--header", "X-Acme-Sig", "--encoding",
                                                           "base64", "--prefix", "sha256="])):
        body = BODIES[source][0]()
        r = wb.run("sign", "--scheme", scheme, "--secret", NEW[source], *extra, input=body)
        assert r.returncode == 0, (scheme, r.stderr)
        headers = dict(line.split(": ", 1) for line in r.stdout.decode().splitlines())
        assert g.post("/hooks/" + source, body, headers).status == 200, (scheme, headers)
        n += 1
    # shiptify prints the body with its three fields
    r = wb.run("sign", "--scheme", "shiptify", "--secret", "sy-new", input=BODIES["shiptify"][0]())
    assert r.returncode == 0, r.stderr
    signed = r.stdout.strip()
    assert set(json.loads(signed)) >= {"timestamp", "token", "signature", "event_type"}
    assert len(json.loads(signed)["token"]) == 50
    assert g.post("/hooks/shiptify", signed, {}).status == 200
    # shipengine signs with a private key
    body = fixture("shipengine-rate.json")
    r = wb.run("sign", "--scheme", "shipengine", "--key", rsa.pem, "--kid", rsa.kid, input=body)
    assert r.returncode == 0, r.stderr
    headers = dict(line.split(": ", 1) for line in r.stdout.decode().splitlines())
    assert g.post("/hooks/se", body, headers).status == 200, headers
    r = wb.run("sign", "--scheme", "shipengine", "--secret", "x", input=body)
    assert r.returncode == 2 and b"--key" in r.stderr
    sink.wait_for_count(n + 2)


def test_outbound_presets_verify_at_merchant_receivers():
    std = wb.NodeSink("standard", STD_OLD)      # a merchant still on the old secret
    ato = wb.NodeSink("atoship-json", "ato-merchant")
    hexs = wb.NodeSink("xsignature", "hex-merchant")
    plain = wb.Sink()
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = "ato-new" }}
        endpoint "std" {{ url = {wb.lua(std.url)}, secret = {{ {wb.lua(STD_NEW)}, {wb.lua(STD_OLD)} }},
                          sign = "standard" }}
        endpoint "ato" {{ url = {wb.lua(ato.url)}, secret = "ato-merchant", sign = "atoship" }}
        endpoint "hex" {{ url = {wb.lua(hexs.url)}, secret = "hex-merchant", sign = "hex" }}
        endpoint "as"  {{ url = {wb.lua(plain.url)}, secret = "as-merchant", sign = "aftership" }}
        rules "rules/"
    ''')
    g = wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"std", "ato", "hex", "as"})'})
    body = wb.atoship_event("tracking.delivered")
    assert g.post("/hooks/atoship", body, wb.signed_headers("atoship", "ato-new", body)).status == 200
    for s in (std, ato, hexs):
        got = s.wait_for_count(1)[0]
        assert got.valid and got.status == 200, (s.kind, got.verdict, got.reason)
    got = std.requests[0]
    assert len(got.headers["webhook-signature"].split(" ")) == 2  # one entry per active secret
    assert wb.verify_standard(STD_NEW, got.headers, got.body)
    q = plain.wait_for_count(1)[0]
    assert q.headers["aftership-hmac-sha256"] == wb.sign_b64("as-merchant", q.body)


def _self_signed(d):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def _https_post(port, path, body, headers, ctx):
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_inbound_tls_with_a_self_signed_certificate():
    sink = wb.Sink()
    d = wb._mkdtemp("wb-tls-")
    cert, key = _self_signed(d)
    cfg = wb.config(f'''
        tls = {{ cert = {wb.lua(cert)}, key = {wb.lua(key)} }}
        source "atoship" {{ verify = "atoship", secret = "ato-new" }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ERP_SECRET)} }}
        rules "rules/"
    ''')
    g = wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"erp"})'})
    ctx = ssl.create_default_context(cafile=cert)
    body = wb.atoship_event()
    st, data = _https_post(g.port, "/hooks/atoship", body, wb.signed_headers("atoship", "ato-new", body), ctx)
    assert st == 200 and json.loads(data)["id"].startswith("evt_"), (st, data)
    st, _ = _https_post(g.port, "/hooks/atoship", body, {"X-Atoship-Signature": "00"}, ctx)
    assert st == 401
    sink.wait_for_count(1)
    # plain HTTP on the TLS port gets no answer
    try:
        r = wb.http_request(g.port, "POST", "/hooks/atoship", body, {}, timeout=3)
        assert False, "plain HTTP answered on the TLS listener: %r" % (r,)
    except (OSError, http.client.HTTPException):
        pass
    # TLS 1.1 is refused, even by a client willing to use it
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        _https_post(g.port, "/hooks/atoship", body, {}, old)
        assert False, "a TLS 1.1 handshake succeeded"
    except (ssl.SSLError, ConnectionResetError, OSError) as e:
        assert not isinstance(e, AssertionError)
    assert len(stored(g)) == 1
    assert g.running()


def test_parked_request_is_bounded_and_the_loop_keeps_serving():
    # A JWKS server that accepts connections and never answers.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    try:
        sink = wb.Sink()
        k = wb.RsaKey("kid-1")
        cfg = wb.config(f'''
            source "shipengine" {{ verify = "shipengine",
                                   jwks = "http://127.0.0.1:{hang.getsockname()[1]}/jwks.json" }}
            source "atoship" {{ verify = "atoship", secret = "ato-new" }}
            endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ERP_SECRET)} }}
            rules "rules/"
        ''')
        g = wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"erp"})'})
        body = fixture("shipengine-batch.json")
        box = {}

        def parked():
            t0 = time.monotonic()
            box["r"] = g.post("/hooks/shipengine", body, k.shipengine_headers(body), timeout=20)
            box["t"] = time.monotonic() - t0

        th = threading.Thread(target=parked)
        th.start()
        time.sleep(0.3)
        # while that request waits for the key fetch, the loop serves others
        t0 = time.monotonic()
        ev = wb.atoship_event()
        assert g.post("/hooks/atoship", ev, wb.signed_headers("atoship", "ato-new", ev)).status == 200
        assert time.monotonic() - t0 < 2.0
        th.join(15)
        assert not th.is_alive()
        assert box["r"].status == 401, box["r"]
        assert 3.0 <= box["t"] <= 8.0, box["t"]  # the fetch's 5 s limit, not forever
        assert "jwks" in g.log() and "fetch failed" in g.log()
    finally:
        hang.close()


def test_tls_with_a_bad_certificate_or_key_refuses_to_start():
    d = wb._mkdtemp("wb-tls-")
    cert, key = _self_signed(d)
    other = os.path.join(d, "other")
    os.makedirs(other)
    _, other_key = _self_signed(other)
    with open(os.path.join(d, "junk.pem"), "w") as f:
        f.write("not a certificate\n")
    for c, k, want in ((os.path.join(d, "junk.pem"), key, b"tls: cert"),
                       (cert, other_key, b"mismatch"),
                       (cert, os.path.join(d, "missing.pem"), b"tls: key")):
        g = wb.Gateway(wb.config(f'''
            tls = {{ cert = {wb.lua(c)}, key = {wb.lua(k)} }}
            source "atoship" {{ verify = "atoship", secret = "s" }}
        '''), start=False)
        r = wb.run("serve", "-c", g.config_path, cwd=g.dir, timeout=20)
        assert r.returncode == 1 and want in r.stderr, (want, r.returncode, r.stderr[-500:])
