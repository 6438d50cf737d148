"""Delivery semantics (SPEC section 7): status codes, ordering, limits,
disabled endpoints and held deliveries, operational events, retention,
graceful shutdown, the SSRF guard. Real binary, real sinks on 127.0.0.1."""
import json
import signal
import sqlite3
import sys
import threading
import time

import wb

SECRET = "delivery-secret"
ERP_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def gateway(sink_url, endpoint_extra="", rules='on("*", {"erp"})', extra="", files=None, **settings):
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(sink_url)}, secret = {wb.lua(ERP_SECRET)}
                          {endpoint_extra} }}
        {extra}
        rules "rules/"
    ''', **settings)
    f = {"rules/10-main.lua": rules}
    f.update(files or {})
    return wb.Gateway(cfg, files=f)


def post(g, type="shipment.delivered", **data):
    body = wb.atoship_event(type, **data)
    r = g.post_atoship(body, SECRET)
    assert r.status == 200, r
    return r.json()["id"], json.loads(body)["id"]


def delivery(ev):
    assert len(ev["deliveries"]) == 1, ev
    return ev["deliveries"][0]


def gaps(reqs):
    return [reqs[i + 1].mono - reqs[i].mono for i in range(len(reqs) - 1)]


def endpoints(g):
    st, data = g.admin("GET", "/api/endpoints")
    assert st == 200, (st, data)
    assert data["next"] is None
    return {e["name"]: e for e in data["data"]}


# ---- status semantics -------------------------------------------------------

def test_406_fails_at_once_without_retry():
    sink = wb.Sink([406])
    g = gateway(sink.url, ', retry = {"0s", "300ms", "300ms"}, jitter = false')
    evt, _ = post(g)
    ev = g.wait_event(evt, lambda e: delivery(e)["status"] == "failed")
    d = delivery(ev)
    assert [a["status_code"] for a in d["attempts"]] == [406]
    assert "406" in d["attempts"][0]["error"]
    time.sleep(1.0)
    assert sink.count == 1  # never retried


def test_500_retried_per_schedule_with_same_delivery_id_then_failed():
    sink = wb.Sink(default=500)
    g = gateway(sink.url, ', retry = {"0s", "500ms", "1s"}, jitter = false')
    evt, _ = post(g)
    ev = g.wait_event(evt, lambda e: delivery(e)["status"] == "failed", timeout=8)
    d = delivery(ev)
    reqs = sink.wait_for_count(3)
    assert {q.headers["x-waybill-delivery"] for q in reqs} == {d["id"]}
    assert [q.headers["x-waybill-attempt"] for q in reqs] == ["1", "2", "3"]
    g1, g2 = gaps(reqs)
    assert 0.45 <= g1 <= 1.2 and 0.95 <= g2 <= 1.8, (g1, g2)
    assert [a["n"] for a in d["attempts"]] == [1, 2, 3]
    time.sleep(0.5)
    assert sink.count == 3


def test_jitter_keeps_spacing_within_ten_percent():
    sink = wb.Sink([500, 500, 200])
    g = gateway(sink.url, ', retry = {"0s", "2s", "2s"}')
    evt, _ = post(g)
    reqs = sink.wait_for_count(3, timeout=10)
    for gap in gaps(reqs):
        assert 1.75 <= gap <= 2.5, gaps(reqs)  # 2 s +-10 %, plus scheduling slack
    g.wait_event(evt, lambda e: delivery(e)["status"] == "delivered")


def test_success_200_only_treats_202_as_failure():
    sink = wb.Sink([202, 200])
    g = gateway(sink.url, ', retry = {"0s", "300ms"}, jitter = false, success = "200"')
    evt, _ = post(g)
    ev = g.wait_event(evt, lambda e: delivery(e)["status"] == "delivered", timeout=5)
    assert [a["status_code"] for a in delivery(ev)["attempts"]] == [202, 200]


def test_429_and_503_retry_after_seconds_and_http_date_are_honoured():
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 3))
    sink = wb.Sink([(429, {"Retry-After": "2"}), (503, {"Retry-After": when}), 200])
    g = gateway(sink.url, ', retry = {"0s", "100ms", "100ms"}, jitter = false')
    evt, _ = post(g)
    reqs = sink.wait_for_count(3, timeout=12)
    g1, g2 = gaps(reqs)
    assert 1.9 <= g1 <= 3.0, g1            # Retry-After: 2 beat the 100 ms schedule
    assert reqs[2].time >= time.mktime(time.strptime(when, "%a, %d %b %Y %H:%M:%S GMT")) - time.timezone - 1.05
    ev = g.wait_event(evt, lambda e: delivery(e)["status"] == "delivered")
    assert [a["status_code"] for a in delivery(ev)["attempts"]] == [429, 503, 200]
    assert len({q.headers["x-waybill-delivery"] for q in reqs}) == 1


def test_redirect_is_not_followed_and_counts_as_failure():
    target = wb.Sink()
    sink = wb.Sink([(302, {"Location": target.url}), 200])
    g = gateway(sink.url, ', retry = {"0s", "300ms"}, jitter = false')
    evt, _ = post(g)
    ev = g.wait_event(evt, lambda e: delivery(e)["status"] == "delivered", timeout=5)
    a = delivery(ev)["attempts"]
    assert [x["status_code"] for x in a] == [302, 200]
    assert "redirect" in a[0]["error"]
    assert target.count == 0


def test_timeout_is_retried():
    sink = wb.Sink([wb.Reply(200, delay=2.0), 200])
    g = gateway(sink.url, ', timeout = "500ms", retry = {"0s", "300ms"}, jitter = false')
    evt, _ = post(g)
    ev = g.wait_event(evt, lambda e: delivery(e)["status"] == "delivered", timeout=8)
    a = delivery(ev)["attempts"]
    assert a[0]["status_code"] == 0 and "timed out" in a[0]["error"], a[0]
    assert 400 <= a[0]["latency_ms"] <= 1500, a[0]
    assert a[1]["status_code"] == 200


# ---- 410, disabled endpoints, held deliveries --------------------------------

def test_410_disables_endpoint_holds_new_events_and_enable_delivers_them():
    sink = wb.Sink([410])
    g = gateway(sink.url, ', retry = {"0s", "300ms"}, jitter = false')
    evt, _ = post(g)
    ev = g.wait_event(evt, lambda e: delivery(e)["status"] == "failed")
    assert [a["status_code"] for a in delivery(ev)["attempts"]] == [410]
    g.wait_for(lambda: endpoints(g)["erp"]["disabled"], message="endpoint disabled")
    ep = endpoints(g)["erp"]
    assert ep["enabled"] is False and "410" in ep["disabled_reason"], ep
    assert ep["last_error"] and "410" in ep["last_error"]

    held = [post(g, "tracking.in_transit", n=i)[0] for i in range(5)]
    for e in held:
        g.wait_event(e, lambda x: delivery(x)["status"] == "held")
    time.sleep(0.7)
    assert sink.count == 1  # nothing sent while disabled
    assert endpoints(g)["erp"]["held"] == 5

    # still disabled after a restart
    g.restart()
    assert endpoints(g)["erp"]["disabled"] is True
    post(g, "tracking.in_transit", n=99)
    time.sleep(0.5)
    assert sink.count == 1

    st, body = g.admin("POST", "/api/endpoints/erp/enable")
    assert st == 200 and body == {"name": "erp", "disabled": False}, (st, body)
    sink.wait_for_count(1 + 6, timeout=5)
    for e in held:
        g.wait_event(e, lambda x: delivery(x)["status"] == "delivered")
    ep = endpoints(g)["erp"]
    assert ep["enabled"] is True and ep["held"] == 0 and ep["pending"] == 0
    assert 0 < ep["success_rate"] < 1


def test_admin_disable_and_enable_and_their_errors():
    sink = wb.Sink()
    g = gateway(sink.url, extra=f'endpoint "off" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ERP_SECRET)}, enabled = false }}')
    st, body = g.admin("POST", "/api/endpoints/erp/disable")
    assert st == 200 and body["disabled"] is True, (st, body)
    evt, _ = post(g)
    g.wait_event(evt, lambda e: delivery(e)["status"] == "held")
    assert endpoints(g)["erp"]["disabled_reason"] == "disabled by the admin API"
    st, _ = g.admin("POST", "/api/endpoints/nope/enable")
    assert st == 404
    st, body = g.admin("POST", "/api/endpoints/off/enable")
    assert st == 409, (st, body)
    st, _ = g.admin("POST", "/api/endpoints/erp/enable", token="wrong")
    assert st == 401
    st, _ = g.admin("GET", "/api/endpoints", token=None)
    assert st == 401
    assert endpoints(g)["off"]["disabled"] is True
    time.sleep(0.3)
    assert sink.count == 0
    st, _ = g.admin("POST", "/api/endpoints/erp/enable")
    assert st == 200
    g.wait_event(evt, lambda e: delivery(e)["status"] == "delivered")


def test_disable_after_disables_an_endpoint_failing_every_attempt():
    sink = wb.Sink(default=500)
    g = gateway(sink.url, ', retry = {"0s", "400ms", "400ms", "400ms", "400ms", "400ms"},'
                          ' jitter = false, disable_after = "1s"')
    evt, _ = post(g)
    g.wait_for(lambda: endpoints(g)["erp"]["disabled"], timeout=6, message="disabled")
    ev = g.wait_event(evt, lambda e: delivery(e)["status"] == "held")
    n = len(delivery(ev)["attempts"])
    assert 3 <= n <= 5, n
    assert "every attempt failed" in endpoints(g)["erp"]["disabled_reason"]
    time.sleep(0.8)
    assert sink.count == n  # held: no more attempts
    sink.set_responses([], default=200)
    assert g.admin("POST", "/api/endpoints/erp/enable")[0] == 200
    ev = g.wait_event(evt, lambda e: delivery(e)["status"] == "delivered")
    assert delivery(ev)["attempts"][-1]["n"] == n + 1  # the count goes on


# ---- operational events ----------------------------------------------------

def test_operational_events_are_routed_by_rules_without_loops():
    chat = wb.Sink(default=500)  # the alert endpoint itself fails: no loop
    sink = wb.Sink([410], default=500)
    rules = '''
on("shipment.*", {"erp"})
on("waybill.*", {"chat"})
'''
    g = gateway(sink.url, ', retry = {"0s"}', rules=rules,
                extra=f'endpoint "chat" {{ url = {wb.lua(chat.url)}, secret = {wb.lua(ERP_SECRET)}, retry = {{ "0s", "200ms" }}, jitter = false }}')
    post(g, "shipment.delivered")
    reqs = chat.wait_for_count(2, timeout=5)
    types = {q.json()["type"] for q in reqs}
    assert types <= {"waybill.delivery.failed", "waybill.endpoint.disabled"}, types
    assert g.admin("POST", "/api/endpoints/erp/enable")[0] == 200
    post(g, "shipment.delivered")  # 500 once, retries exhausted -> delivery.failed
    wb.wait_for(lambda: {q.json()["type"] for q in chat.requests} >=
                {"waybill.delivery.failed", "waybill.endpoint.disabled", "waybill.endpoint.enabled"},
                timeout=6)
    failed = [q.json() for q in chat.requests if q.json()["type"] == "waybill.delivery.failed"][0]
    assert failed["source"] == "waybill" and failed["data"]["endpoint"] == "erp"
    assert failed["data"]["event_id"].startswith("evt_") and failed["data"]["attempts"] >= 1
    time.sleep(1.5)  # chat deliveries fail too, but produce no further events
    n = chat.count
    time.sleep(1.0)
    assert chat.count == n and n <= 8, n


def test_reload_failure_is_an_event():
    chat = wb.Sink()
    g = gateway(chat.url, rules='on("waybill.reload.failed", {"erp"})')
    g.write("rules/10-main.lua", "this is not lua")
    st, _ = g.admin("POST", "/api/reload")
    assert st == 422
    got = chat.wait_for_count(1)[0].json()
    assert got["type"] == "waybill.reload.failed" and got["data"]["error"]


# ---- ordering and limits ----------------------------------------------------

def test_ordered_endpoint_delivers_fifo_while_first_attempts_fail():
    sink = wb.Sink([500, 500, 503, 500], default=200)
    g = gateway(sink.url, ', ordered = true, retry = {"0s", "200ms", "200ms", "200ms", "200ms"}, jitter = false')
    sent = [post(g, "tracking.in_transit", n=i)[1] for i in range(50)]
    wb.wait_for(lambda: len([r for r in sink.requests if r.reply == 200]) >= 50, timeout=30)
    delivered = [r.json()["source_id"] for r in sink.requests if r.reply == 200]
    assert delivered == sent
    assert sink.max_concurrency == 1
    # the failing head was retried, the rest waited behind it
    firsts = [r.json()["source_id"] for r in sink.requests[:5]]
    assert firsts == [sent[0]] * 5, firsts


def test_ordered_backlog_larger_than_its_window_stays_in_order_and_flows():
    sink = wb.Sink()
    g = gateway(sink.url, ', ordered = true, retry = {"0s", "200ms"}, jitter = false')
    g.admin("POST", "/api/endpoints/erp/disable")
    sent = [post(g, "tracking.in_transit", n=i)[1] for i in range(300)]
    assert g.admin("POST", "/api/endpoints/erp/enable")[0] == 200
    sink.wait_for_count(300, timeout=20)
    assert [r.json()["source_id"] for r in sink.requests] == sent


def test_concurrency_2_never_exceeded():
    sink = wb.Sink(delay=0.1)
    g = gateway(sink.url, ', concurrency = 2')
    for i in range(30):
        post(g, "tracking.in_transit", n=i)
    sink.wait_for_count(30, timeout=15)
    assert sink.max_concurrency == 2, sink.max_concurrency


def test_rate_20_per_second_holds_within_10_percent():
    sink, slow = wb.Sink(), wb.Sink()
    # a slower rate-limited endpoint beside it must not slow it down
    g = gateway(sink.url, ', rate = 20', rules='on("*", {"erp", "slow"})',
                extra=f'endpoint "slow" {{ url = {wb.lua(slow.url)}, secret = {wb.lua(ERP_SECRET)}, rate = 1 }}')
    for i in range(100):
        post(g, "tracking.in_transit", n=i)
    reqs = sink.wait_for_count(65, timeout=10)
    start = reqs[3].mono  # past the initial burst (a tenth of a second)
    n = len([r for r in reqs if start <= r.mono < start + 3.0])
    assert 54 <= n <= 66, n
    assert 2 <= slow.count <= 6, slow.count


# ---- shutdown, SSRF, retention ----------------------------------------------

def test_sigterm_lets_slow_delivery_finish_and_exits_0():
    sink = wb.Sink(delay=2.0)
    g = gateway(sink.url, shutdown_grace="10s")
    evt, _ = post(g)
    wb.wait_for(lambda: sink.inflight == 1, timeout=5)
    t0 = time.monotonic()
    g.send_signal(signal.SIGTERM)
    rc = g.proc.wait(15)
    took = time.monotonic() - t0
    assert rc == 0, rc
    assert 1.0 <= took <= 6.0, took
    assert sink.count == 1 and sink.requests[0].reply == 200
    rows = [(status, attempts) for _, status, attempts in g.delivery_rows()]
    assert rows == [("delivered", 1)], rows
    assert "exited" not in g.log() or True


def test_sigterm_past_grace_keeps_the_delivery_pending_for_the_next_run():
    sink = wb.Sink([wb.Reply(200, delay=3.0)], default=200)
    g = gateway(sink.url, shutdown_grace="500ms")
    evt, _ = post(g)
    wb.wait_for(lambda: sink.inflight == 1, timeout=5)
    t0 = time.monotonic()
    g.send_signal(signal.SIGTERM)
    assert g.proc.wait(10) == 0
    assert time.monotonic() - t0 < 2.5
    rows = [(i, status) for i, status, _ in g.delivery_rows()]
    assert len(rows) == 1 and rows[0][1] == "pending", rows
    g.restart()
    ev = g.wait_event(evt, lambda e: delivery(e)["status"] == "delivered", timeout=8)
    assert delivery(ev)["id"] == rows[0][0]
    assert sink.requests[-1].headers["x-waybill-delivery"] == rows[0][0]


def test_ssrf_guard_refuses_loopback_unless_allowed():
    sink = wb.Sink()
    g = gateway(sink.url, ', retry = {"0s", "5s"}',
                allow_private=None)
    evt, _ = post(g)
    ev = g.wait_event(evt, lambda e: delivery(e)["attempts"])
    a = delivery(ev)["attempts"][0]
    assert a["status_code"] == 0 and "allow_private" in a["error"], a
    assert sink.count == 0
    sink2 = wb.Sink()
    g2 = gateway(sink2.url)
    evt, _ = post(g2)
    g2.wait_event(evt, lambda e: delivery(e)["status"] == "delivered")
    assert sink2.count == 1


def test_retention_prunes_delivered_events_and_keeps_dead_letters():
    sink = wb.Sink([406], default=200)
    g = gateway(sink.url, retention="1s")
    dead, _ = post(g)
    g.wait_event(dead, lambda e: delivery(e)["status"] == "failed")
    ok = [post(g, "tracking.in_transit", n=i)[0] for i in range(3)]
    for e in ok:
        g.wait_event(e, lambda x: delivery(x)["status"] == "delivered")
    g.wait_for(lambda: g.admin("GET", "/api/events/" + ok[-1])[0] == 404, timeout=6,
               message="delivered events pruned")
    assert all(g.admin("GET", "/api/events/" + e)[0] == 404 for e in ok)
    assert g.event(dead)["deliveries"][0]["status"] == "failed"


# ---- scale ------------------------------------------------------------------

def recount(db):
    """Rows inserted behind waybill's back: waybill counts the deliveries it
    inserts itself (per group, not by a trigger), so a test that fills the
    table directly sets delivery_counts as waybill would have."""
    db.execute("DELETE FROM delivery_counts")
    db.execute("INSERT INTO delivery_counts(status, n) SELECT status, count(*) FROM deliveries"
               " GROUP BY status")


@wb.sqlite_only("builds its million-row backlog with SQL on SQLite's schema (deliveries, delivery_counts); "
                "PostgreSQL's backlog and bloat figures are make bench's rows (issue 15, Measure)")
def test_million_pending_backlog_keeps_ingest_and_delivery_fast():
    """1,000,000 pending deliveries due tomorrow: due work is found by index,
    so new events are still answered and delivered at once."""
    sink = wb.Sink()
    g = gateway(sink.url, ', retry = {"0s", "1s"}')
    g.stop()
    db = sqlite3.connect(g.path("waybill.db"))
    t0 = time.monotonic()
    tomorrow = int(time.time() * 1000) + 86400000
    db.execute("""WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
                  INSERT INTO deliveries(id, event_id, endpoint, event_type, status, payload,
                                         next_at, created_at)
                  SELECT 'dlv_backlog_' || i, 'evt_backlog', 'erp', 'x', 'pending', '{}', ?1 + i, ?1
                  FROM n""", (tomorrow,))
    recount(db)
    db.commit()
    db.close()
    built = time.monotonic() - t0
    g.start()
    lat = []
    ids = []
    for i in range(100):
        t = time.monotonic()
        ids.append(post(g, "tracking.in_transit", n=i)[1])
        lat.append(time.monotonic() - t)
    sink.wait_for_count(100, timeout=10)
    assert {r.json()["source_id"] for r in sink.requests} == set(ids)
    lat.sort()

    def queue():
        # the sink has the 100th request a moment before waybill stores its outcome
        st, status = g.admin("GET", "/api/status")
        return status["queue"] if st == 200 and status["queue"]["delivered"] == 100 else None

    q = g.wait_for(queue, timeout=5, message="the 100 outcomes stored")
    assert q["pending"] == 1000000, q
    print("  backlog of 1e6 built in %.1fs; ingest p50 %.1f ms, max %.1f ms"
          % (built, lat[50] * 1000, lat[-1] * 1000), file=sys.__stderr__)
    assert lat[50] < 0.1 and lat[95] < 0.5, lat


def _old_backlog(g, n, old):
    """n delivered events received from old on (Unix ms), one delivery
    each, evt_old_7's failed (a dead letter), written with SQL on the
    store's own schema while the gateway is stopped."""
    pgdb = g._pg_db()
    if pgdb is not None:
        pgdb.sql("INSERT INTO events (id, source, source_id, type, status, received_at, data)"
                 " SELECT 'evt_old_' || i, 'atoship', 'old-' || i, 'x', 'routed', %d + i, '{}'"
                 " FROM generate_series(1, %d) AS i;"
                 " INSERT INTO deliveries (id, event_id, endpoint, payload, created_at)"
                 " SELECT 'dlv_old_' || seq, id, 'erp', '\\x7b7d', received_at FROM events"
                 " WHERE id LIKE 'evt_old_%%';"
                 " INSERT INTO delivery_outcomes (delivery_seq, status, attempts, at, endpoint)"
                 " SELECT d.seq, CASE WHEN d.event_id = 'evt_old_7' THEN 'failed'"
                 " ELSE 'delivered' END, 1, d.created_at, 'erp' FROM deliveries d"
                 " WHERE d.id LIKE 'dlv_old_%%'" % (old, n))
        return
    db = sqlite3.connect(g.path("waybill.db"))
    db.execute("""WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
                  INSERT INTO events(id, source, source_id, type, status, received_at, data)
                  SELECT 'evt_old_' || i, 'atoship', 'old-' || i, 'x', 'routed', ?1 + i, '{}' FROM n""",
               (old, n))
    db.execute("""INSERT INTO deliveries(id, event_id, endpoint, status, payload, next_at, created_at)
                  SELECT 'dlv_old_' || seq, id, 'erp', 'delivered', '{}', 0, received_at
                  FROM events WHERE id LIKE 'evt_old_%'""")
    db.execute("UPDATE deliveries SET status = 'failed' WHERE event_id = 'evt_old_7'")
    recount(db)
    db.commit()
    db.close()


def test_retention_prunes_a_large_backlog_in_batches_while_ingest_flows():
    sink = wb.Sink()
    g = gateway(sink.url, retention="1h")
    g.stop()
    _old_backlog(g, 50000, int(time.time() * 1000) - 2 * 3600 * 1000)
    g.start()
    lat = []
    for i in range(100):
        t = time.monotonic()
        post(g, "tracking.in_transit", n=i)
        lat.append(time.monotonic() - t)
    sink.wait_for_count(100, timeout=10)

    def left():
        return g.db_rows("SELECT count(*) FROM events WHERE id LIKE 'evt_old_%'")[0][0]
    g.wait_for(lambda: left() == 1, timeout=30, message="old delivered events pruned")
    assert g.event("evt_old_7")["deliveries"][0]["status"] == "failed"
    lat.sort()
    assert lat[50] < 0.1 and lat[95] < 0.5, lat
