"""Limits and shutdown under load: what a hostile or busy world does."""
import threading
import time

import wb

SECRET = "hardening-secret"


def gateway(sink_url, extra="", endpoint_extra="", **settings):
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        source "shop" {{ verify = "generic", secret = {wb.lua(SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(sink_url)}, secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
                          {endpoint_extra} }}
        {extra}
        rules "rules/"
    ''', **settings)
    return wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"erp"})'})


def test_max_backlog_answers_503_and_stores_nothing_more():
    sink = wb.Sink()
    g = gateway(sink.url, endpoint_extra=", enabled = false", max_backlog=2)
    ids = []
    for _ in range(2):
        r = g.post_atoship(wb.atoship_event(), SECRET)
        assert r.status == 200, r
        ids.append(r.json()["id"])
    for evt in ids:  # both routed: two held deliveries make the backlog
        g.wait_event(evt, lambda e: e["deliveries"] and e["deliveries"][0]["status"] == "held")
    r = g.post_atoship(wb.atoship_event(), SECRET)
    assert r.status == 503, r
    assert r.headers.get("retry-after") and "backlog" in r.json()["error"], r
    st, page = g.admin("GET", "/api/events")
    assert st == 200 and len(page["data"]) == 2, page


def test_unsigned_webhook_id_does_not_defeat_dedupe():
    sink = wb.Sink()
    g = gateway(sink.url)
    body = b'{"type":"order.updated","data":{"order_id":"o-1"}}'
    sig = {"X-Signature": wb.sign_hex(SECRET, body)}
    first = g.post("/hooks/shop", body, dict(sig, **{"webhook-id": "msg_1"}))
    again = g.post("/hooks/shop", body, dict(sig, **{"webhook-id": "msg_2"}))
    assert first.status == 200 and again.status == 200
    assert again.json() == {"id": first.json()["id"], "duplicate": True}, again.json()
    sink.wait_for_count(1)
    time.sleep(0.3)
    assert sink.count == 1


def test_oversized_headers_are_refused():
    sink = wb.Sink()
    g = gateway(sink.url)
    body = wb.atoship_event()
    h = wb.atoship_headers(SECRET, body)
    h["X-Padding"] = "x" * (100 * 1024)
    try:
        r = g.post("/hooks/atoship", body, h)
        assert r.status in (400, 413, 431), r
    except OSError:
        pass  # the connection was closed on us: also a refusal
    st, page = g.admin("GET", "/api/events")
    assert page["data"] == []
    assert g.post_atoship(body, SECRET).status == 200


def test_sigterm_under_steady_ingest_exits_cleanly():
    sink = wb.Sink()
    for attempt in range(3):
        g = gateway(sink.url)
        stop = threading.Event()
        acked = []

        def carrier():
            while not stop.is_set():
                try:
                    r = g.post_atoship(wb.atoship_event(), SECRET)
                    if r.status == 200:
                        acked.append(r.json()["id"])
                except OSError:
                    return

        threads = [threading.Thread(target=carrier) for _ in range(4)]
        for t in threads:
            t.start()
        g.wait_for(lambda: len(acked) >= 20, timeout=10)
        code = g.stop()
        stop.set()
        for t in threads:
            t.join(5)
        assert code == 0, "attempt %d: exit code %s\n%s" % (attempt, code, g.log()[-3000:])


def test_sigterm_while_subscription_verification_pending_exits_cleanly():
    hanging = wb.Sink(delay=5.0)
    sink = wb.Sink()
    g = gateway(sink.url)
    t = threading.Thread(target=lambda: g.admin("POST", "/v1/environment/webhooks",
                                                {"url": hanging.url, "event": "track"}, timeout=10))
    t.daemon = True
    t.start()
    wb.wait_for(lambda: hanging.count >= 1 or hanging.inflight >= 1, timeout=5)
    assert g.stop() == 0, g.log()[-3000:]


def test_endpoint_disable_answers_after_commit_and_503_when_store_locked():
    sink = wb.Sink()
    g = gateway(sink.url)
    with g.store_down():
        st, body = g.admin("POST", "/api/endpoints/erp/disable")
        assert st == 503, (st, body)
    st, eps = g.admin("GET", "/api/endpoints")
    erp = [e for e in eps["data"] if e["name"] == "erp"][0]
    assert erp["disabled"] is False, erp  # nothing changed
    st, body = g.admin("POST", "/api/endpoints/erp/disable")
    assert st == 200 and body == {"name": "erp", "disabled": True}, body
    rows = g.db_rows("SELECT disabled FROM endpoint_state WHERE name = 'erp'")  # committed, seen from outside
    assert [bool(r[0]) for r in rows] == [True], rows
