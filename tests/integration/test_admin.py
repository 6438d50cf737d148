"""The admin API (SPEC section 8): lists, detail, replay, retry, test events,
subscriptions in ShipEngine's shape, /metrics, and the CLI wrappers.

Every test starts the real binary and real receivers on 127.0.0.1."""
import json
import socket

import wb

ERP_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
# the default rules shipped in rules/: every event to its subscribers
with open(wb.ROOT + "/rules/00-subscribers.lua") as _f:
    DEFAULT_RULES = _f.read()
ATOSHIP_SECRET = "atoship-test-secret"


def gateway(sink_url, rules='on("*", {"erp"})', endpoint_extra="", files=None):
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(ATOSHIP_SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(sink_url)}, secret = {wb.lua(ERP_SECRET)},
                          sign = "standard" {endpoint_extra} }}
        rules "rules/"
    ''')
    f = {"rules/10-main.lua": rules}
    f.update(files or {})
    return wb.Gateway(cfg, files=f)


def ingest(g, type="shipment.delivered", **data):
    r = g.post_atoship(wb.atoship_event(type, **data), ATOSHIP_SECRET)
    assert r.status == 200, r
    return r.json()["id"]


def parse_prometheus(text):
    """{(name, frozenset(labels.items())): value}; checks every line's syntax."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert line == "" or line.startswith("# HELP ") or line.startswith("# TYPE "), line
            continue
        head, value = line.rsplit(" ", 1)
        labels = {}
        if "{" in head:
            name, rest = head.split("{", 1)
            assert rest.endswith("}"), line
            rest = rest[:-1]
            while rest:
                k, rest = rest.split("=", 1)
                assert rest.startswith('"'), line
                i, v = 1, ""
                while rest[i] != '"':
                    if rest[i] == "\\":
                        i += 1
                        v += {"n": "\n"}.get(rest[i], rest[i])
                    else:
                        v += rest[i]
                    i += 1
                labels[k] = v
                rest = rest[i + 1:].lstrip(",")
        else:
            name = head
        samples[(name, frozenset(labels.items()))] = float(value)
    return samples


def metric_sum(samples, name, **match):
    return sum(v for (n, labels), v in samples.items()
               if n == name and all((k, val) in labels for k, val in match.items()))


def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return "http://127.0.0.1:%d/hook" % port


def error_text(path, body):
    """An error answer's message: ShipEngine's shape on its routes, else {"error"}."""
    if path.startswith("/v1/environment/webhooks"):
        assert set(body) == {"request_id", "errors"} and len(body["errors"]) == 1, body
        return body["errors"][0]["message"]
    assert set(body) == {"error"}, body
    return body["error"]


def sub_secret(g, webhook_id):
    """A subscription's signing secret (GET /api/subscriptions/{id})."""
    st, sub = g.admin("GET", "/api/subscriptions/" + webhook_id)
    assert st == 200, sub
    return sub["secret"]


# ---- auth, errors ----

def test_every_route_needs_the_token():
    sink = wb.Sink()
    g = gateway(sink.url)
    routes = [("GET", "/api/events"), ("GET", "/api/events/evt_x"),
              ("POST", "/api/events/evt_x/replay"), ("GET", "/api/deliveries"),
              ("POST", "/api/deliveries/dlv_x/retry"), ("POST", "/api/endpoints/erp/test"),
              ("GET", "/v1/environment/webhooks"), ("POST", "/v1/environment/webhooks"),
              ("GET", "/v1/environment/webhooks/se-x"), ("PUT", "/v1/environment/webhooks/se-x"),
              ("DELETE", "/v1/environment/webhooks/se-x"), ("GET", "/api/subscriptions"),
              ("GET", "/api/subscriptions/se-x"), ("POST", "/api/subscriptions/se-x/rotate"),
              ("GET", "/metrics")]
    for method, path in routes:
        for token in (None, "wrong-token", wb.ADMIN_TOKEN + "x"):
            st, body = g.admin(method, path, {"type": "tracking.delivered"}, token=token)
            assert st == 401, (method, path, token, st, body)
            assert "test-token" not in json.dumps(body)
    st, _ = g.admin("GET", "/healthz", token=None)
    assert st == 200


def test_unknown_ids_are_404_and_bad_input_400():
    sink = wb.Sink()
    g = gateway(sink.url)
    for method, path in [("GET", "/api/events/evt_nope"), ("POST", "/api/events/evt_nope/replay"),
                         ("POST", "/api/deliveries/dlv_nope/retry"),
                         ("GET", "/v1/environment/webhooks/se-nope"),
                         ("DELETE", "/v1/environment/webhooks/se-nope"),
                         ("GET", "/api/subscriptions/se-nope"),
                         ("POST", "/api/subscriptions/se-nope/rotate"),
                         ("GET", "/api/nothing")]:
        st, body = g.admin(method, path)
        assert st == 404, (method, path, st, body)
        assert error_text(path, body), body
    st, body = g.admin("PUT", "/v1/environment/webhooks/se-nope", {"url": sink.url})
    assert st == 404, body
    st, body = g.admin("POST", "/api/endpoints/nope/test", {"type": "tracking.delivered"})
    assert st == 404, body
    bad = [("POST", "/v1/environment/webhooks", "{not json"),
           ("POST", "/v1/environment/webhooks", "[1, 2]"),
           ("POST", "/v1/environment/webhooks", {"url": "ftp://x/", "event": "track"}),
           ("POST", "/v1/environment/webhooks", {"url": sink.url}),
           ("POST", "/v1/environment/webhooks", {"url": sink.url, "event": "Not An Event"}),
           ("POST", "/v1/environment/webhooks", {"url": sink.url, "event": "track", "secret": "x"}),
           ("GET", "/api/subscriptions?limit=0", None), ("GET", "/api/subscriptions?after=x", None),
           ("POST", "/api/endpoints/erp/test", "{oops"),
           ("POST", "/api/endpoints/erp/test", {"type": "no.such_type"}),
           ("POST", "/api/endpoints/erp/test", {}),
           ("GET", "/api/events?limit=0", None), ("GET", "/api/events?limit=abc", None),
           ("GET", "/api/events?after=xyz", None), ("GET", "/api/events?status=bogus", None),
           ("GET", "/api/deliveries?status=bogus", None)]
    for method, path, body in bad:
        st, resp = g.admin(method, path, body)
        assert st == 400, (method, path, body, st, resp)
        msg = error_text(path, resp)
        assert isinstance(msg, str) and msg and "\n" not in msg
    assert sink.count == 0


# ---- events: list, paging, detail, replay ----

def test_250_events_paged_by_100_arrive_once_newest_first():
    sink = wb.Sink()
    g = gateway(sink.url, rules="-- no rules\n")
    ids = [ingest(g, "tracking.in_transit") for _ in range(250)]
    seen, after, pages = [], None, 0
    while True:
        path = "/api/events?limit=100" + ("&after=" + after if after else "")
        st, page = g.admin("GET", path)
        assert st == 200, page
        assert set(page) == {"data", "next"}
        pages += 1
        assert len(page["data"]) == (100 if pages < 3 else 50), (pages, len(page["data"]))
        seen += [e["id"] for e in page["data"]]
        after = page["next"]
        if after is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))
    # a new event arriving mid-way does not disturb the cursor
    st, first = g.admin("GET", "/api/events?limit=100")
    ingest(g, "tracking.delivered")
    st, second = g.admin("GET", "/api/events?limit=100&after=" + first["next"])
    assert [e["id"] for e in second["data"]] == list(reversed(ids))[100:200]
    # limit is capped at 500
    for _ in range(250):
        ingest(g, "tracking.in_transit")
    st, big = g.admin("GET", "/api/events?limit=100000")
    assert st == 200 and len(big["data"]) == 500 and big["next"] is not None
    st, rest = g.admin("GET", "/api/events?limit=100000&after=" + big["next"])
    assert len(rest["data"]) == 1 and rest["next"] is None
    assert rest["data"][0]["id"] == ids[0]


def test_event_filters_and_detail():
    sink = wb.Sink()
    g = gateway(sink.url, rules='on("shipment.*", {"erp"})')
    a = ingest(g, "shipment.delivered")
    b = ingest(g, "tracking.in_transit")
    g.wait_event(a, lambda e: e["deliveries"] and e["deliveries"][0]["status"] == "delivered")
    st, page = g.admin("GET", "/api/events?type=tracking.*")
    assert [e["id"] for e in page["data"]] == [b], page
    st, page = g.admin("GET", "/api/events?status=unrouted")
    assert [e["id"] for e in page["data"]] == [b], page
    st, page = g.admin("GET", "/api/events?source=atoship&status=routed")
    assert [e["id"] for e in page["data"]] == [a], page
    st, page = g.admin("GET", "/api/events?source=nobody")
    assert page == {"data": [], "next": None}
    st, ev = g.admin("GET", "/api/events/" + a)
    assert st == 200
    raw = json.loads(ev["raw"])
    assert raw["type"] == "shipment.delivered" and ev["data"] == raw["data"]
    assert ev["headers"]["x-atoship-signature"] or ev["headers"]["X-Atoship-Signature"]
    d = ev["deliveries"][0]
    assert d["endpoint"] == "erp" and d["payload"]["id"] == a and d["payload"]["data"] == raw["data"]
    att = d["attempts"][0]
    assert att["n"] == 1 and att["status_code"] == 200 and att["latency_ms"] >= 0
    assert att["response"] == "ok" and att["at"].endswith("Z")


def test_replay_routes_again_with_current_rules():
    sink = wb.Sink()
    g = gateway(sink.url, rules="-- nothing yet\n")
    eid = ingest(g, "shipment.delivered")
    g.wait_event(eid, lambda e: e["status"] == "unrouted")
    g.write("rules/10-main.lua", 'on("shipment.*", {"erp"})\n')
    st, body = g.admin("POST", "/api/reload")
    assert st == 200, body
    st, ev = g.admin("POST", "/api/events/%s/replay" % eid)
    assert st == 200, ev
    assert ev["status"] == "routed" and len(ev["deliveries"]) == 1, ev
    got = sink.wait_for_count(1)[0]
    assert got.json()["id"] == eid
    # again: a second, new delivery
    st, ev = g.admin("POST", "/api/events/%s/replay" % eid)
    assert st == 200 and len(ev["deliveries"]) == 2
    sink.wait_for_count(2)
    assert len({d["id"] for d in ev["deliveries"]}) == 2


# ---- deliveries: list, retry ----

def test_failed_delivery_listed_and_retried():
    sink = wb.Sink([500])
    g = gateway(sink.url, endpoint_extra=', retry = { "0s" }')
    eid = ingest(g)
    ev = g.wait_event(eid, lambda e: e["deliveries"] and e["deliveries"][0]["status"] == "failed")
    did = ev["deliveries"][0]["id"]
    st, page = g.admin("GET", "/api/deliveries?status=failed&endpoint=erp")
    assert st == 200 and [d["id"] for d in page["data"]] == [did], page
    d = page["data"][0]
    assert d["event_id"] == eid and d["attempts"] == 1 and d["last_status_code"] == 500
    st, page = g.admin("GET", "/api/deliveries?status=delivered")
    assert page["data"] == []
    st, page = g.admin("GET", "/api/deliveries?endpoint=other")
    assert page["data"] == []
    st, body = g.admin("POST", "/api/deliveries/%s/retry" % did)
    assert st == 200 and body["status"] == "pending", body
    got = sink.wait_for_count(2)[1]
    assert got.headers["X-Waybill-Attempt"] == "2"
    assert got.headers["X-Waybill-Delivery"] == did
    ev = g.wait_event(eid, lambda e: e["deliveries"][0]["status"] == "delivered")
    assert [a["n"] for a in ev["deliveries"][0]["attempts"]] == [1, 2]
    # only a failed delivery can be retried
    st, body = g.admin("POST", "/api/deliveries/%s/retry" % did)
    assert st == 409, body


# ---- test events ----

def test_test_event_goes_straight_to_the_endpoint():
    sink = wb.NodeSink("standard", ERP_SECRET)
    g = gateway(sink.url, rules="-- rules send nothing\n")
    st, ev = g.admin("POST", "/api/endpoints/erp/test", {"type": "tracking.out_for_delivery"})
    assert st == 202, ev
    assert ev["type"] == "tracking.out_for_delivery" and len(ev["deliveries"]) == 1
    got = sink.wait_for_count(1)[0]
    assert got.valid, got.reason
    body = got.json()
    assert body["type"] == "tracking.out_for_delivery" and body["test"] is True
    assert body["data"]["tracking_number"] and body["data"]["status"] == "out_for_delivery"
    assert got.headers["x-waybill-event-type"] == "tracking.out_for_delivery"


# ---- subscriptions ----

def test_subscription_receives_next_matching_event():
    verifier = wb.Sink()
    g = gateway(verifier.url, rules=DEFAULT_RULES)
    st, sub = g.admin("POST", "/v1/environment/webhooks", {"url": verifier.url, "event": "track"})
    assert st == 200, sub
    assert set(sub) == {"webhook_id", "url", "event"}
    assert sub["event"] == "track" and sub["url"] == verifier.url
    sub["secret"] = sub_secret(g, sub["webhook_id"])
    assert sub["secret"].startswith("whsec_")
    # the verification POST came first, signed with the new secret
    probe = verifier.wait_for_count(1)[0]
    assert wb.verify_standard(sub["secret"], probe.headers, probe.body)
    assert probe.json()["type"] == "webhook.verification"

    # move it to a receiver that verifies with standardwebhooks (PUT re-verifies)
    receiver = wb.NodeSink("standard", sub["secret"])
    st, body = g.admin("PUT", "/v1/environment/webhooks/" + sub["webhook_id"], {"url": receiver.url})
    assert st == 204 and body is None, body
    assert g.admin("GET", "/v1/environment/webhooks/" + sub["webhook_id"])[1]["url"] == receiver.url
    assert receiver.wait_for_count(1)[0].valid

    ingest(g, "shipment.delivered")  # not a tracking event: not sent to it
    eid = ingest(g, "tracking.delivered")
    got = receiver.wait_for_count(2)[1]
    assert got.valid, got.reason
    assert got.json()["id"] == eid and got.json()["type"] == "tracking.delivered"
    assert len(receiver.requests) == 2 and verifier.count == 1


def test_subscription_crud_409_422_and_durability():
    ok = wb.Sink()
    failing = wb.Sink(default=500)
    g = gateway(ok.url, rules=DEFAULT_RULES)
    st, a = g.admin("POST", "/v1/environment/webhooks", {"url": ok.url, "event": "tracking.*"})
    assert st == 200, a
    a["secret"] = sub_secret(g, a["webhook_id"])
    # the alias stands for the same pattern: 409
    st, body = g.admin("POST", "/v1/environment/webhooks", {"url": ok.url, "event": "track"})
    assert st == 409, body
    st, body = g.admin("POST", "/v1/environment/webhooks", {"url": ok.url, "event": "tracking.*"})
    assert st == 409, body
    # a URL that does not answer 200, or does not answer at all: 422, nothing stored
    st, body = g.admin("POST", "/v1/environment/webhooks", {"url": failing.url, "event": "batch"})
    assert st == 422 and "500" in error_text("/v1/environment/webhooks", body), body
    st, body = g.admin("POST", "/v1/environment/webhooks",
                       {"url": closed_port_url(), "event": "batch"})
    assert st == 422, body
    st, b = g.admin("POST", "/v1/environment/webhooks", {"url": ok.url, "event": "rate"})
    assert st == 200, b
    st, lst = g.admin("GET", "/v1/environment/webhooks")
    assert st == 200 and isinstance(lst, list)
    assert [(w["webhook_id"], w["event"]) for w in lst] == \
        [(a["webhook_id"], "tracking.*"), (b["webhook_id"], "rate")]
    assert all(set(w) == {"webhook_id", "url", "event"} for w in lst)
    # PUT to a URL that fails verification keeps the old one
    st, body = g.admin("PUT", "/v1/environment/webhooks/" + a["webhook_id"], {"url": failing.url})
    assert st == 422, body
    st, one = g.admin("GET", "/v1/environment/webhooks/" + a["webhook_id"])
    assert st == 200 and one["url"] == ok.url and one["event"] == "tracking.*"
    st, body = g.admin("PUT", "/v1/environment/webhooks/" + a["webhook_id"], {"nourl": 1})
    assert st == 400
    # durable across a kill -9
    g.kill9()
    g.restart()
    st, lst = g.admin("GET", "/v1/environment/webhooks")
    assert len(lst) == 2
    st, _ = g.admin("DELETE", "/v1/environment/webhooks/" + b["webhook_id"])
    assert st == 204
    st, _ = g.admin("GET", "/v1/environment/webhooks/" + b["webhook_id"])
    assert st == 404
    g.restart()
    st, lst = g.admin("GET", "/v1/environment/webhooks")
    assert [w["webhook_id"] for w in lst] == [a["webhook_id"]]
    # after the restart it still routes
    n = ok.count
    eid = ingest(g, "tracking.in_transit")
    got = ok.wait_for_count(n + 1)[n]
    assert got.json()["id"] == eid
    assert wb.verify_standard(a["secret"], got.headers, got.body)


# ---- metrics ----

def test_metrics_count_exactly_n_ingests_and_m_deliveries():
    sink = wb.Sink()
    g = gateway(sink.url, rules='on("tracking.*", {"erp"})')
    ids = [ingest(g, t) for t in ["tracking.in_transit", "shipment.created", "tracking.delivered",
                                   "order.imported", "tracking.exception", "shipment.delivered",
                                   "tracking.accepted"]]
    body = wb.atoship_event()
    assert g.post_atoship(body, "wrong-secret").status == 401
    assert g.post_atoship(body, ATOSHIP_SECRET).status == 200  # an 8th event, unrouted
    dup = g.post_atoship(body, ATOSHIP_SECRET)  # a duplicate is not a new event
    assert dup.status == 200 and dup.json()["duplicate"] is True
    for eid in ids:
        g.wait_event(eid, lambda e: e["status"] != "received" and
                     all(d["status"] == "delivered" for d in e["deliveries"]))
    samples = parse_prometheus(g.metrics())
    assert metric_sum(samples, "waybill_events_received_total") == 8
    assert metric_sum(samples, "waybill_events_received_total", source="atoship") == 8
    assert metric_sum(samples, "waybill_events_rejected_total", reason="signature") == 1
    # the duplicate was answered 200: counted as one, not as a rejection
    assert metric_sum(samples, "waybill_events_rejected_total") == 1
    assert metric_sum(samples, "waybill_events_duplicate_total", source="atoship") == 1
    assert metric_sum(samples, "waybill_deliveries_total", outcome="delivered") == 4
    assert metric_sum(samples, "waybill_deliveries_total", endpoint="erp", outcome="delivered") == 4
    assert metric_sum(samples, "waybill_deliveries_total", type="tracking.delivered") == 1
    assert metric_sum(samples, "waybill_deliveries_total", outcome="failed") == 0
    assert samples[("waybill_delivery_attempt_duration_seconds_count", frozenset())] == 4
    assert samples[("waybill_delivery_attempt_duration_seconds_bucket",
                    frozenset({("le", "+Inf")}))] == 4
    assert samples[("waybill_queue_depth", frozenset({("state", "delivered")}))] == 4
    assert samples[("waybill_queue_depth", frozenset({("state", "pending")}))] == 0
    assert samples[("waybill_reloads_total", frozenset())] == 0
    assert samples[("waybill_rule_errors_total", frozenset())] == 0
    assert samples[("waybill_store_commit_duration_seconds_count", frozenset())] >= 1
    # the commits wrote pages to the write-ahead log (issue 16: WAL bytes per
    # event): SQLite's WAL, the process's own (PostgreSQL's is the server's)
    if not wb.PG:
        assert samples[("waybill_store_wal_frames_total", frozenset())] >= 1


def test_metrics_count_413s_and_shiptify_replays_as_rejections_not_duplicates():
    import time
    sink = wb.Sink()
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(ATOSHIP_SECRET)} }}
        source "shiptify" {{ verify = "shiptify", secret = "sy-new", tolerance = "10m" }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ERP_SECRET)} }}
        rules "rules/"
    ''', max_body="2KiB")
    g = wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"erp"})'})
    big = b'{"pad":"' + b"x" * 4096 + b'"}'
    assert g.post("/hooks/atoship", big, wb.atoship_headers(ATOSHIP_SECRET, big)).status == 413
    # announced too large (headers only), and too large on an unknown path
    r = wb.http_request(g.port, "POST", "/hooks/atoship", b"", wb.atoship_headers(ATOSHIP_SECRET, b""),
                        content_length=10 << 20)
    assert r.status == 413, r
    assert g.post("/hooks/nope", big, {}).status == 413
    body = wb.shiptify_body("sy-new", {"event_type": "create_shipment", "shipment": {"id": 1}},
                            timestamp=str(int(time.time())))
    assert g.post("/hooks/shiptify", body, {}).status == 200
    again = g.post("/hooks/shiptify", body, {})               # same token, same body: a duplicate
    assert again.status == 200 and again.json()["duplicate"] is True, again
    replay = wb.compact(dict(json.loads(body), event_type="delivery_notification"))
    for _ in range(2):                                          # same token, other body: a replay
        r = g.post("/hooks/shiptify", replay, {})
        assert r.status == 401, r
    samples = parse_prometheus(g.metrics())
    rejected = {dict(labels).get("source", "") + "/" + dict(labels)["reason"]: v
                for (n, labels), v in samples.items() if n == "waybill_events_rejected_total"}
    assert rejected == {"atoship/too_large": 2, "/too_large": 1, "shiptify/replay": 2}, rejected
    assert metric_sum(samples, "waybill_events_duplicate_total", source="shiptify") == 1
    assert metric_sum(samples, "waybill_events_received_total") == 1


def test_metrics_count_retries_failures_reloads():
    sink = wb.Sink([500, 500])
    g = gateway(sink.url, endpoint_extra=', retry = { "0s", "100ms" }')
    eid = ingest(g)
    g.wait_event(eid, lambda e: e["deliveries"] and e["deliveries"][0]["status"] == "failed")
    st, _ = g.admin("POST", "/api/reload")
    assert st == 200
    g.write("rules/10-main.lua", "this is not lua(")
    st, _ = g.admin("POST", "/api/reload")
    assert st == 422
    samples = parse_prometheus(g.metrics())
    assert metric_sum(samples, "waybill_delivery_retries_total", endpoint="erp") == 1
    assert metric_sum(samples, "waybill_deliveries_total", endpoint="erp", outcome="failed") == 1
    assert samples[("waybill_reloads_total", frozenset())] == 1
    assert samples[("waybill_reload_failures_total", frozenset())] == 1
    assert samples[("waybill_queue_depth", frozenset({("state", "failed")}))] == 1


# ---- CLI ----

def test_cli_lists_a_failed_delivery_and_retries_it():
    sink = wb.Sink([500])
    g = gateway(sink.url, endpoint_extra=', retry = { "0s" }')
    eid = ingest(g, "tracking.delivered")
    ev = g.wait_event(eid, lambda e: e["deliveries"] and e["deliveries"][0]["status"] == "failed")
    did = ev["deliveries"][0]["id"]

    r = g.cli("events", "--failed")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    line = [l for l in out.splitlines() if did in l]
    assert line and "erp" in line[0] and "500" in line[0], out
    assert out.splitlines()[0].split()[:2] == ["DELIVERY", "EVENT"], out

    r = g.cli("events", "--failed", "--json")
    assert r.returncode == 0, r.stderr
    assert [d["id"] for d in json.loads(r.stdout)["data"]] == [did]

    r = g.cli("event", eid)
    assert r.returncode == 0 and did in r.stdout.decode() and "failed" in r.stdout.decode()

    # the sink recovered: the retry goes through
    r = g.cli("retry", did)
    assert r.returncode == 0, r.stderr
    got = sink.wait_for_count(2, timeout=15)[1]
    assert got.headers["X-Waybill-Attempt"] == "2"
    g.wait_event(eid, lambda e: e["deliveries"][0]["status"] == "delivered")
    r = g.cli("events", "--failed")
    assert did not in r.stdout.decode()

    r = g.cli("retry", "dlv_nope")
    assert r.returncode == 1 and b"no such delivery" in r.stderr

    r = g.cli("replay", eid)
    assert r.returncode == 0, r.stderr
    sink.wait_for_count(3, timeout=15)
    r = g.cli("test", "erp", "shipment.created")
    assert r.returncode == 0, r.stderr
    got = sink.wait_for_count(4, timeout=15)[3]
    assert got.json()["type"] == "shipment.created" and got.json()["test"] is True

    r = g.cli("events")
    assert r.returncode == 0 and eid in r.stdout.decode()
    assert r.stdout.decode().splitlines()[0].split() == ["EVENT", "TYPE", "SOURCE", "STATUS",
                                                         "RECEIVED"]
    r = g.cli("events", "extra-arg")
    assert r.returncode == 2 and b"usage" in r.stderr
    r = g.cli("event", "evt_x", "--token", "wrong")
    assert r.returncode == 1 and b"401" in r.stderr


def test_verification_post_does_not_block_the_loop_and_is_ssrf_guarded():
    import threading
    import time
    slow = wb.Sink(delay=1.5)
    sink = wb.Sink()
    g = gateway(sink.url)
    result = {}

    def create():
        result["r"] = g.admin("POST", "/v1/environment/webhooks",
                              {"url": slow.url, "event": "tracking.*"}, timeout=10)
    t = threading.Thread(target=create)
    t.start()
    slow.wait_for_count(1)  # the verification POST is in flight, unanswered
    t0 = time.monotonic()
    ingest(g)
    st, _ = g.admin("GET", "/api/status")
    assert st == 200 and time.monotonic() - t0 < 1.0, "the loop waited for the verification"
    t.join()
    assert result["r"][0] == 200, result

    # without allow_private, a loopback subscription URL is refused after DNS
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(ATOSHIP_SECRET)} }}
        rules "rules/"
    ''', allow_private=None)
    g2 = wb.Gateway(cfg, files={"rules/00.lua": DEFAULT_RULES})
    st, body = g2.admin("POST", "/v1/environment/webhooks", {"url": sink.url, "event": "track"})
    assert st == 422 and "private" in error_text("/v1/environment/webhooks", body), body
    st, lst = g2.admin("GET", "/v1/environment/webhooks")
    assert lst == []


def test_deliveries_page_with_a_cursor():
    sink = wb.Sink()
    g = gateway(sink.url)
    ids = [ingest(g) for _ in range(3)]
    for eid in ids:
        g.wait_event(eid, lambda e: e["deliveries"] and e["deliveries"][0]["status"] == "delivered")
    st, p1 = g.admin("GET", "/api/deliveries?limit=2")
    assert st == 200 and len(p1["data"]) == 2 and p1["next"], p1
    st, p2 = g.admin("GET", "/api/deliveries?limit=2&after=" + p1["next"])
    assert st == 200 and len(p2["data"]) == 1 and p2["next"] is None, p2
    assert [d["event_id"] for d in p1["data"] + p2["data"]] == list(reversed(ids))
