"""The spine end to end: ingest -> store -> Lua rule -> signed delivery -> retry.

Each test starts the real waybill binary and real receivers on 127.0.0.1.
"""
import json
import os
import time

import wb

ERP_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ATOSHIP_SECRET = "atoship-test-secret"


def gateway(sink_url, rules='on("*", {"erp"})', endpoint_extra="", extra="", **settings):
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(ATOSHIP_SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(sink_url)}, secret = {wb.lua(ERP_SECRET)},
                          sign = "standard" {endpoint_extra} }}
        {extra}
        rules "rules/"
    ''', **settings)
    return wb.Gateway(cfg, files={"rules/10-main.lua": rules})


def stored_events(g):
    """Rows in the gateway's store, read by a separate connection."""
    return g.db_rows("SELECT id, source, source_id, type, status FROM events ORDER BY seq")


def test_atoship_event_reaches_standard_webhooks_verifier():
    sink = wb.NodeSink("standard", ERP_SECRET)
    g = gateway(sink.url)
    body = wb.atoship_event("shipment.delivered")
    r = g.post_atoship(body, ATOSHIP_SECRET)
    assert r.status == 200, r
    resp = r.json()
    assert set(resp) == {"id"} and resp["id"].startswith("evt_"), resp
    assert r.headers["content-type"] == "application/json"

    got = sink.wait_for_count(1)[0]
    assert got.valid, "standardwebhooks rejected the delivery: %s" % got.reason
    assert got.headers["x-waybill-event-type"] == "shipment.delivered"
    assert got.headers["x-waybill-delivery"].startswith("dlv_")
    assert got.headers["webhook-id"] == got.headers["x-waybill-delivery"]
    assert got.headers["x-waybill-attempt"] == "1"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("waybill/")
    sent = got.json()
    carrier = json.loads(body)
    assert sent["id"] == resp["id"] and sent["source_id"] == carrier["id"]
    assert sent["type"] == "shipment.delivered" and sent["source"] == "atoship"
    assert sent["data"] == carrier["data"]
    assert "raw" not in sent and "headers" not in sent

    ev = g.wait_event(resp["id"], lambda e: e["deliveries"] and
                      e["deliveries"][0]["status"] == "delivered")
    assert ev["status"] == "routed" and ev["source_id"] == carrier["id"]
    assert ev["deliveries"][0]["attempts"][0]["status_code"] == 200


def test_hex_signature_verified_by_seed_002_receiver():
    secret = "merchant-hex-secret"
    sink = wb.NodeSink("xsignature", secret)
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(ATOSHIP_SECRET)} }}
        endpoint "shop" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(secret)}, sign = "hex" }}
        rules "rules/"
    ''')
    g = wb.Gateway(cfg, files={"rules/10.lua": 'on("tracking.*", {"shop"})'})
    r = g.post_atoship(wb.atoship_event("tracking.in_transit"), ATOSHIP_SECRET)
    assert r.status == 200, r
    got = sink.wait_for_count(1)[0]
    assert got.valid and got.status == 200, (got.verdict, got.reason)


def test_retries_500_500_200_keep_delivery_id_and_are_logged():
    sink = wb.Sink([500, 500, 200])
    g = gateway(sink.url, endpoint_extra=', retry = {"0s", "1s", "1s"}, jitter = false')
    r = g.post_atoship(wb.atoship_event(), ATOSHIP_SECRET)
    assert r.status == 200, r
    evt = r.json()["id"]
    reqs = sink.wait_for_count(3, timeout=10)
    ids = {q.headers["x-waybill-delivery"] for q in reqs}
    assert len(ids) == 1, ids
    assert [q.headers["x-waybill-attempt"] for q in reqs] == ["1", "2", "3"]
    gaps = [reqs[i + 1].mono - reqs[i].mono for i in range(2)]
    assert all(0.9 <= gap <= 2.0 for gap in gaps), gaps
    ev = g.wait_event(evt, lambda e: e["deliveries"][0]["status"] == "delivered")
    d = ev["deliveries"][0]
    assert d["id"] == ids.pop()
    assert [a["status_code"] for a in d["attempts"]] == [500, 500, 200]
    assert [a["n"] for a in d["attempts"]] == [1, 2, 3]
    assert all(a["latency_ms"] >= 0 and a["at"] for a in d["attempts"])
    assert d["attempts"][0]["response"] == "ok"


def test_last_failed_attempt_marks_delivery_failed():
    sink = wb.Sink(default=500)
    g = gateway(sink.url, endpoint_extra=', retry = {"0s", "500ms"}, jitter = false')
    r = g.post_atoship(wb.atoship_event(), ATOSHIP_SECRET)
    evt = r.json()["id"]
    ev = g.wait_event(evt, lambda e: e["deliveries"][0]["status"] == "failed", timeout=8)
    assert [a["status_code"] for a in ev["deliveries"][0]["attempts"]] == [500, 500]
    time.sleep(1.0)
    assert sink.count == 2  # no attempt after the last


def test_connection_refused_is_retried_and_logged():
    port = wb.free_port()  # nothing listens here yet
    g = gateway("http://127.0.0.1:%d/hook" % port,
                endpoint_extra=', retry = {"0s", "2s"}, jitter = false')
    evt = g.post_atoship(wb.atoship_event(), ATOSHIP_SECRET).json()["id"]
    ev = g.wait_event(evt, lambda e: e["deliveries"] and e["deliveries"][0]["attempts"])
    a = ev["deliveries"][0]["attempts"][0]
    assert a["status_code"] in (0, None) and a["error"], a
    assert ev["deliveries"][0]["status"] == "pending"


def test_duplicate_event_id_answers_first_id_and_is_not_routed_again():
    sink = wb.Sink()
    g = gateway(sink.url)
    body = wb.atoship_event()
    first = g.post_atoship(body, ATOSHIP_SECRET)
    second = g.post_atoship(body, ATOSHIP_SECRET)
    assert first.status == 200 and second.status == 200
    assert second.json() == {"id": first.json()["id"], "duplicate": True}
    sink.wait_for_count(1)
    time.sleep(0.5)
    assert sink.count == 1
    assert len(stored_events(g)) == 1


def test_rejections_store_nothing():
    sink = wb.Sink()
    g = gateway(sink.url, max_body="2KiB")
    body = wb.atoship_event()
    good = wb.atoship_headers(ATOSHIP_SECRET, body)

    r = g.post("/hooks/nope", body, good)
    assert r.status == 404 and "no source" in r.json()["error"], r
    r = g.post("/hooks/atoship", b"", good, method="GET")
    assert r.status == 405 and r.headers["allow"] == "POST", r
    big = b'{"pad":"' + b"x" * 4096 + b'"}'
    r = g.post("/hooks/atoship", big, wb.atoship_headers(ATOSHIP_SECRET, big))
    assert r.status == 413, r
    r = g.post("/hooks/atoship", body, {})
    assert r.status == 401, r
    assert r.json() == {"error": "signature verification failed"}
    r = g.post("/hooks/atoship", body, wb.atoship_headers("wrong-secret", body))
    assert r.status == 401, r
    r = g.post("/hooks/atoship", body, {"X-Atoship-Signature": "zz" * 32})
    assert r.status == 401, r
    r = g.post("/hooks/atoship", body, {"X-Atoship-Signature": good["X-Atoship-Signature"][:-2]})
    assert r.status == 401, r
    tampered = body.replace(b"USPS", b"UPSS")
    r = g.post("/hooks/atoship", tampered, good)
    assert r.status == 401, r
    for bad in (b"not json", b'{"a":', b"42", b'"text"'):
        r = g.post("/hooks/atoship", bad, wb.atoship_headers(ATOSHIP_SECRET, bad))
        assert r.status == 400, (bad, r)
        msg = r.json()["error"]
        assert msg and "\n" not in msg, msg
    assert stored_events(g) == []
    assert sink.count == 0
    # The reason is logged, the secret and signatures never are.
    log = g.log()
    assert "rejected request" in log
    assert ATOSHIP_SECRET not in log and good["X-Atoship-Signature"] not in log
    # and the gateway still accepts a good request
    assert g.post("/hooks/atoship", body, good).status == 200


def test_413_does_not_read_past_limit():
    sink = wb.Sink()
    g = gateway(sink.url, max_body="1KiB")
    # Announce 10 MB but send only a little: the answer must come anyway.
    r = g.post("/hooks/atoship", b"{}", {"X-Atoship-Signature": "00"}, content_length=10_000_000)
    assert r.status == 413, r


def test_generic_and_table_form_presets():
    sink = wb.Sink()
    cfg = wb.config(f'''
        source "shop" {{ verify = "generic", secret = {{ "new-secret", "old-secret" }} }}
        source "acme" {{ path = "/in/acme",
                         verify = {{ scheme = "hmac-sha256", header = "X-Acme-Sig",
                                     encoding = "base64", prefix = "sha256=" }},
                         secret = "acme-secret" }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ERP_SECRET)} }}
        rules "rules/"
    ''')
    g = wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"erp"})'})
    body = b'{"id":"ord-1","type":"order.updated","data":{"order_id":"o1"}}'
    for secret in ("new-secret", "old-secret"):  # rotation: both accepted
        r = g.post("/hooks/shop", body, {"X-Signature": wb.sign_hex(secret, body)})
        assert r.status == 200, r
    r = g.post("/hooks/shop", body, {"X-Signature": wb.sign_hex("other", body)})
    assert r.status == 401

    body2 = b'{"event":"label.printed","label":"L1"}'
    sig = "sha256=" + wb.sign_b64("acme-secret", body2)
    assert g.post("/in/acme", body2, {"X-Acme-Sig": sig}).status == 200
    assert g.post("/in/acme", body2, {"X-Acme-Sig": sig[7:]}).status == 401  # prefix missing
    assert g.post("/in/acme", body2, {"X-Acme-Sig": "sha256=@@@"}).status == 401
    assert g.post("/hooks/acme", body2, {"X-Acme-Sig": sig}).status == 404  # custom path only

    reqs = sink.wait_for_count(2)
    types = sorted(q.headers["x-waybill-event-type"] for q in reqs)
    assert types == ["acme.label.printed", "order.updated"], types


def test_rule_errors_mark_event_and_gateway_keeps_serving():
    sink = wb.Sink()
    rules = '''
        on("shipment.delivered", function(ev) error("no ERP mapping") end)
        on("shipment.cancelled", function(ev) while true do end end)
        on("shipment.returned", function(ev)
          local ok = pcall(function() while true do end end)
          send("erp", ev)
        end)
        on("tracking.*", {"erp"})
    '''
    g = gateway(sink.url, rules=rules)
    ids = {}
    for t in ("shipment.delivered", "shipment.cancelled", "shipment.returned"):
        r = g.post_atoship(wb.atoship_event(t), ATOSHIP_SECRET)
        assert r.status == 200, r
        ids[t] = r.json()["id"]
    for t, evt in ids.items():
        ev = g.wait_event(evt, lambda e: e["status"] != "received")
        assert ev["status"] == "rule_error", ev
        assert "rules/10-main.lua:" in ev["error"], ev["error"]
        assert ev["deliveries"] == [], ev
    assert "no ERP mapping" in g.event(ids["shipment.delivered"])["error"]
    # the next request is served and routed normally, quickly
    t0 = time.monotonic()
    r = g.post_atoship(wb.atoship_event("tracking.delivered"), ATOSHIP_SECRET)
    assert r.status == 200 and time.monotonic() - t0 < 1.0
    sink.wait_for_count(1)
    assert sink.requests[0].headers["x-waybill-event-type"] == "tracking.delivered"


def test_event_no_rule_sends_is_unrouted():
    sink = wb.Sink()
    g = gateway(sink.url, rules='on("tracking.*", function(ev) if ev.data.carrier ~= "UPS" then return end send("erp", ev) end)')
    evt = g.post_atoship(wb.atoship_event("tracking.in_transit"), ATOSHIP_SECRET).json()["id"]
    ev = g.wait_event(evt, lambda e: e["status"] != "received")
    assert ev["status"] == "unrouted" and ev["deliveries"] == []
    assert sink.count == 0


def test_store_locked_answers_503_then_recovers():
    sink = wb.Sink()
    g = gateway(sink.url)
    with g.store_down():
        body = wb.atoship_event()
        r = g.post_atoship(body, ATOSHIP_SECRET)
        assert r.status == 503, r
        assert r.headers.get("retry-after"), r.headers
    assert stored_events(g) == []
    r = g.post_atoship(body, ATOSHIP_SECRET)  # the carrier's retry
    assert r.status == 200, r
    sink.wait_for_count(1)


def test_restart_resumes_pending_deliveries_with_same_id():
    sink = wb.Sink([500])
    g = gateway(sink.url, endpoint_extra=', retry = {"0s", "3s"}, jitter = false')
    evt = g.post_atoship(wb.atoship_event(), ATOSHIP_SECRET).json()["id"]
    sink.wait_for_count(1)

    def attempt_committed():
        # A separate connection sees only committed rows: the admin API
        # reads the open group too, which a kill -9 may still roll back.
        return g.db_rows("SELECT count(*) FROM attempts") == [(1,)]

    g.wait_for(attempt_committed, message="first attempt committed")
    g.kill9()
    g.restart()
    reqs = sink.wait_for_count(2, timeout=10)
    assert reqs[1].headers["x-waybill-delivery"] == reqs[0].headers["x-waybill-delivery"]
    assert reqs[1].headers["x-waybill-attempt"] == "2"
    ev = g.wait_event(evt, lambda e: e["deliveries"][0]["status"] == "delivered")
    assert len(ev["deliveries"]) == 1


def test_admin_auth_and_status():
    sink = wb.Sink()
    g = gateway(sink.url)
    st, _ = g.admin("GET", "/healthz", token=None)
    assert st == 200
    st, body = g.admin("GET", "/api/status", token=None)
    assert st == 401 and body["error"]
    st, body = g.admin("GET", "/api/status", token="wrong")
    assert st == 401
    st, body = g.admin("GET", "/api/status")
    assert st == 200, body
    assert body["version"] and body["uptime_s"] >= 0 and body["rules_loaded_at"]
    assert body["queue"]["pending"] == 0
    st, body = g.admin("GET", "/api/events/evt_doesnotexist")
    assert st == 404, body
    st, body = g.admin("GET", "/api/nothing")
    assert st == 404


def test_reload_changes_routing_and_bad_rules_keep_old():
    a, b = wb.Sink(), wb.Sink()
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(ATOSHIP_SECRET)} }}
        endpoint "a" {{ url = {wb.lua(a.url)}, secret = {wb.lua(ERP_SECRET)} }}
        endpoint "b" {{ url = {wb.lua(b.url)}, secret = {wb.lua(ERP_SECRET)} }}
        rules "rules/"
    ''')
    g = wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"a"})'})
    assert g.post_atoship(wb.atoship_event(), ATOSHIP_SECRET).status == 200
    a.wait_for_count(1)
    g.write("rules/10.lua", 'on("*", {"b"})')
    g.sighup()
    g.wait_for(lambda: g.admin("GET", "/api/status")[1]["reloads"] == 1)
    assert g.post_atoship(wb.atoship_event(), ATOSHIP_SECRET).status == 200
    b.wait_for_count(1)
    g.write("rules/10.lua", 'on("*", {"a"})\nthis is not lua\n')
    st, body = g.admin("POST", "/api/reload")
    assert st == 422 and "rules/10.lua:2:" in body["error"], body
    st, status = g.admin("GET", "/api/status")
    assert "rules/10.lua:2:" in status["last_reload_error"] and status["reload_failures"] == 1
    assert g.post_atoship(wb.atoship_event(), ATOSHIP_SECRET).status == 200
    b.wait_for_count(2)
    assert a.count == 1


def test_check_and_sign_commands():
    d = wb.Gateway(wb.config('''
        source "atoship" { verify = "atoship", secret = "s" }
        endpoint "erp" { url = "http://127.0.0.1:1/x", sign = "standard" }
    '''), start=False)
    r = d.cli("check")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "waybill.lua:" in err and "secret" in err, err

    sink = wb.Sink()
    g = gateway(sink.url)
    assert g.cli("check").returncode == 0
    body = wb.atoship_event()
    r = wb.run("sign", "--scheme", "atoship", "--secret", ATOSHIP_SECRET, input=body)
    assert r.returncode == 0, r.stderr
    headers = dict(line.split(": ", 1) for line in r.stdout.decode().splitlines())
    assert headers == {"X-Atoship-Signature": wb.sign_hex(ATOSHIP_SECRET, body)}, headers
    assert g.post("/hooks/atoship", body, headers).status == 200
    r = wb.run("sign", "--scheme", "standard", "--secret", ERP_SECRET, input=body)
    headers = dict(line.split(": ", 1) for line in r.stdout.decode().splitlines())
    assert wb.verify_standard(ERP_SECRET, headers, body), headers
    r = wb.run("sign", "--scheme", "nope", "--secret", "k", input=body)
    assert r.returncode != 0 and b"unknown scheme" in r.stderr
