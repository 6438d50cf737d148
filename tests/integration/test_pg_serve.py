"""`waybill serve` on PostgreSQL (issue 15): the real binary on a real
PostgreSQL 15 (pg.py), real sinks. What a carrier and an operator see:
200 only once the event is committed (another connection reads it at
once), deliveries with retries and order, a batch window closed once,
kill -9 and restart, the database stopped under load (503s, nothing
acknowledged lost, recovery without a restart), and two instances on one
database with one SIGKILLed: every acknowledged event reaches the sink.
"""

import json
import threading
import time

import pg
import wb

SECRET = "pg-serve-secret"
ERP_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def gateway(db, sink_url, endpoint_extra="", rules='on("*", {"erp"})', start=True,
            **settings):
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(sink_url)}, secret = {wb.lua(ERP_SECRET)}
                          {endpoint_extra} }}
        rules "rules/"
    ''', store=db.url, **settings)
    return wb.Gateway(cfg, files={"rules/10-main.lua": rules}, start=start)


def post(g, type="shipment.delivered", body=None, **data):
    body = body or wb.atoship_event(type, **data)
    r = g.post_atoship(body, SECRET)
    assert r.status == 200, r
    return r.json()["id"], json.loads(body)["id"]


def delivered_source_ids(sink):
    return [r.json()["source_id"] for r in sink.requests if r.reply == 200]


def test_events_commit_before_200_are_delivered_and_shown_by_the_admin_api():
    db = pg.database()
    sink = wb.Sink()
    g = gateway(db, sink.url)
    ids = []
    for i in range(5):
        body = wb.atoship_event("tracking.in_transit", n=i)
        evt, src = post(g, body=body)
        # answered 200: another connection sees the event and its delivery
        assert db.sql("SELECT e.status, count(d.id) FROM events e JOIN deliveries d"
                      " ON d.event_id = e.id WHERE e.id = '%s' GROUP BY e.status" % evt) \
            == [["routed", "1"]]
        ids.append((evt, src, body))
    # a carrier's retry: the first copy's id, stored once
    evt0, _, body0 = ids[0]
    r = g.post_atoship(body0, SECRET)
    assert r.status == 200 and r.json() == {"id": evt0, "duplicate": True}, r
    assert db.sql("SELECT count(*) FROM events") == [["5"]]
    sink.wait_for_count(5, timeout=10)
    assert sorted(delivered_source_ids(sink)) == sorted(src for _, src, _ in ids)
    assert len({q.headers["x-waybill-delivery"] for q in sink.requests}) == 5
    # the admin API reads the committed state from the database
    st, page = g.admin("GET", "/api/events")
    assert st == 200 and [e["id"] for e in page["data"]] == [e for e, _, _ in reversed(ids)], page
    ev = g.wait_event(evt0, lambda e: e["deliveries"][0]["status"] == "delivered", timeout=10)
    d = ev["deliveries"][0]
    assert d["endpoint"] == "erp" and [a["status_code"] for a in d["attempts"]] == [200], ev
    st, dl = g.admin("GET", "/api/deliveries?status=delivered")
    assert st == 200 and len(dl["data"]) == 5, dl
    assert wb.http_request(g.admin_port, "GET", "/healthz").status == 200


def test_retries_keep_the_delivery_id_and_an_ordered_endpoint_stays_in_order():
    db = pg.database()
    sink = wb.Sink([500, 500], default=200)
    g = gateway(db, sink.url, ', retry = {"0s", "300ms", "300ms"}, jitter = false')
    evt, _ = post(g)
    reqs = sink.wait_for_count(3, timeout=10)
    assert len({q.headers["x-waybill-delivery"] for q in reqs}) == 1, reqs
    assert [q.headers["x-waybill-attempt"] for q in reqs] == ["1", "2", "3"]
    ev = g.wait_event(evt, lambda e: e["deliveries"][0]["status"] == "delivered", timeout=10)
    assert [a["status_code"] for a in ev["deliveries"][0]["attempts"]] == [500, 500, 200]
    g.stop()

    db = pg.database()
    osink = wb.Sink([500, 503], default=200)
    g = gateway(db, osink.url, ', ordered = true, retry = {"0s", "200ms", "200ms"}, jitter = false')
    sent = [post(g, "tracking.in_transit", n=i)[1] for i in range(20)]
    wb.wait_for(lambda: len(delivered_source_ids(osink)) >= 20, timeout=20)
    got = delivered_source_ids(osink)
    assert got == sent, [sent.index(s) for s in got]
    assert osink.max_concurrency == 1
    assert [r.json()["source_id"] for r in osink.requests[:3]] == [sent[0]] * 3


def test_a_batch_window_closes_once_and_max_batch_sends_a_full_one_early():
    db = pg.database()
    wh = wb.Sink()
    g = gateway(db, wh.url, ', window = "2s"',
                rules='on("*", function(ev) batch("erp", { n = ev.data.n }) end)')
    # all in one window: start just after a window began
    time.sleep(2 - time.time() % 2 + 0.05)
    for i in range(5):
        post(g, "tracking.in_transit", n=i)
    got = wh.wait_for_count(1, timeout=8)[0].json()
    assert got["type"] == "batch" and got["count"] == 5, got
    assert sorted(e["n"] for e in got["events"]) == list(range(5))
    time.sleep(1.5)
    assert wh.count == 1  # closed once
    assert db.sql("SELECT count(*) FROM batch_items WHERE delivery_id IS NULL") == [["0"]]
    assert db.sql("SELECT count(DISTINCT delivery_id) FROM batch_items") == [["1"]]
    g.stop()
    # max_batch: a full window goes at once (its count comes with the
    # event's answer), not at the end of its hour
    db = pg.database()
    full = wb.Sink()
    g = gateway(db, full.url, ', max_batch = 3',
                rules='on("*", function(ev) batch("erp", { n = ev.data.n }, "1h") end)')
    for i in range(4):
        post(g, "tracking.in_transit", n=i)
    got = full.wait_for_count(1, timeout=5)[0].json()
    assert got["count"] == 3 and sorted(e["n"] for e in got["events"]) == [0, 1, 2], got
    time.sleep(1.0)
    assert full.count == 1  # the fourth waits in the next batch of the window


def _poster(g, stop, acked, codes, n_max=10 ** 6, timeout=3):
    """Posts events until stop is set; acked gets the carrier id of each 200."""
    i = 0
    while not stop.is_set() and i < n_max:
        body = wb.atoship_event("tracking.in_transit", n=i)
        i += 1
        try:
            r = wb.http_request(g.port, "POST", "/hooks/atoship", body=body,
                                headers=wb.atoship_headers(SECRET, body), timeout=timeout)
        except Exception:  # the gateway was killed mid-request
            codes.append(0)
            time.sleep(0.05)
            continue
        codes.append(r.status)
        if r.status == 200:
            acked.append(json.loads(body)["id"])
        else:
            time.sleep(0.05)


def test_kill9_mid_stream_and_restart_delivers_every_acknowledged_event():
    db = pg.database()
    sink = wb.Sink(delay=0.05)
    g = gateway(db, sink.url, ', retry = {"0s", "300ms"}, jitter = false', lease="2s")
    stop, acked, codes = threading.Event(), [], []
    t = threading.Thread(target=_poster, args=(g, stop, acked, codes))
    t.start()
    wb.wait_for(lambda: len(acked) >= 30 and sink.count >= 5, timeout=15)
    g.kill9()
    stop.set()
    t.join()
    g.restart()
    # its leases expire (lease = 2s) and the new process takes them
    wb.wait_for(lambda: set(acked) <= set(delivered_source_ids(sink)), timeout=20,
                message="every acknowledged event delivered after kill -9")


def test_postgresql_stopped_for_5s_answers_503_loses_nothing_and_recovers():
    cluster = pg.Cluster(own=True)
    db = pg.Database(cluster)
    sink = wb.Sink()
    g = gateway(db, sink.url, ', retry = {"0s", "300ms", "1s"}, jitter = false')
    stop, acked, codes = threading.Event(), [], []
    t = threading.Thread(target=_poster, args=(g, stop, acked, codes))
    t.start()
    try:
        wb.wait_for(lambda: len(acked) >= 20, timeout=10)
        cluster.stop()
        down_at = len(codes)
        time.sleep(1.0)
        health = wb.http_request(g.admin_port, "GET", "/healthz")
        assert health.status == 503, health
        time.sleep(4.0)
        cluster.start()
        n_before = len(acked)
        wb.wait_for(lambda: len(acked) >= n_before + 20, timeout=20,
                    message="200s again after the database came back (no restart)")
    finally:
        stop.set()
        t.join()
    assert 503 in codes[down_at:], codes[down_at:]
    assert set(codes) <= {200, 503}, set(codes)
    assert g.running()
    wb.wait_for(lambda: set(acked) <= set(delivered_source_ids(sink)), timeout=20,
                message="every acknowledged event delivered")
    # every 200 is a committed event
    stored = {r[0] for r in db.sql("SELECT source_id FROM events")}
    assert set(acked) <= stored
    assert wb.http_request(g.admin_port, "GET", "/healthz").status == 200


def test_two_instances_one_sigkilled_every_acknowledged_event_delivered():
    db = pg.database()
    sink = wb.Sink(delay=0.05)
    extra = ', retry = {"0s", "300ms"}, jitter = false'
    a = gateway(db, sink.url, extra, lease="2s")
    b = gateway(db, sink.url, extra, lease="2s")
    stop, acked, codes = threading.Event(), [], []
    ta = threading.Thread(target=_poster, args=(a, stop, acked, codes))
    tb = threading.Thread(target=_poster, args=(b, stop, acked, codes))
    ta.start()
    tb.start()
    try:
        wb.wait_for(lambda: len(acked) >= 40 and sink.count >= 10, timeout=15)
        a.kill9()
        time.sleep(0.5)
    finally:
        stop.set()
        ta.join()
        tb.join()
    # b finds a's rows (its watchdog reads, every second) and a's leases
    # once they expire (2 s)
    wb.wait_for(lambda: set(acked) <= set(delivered_source_ids(sink)), timeout=20,
                message="every acknowledged event delivered by the survivor")
    got = delivered_source_ids(sink)
    # the same event twice only from a lease that expired mid-flight (a's,
    # or one whose outcome did not commit within it): each such takeover is
    # counted by the instance that made it (b survived; a's count died)
    dups = {s for s in got if got.count(s) > 1}
    st, metrics = b.admin("GET", "/metrics")
    takeovers = sum(float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith("waybill_delivery_lease_takeovers_total"))
    assert len(dups) <= takeovers, (len(dups), takeovers, dups)
    # and the rows of requests a was answering when it died (committed, the
    # 200 lost with it) once their leases expire: nothing is left pending
    wb.wait_for(lambda: b.admin("GET", "/api/deliveries?status=pending")[1]["data"] == [],
                timeout=10, message="nothing left pending")


def test_events_left_received_are_routed_once_by_two_instances_recovering_at_once():
    """Events a crash (or an older binary) left "received" are routed by the
    recovery sweep of whichever instance starts; two starting at once both
    read them: the first routing to commit wins and the other writes
    nothing (it used to route each again as a replay: every event sent
    twice, under two delivery ids)."""
    db = pg.database()
    sink = wb.Sink()
    first = gateway(db, sink.url)
    _, src = post(first, "tracking.in_transit")
    sink.wait_for_count(1, timeout=10)
    assert first.stop() == 0
    # 40 copies of that event's row, as an ingest that stored them and
    # never routed them would have left them
    n = 40
    db.sql("INSERT INTO events (id, source, source_id, type, status, created_at, received_at,"
           " headers, data, raw, shipment) SELECT 'evt_rcv_' || i, source, source_id || '-' || i,"
           " type, 'received', created_at, received_at, headers, data, raw, shipment"
           " FROM events, generate_series(1, %d) i WHERE source_id = '%s'" % (n, src))
    # a slow rule (a few ms per event) keeps the two sweeps' routings of
    # the same events in flight together
    slow = ('on("*", function(ev) local x = 0 for i = 1, 300000 do x = x + i end'
            ' send("erp", ev) end)')
    a = gateway(db, sink.url, rules=slow, start=False)
    b = gateway(db, sink.url, rules=slow, start=False)
    a.start(wait=False)
    b.start(wait=False)
    a.wait_healthy()
    b.wait_healthy()
    ids = ["evt_rcv_%d" % i for i in range(1, n + 1)]
    wb.wait_for(lambda: all(a.event(i)["status"] == "routed" for i in ids), timeout=15,
                message="every received event routed")
    sink.wait_for_count(1 + n, timeout=15)
    time.sleep(1.0)  # a second routing's deliveries would be sent by now
    got = [r.json()["source_id"] for r in list(sink.requests)[1:]]
    assert sorted(got) == sorted("%s-%d" % (src, i) for i in range(1, n + 1)), \
        ("each event once", len(got), len(set(got)))
    for i in ids[:5]:
        assert len(b.event(i)["deliveries"]) == 1, b.event(i)
    assert a.stop() == 0 and b.stop() == 0


def test_the_example_config_runs_as_two_instances_on_one_database_as_the_readme_shows():
    """README, "Running several instances": examples/waybill.lua with
    WAYBILL_STORE, WAYBILL_LISTEN, WAYBILL_ADMIN_LISTEN and WAYBILL_PIDFILE
    set, `waybill migrate`, then two `waybill serve` of the same file; an
    event posted to one is read through the other, one killed with
    SIGKILL, the other goes on taking and showing events."""
    import os
    import signal
    import subprocess
    db = pg.database()
    ex = os.path.join(wb.ROOT, "examples", "waybill.lua")
    d = wb._mkdtemp("wb-two-")
    r = wb.run("migrate", "-c", ex, env={"WAYBILL_STORE": db.url})
    assert r.returncode == 0 and b"created schema version" in r.stdout, r
    insts = []
    try:
        for i in range(2):
            port, admin = wb.free_port(), wb.free_port()
            env = dict(os.environ, WAYBILL_STORE=db.url, WAYBILL_LISTEN="127.0.0.1:%d" % port,
                       WAYBILL_ADMIN_LISTEN="127.0.0.1:%d" % admin,
                       WAYBILL_PIDFILE=os.path.join(d, "w%d.pid" % i))
            env.pop("WAYBILL_ADMIN_TOKEN", None)
            log = open(os.path.join(d, "w%d.log" % i), "wb")
            p = subprocess.Popen([wb._bin(), "serve", "-c", ex], env=env, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log)
            insts.append((p, port, admin))
        for p, port, admin in insts:
            wb.wait_for(lambda: wb.http_request(admin, "GET", "/healthz", timeout=2).status == 200,
                        timeout=wb.START_TIMEOUT, message="both instances serving")

        def post(port):
            body = wb.atoship_event("tracking.in_transit")
            r = wb.http_request(port, "POST", "/hooks/atoship", body,
                                wb.atoship_headers("dev-atoship-secret", body))
            assert r.status == 200, r
            return r.json()["id"]

        def shown(admin, eid):
            return wb.http_request(admin, "GET", "/api/events/" + eid,
                                   headers={"Authorization": "Bearer dev-admin-token"}).status

        first = post(insts[0][1])
        assert shown(insts[1][2], first) == 200
        insts[0][0].send_signal(signal.SIGKILL)
        insts[0][0].wait(10)
        second = post(insts[1][1])
        assert shown(insts[1][2], first) == 200 and shown(insts[1][2], second) == 200
    finally:
        for p, _, _ in insts:
            if p.poll() is None:
                p.terminate()
                p.wait(20)
