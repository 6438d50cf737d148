"""The admin API's JSON as admin.c renders it from the store's rows: the
event detail and the pages keep their keys in their order, a response body
that is not UTF-8 is shown with U+FFFD (the document stays valid UTF-8),
and an event waiting in an open batch window lists the window.

These checks were on the store's JSON until the store returned rows."""
import http.client
import json

import wb

SECRET = "atoship-test-secret"
ERP_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

EVENT_KEYS = ["id", "source", "source_id", "type", "status", "received_at", "created_at",
              "shipment", "data", "error", "matched", "deliveries", "raw", "headers"]
DELIVERY_KEYS = ["id", "endpoint", "status", "batch", "attempts", "payload", "content_type",
                 "event_type"]
WAITING_KEYS = ["id", "endpoint", "status", "batch", "window_end", "attempts"]
ATTEMPT_KEYS = ["n", "at", "status_code", "latency_ms", "error", "response"]
EVENT_ROW_KEYS = ["id", "source", "source_id", "type", "status", "received_at", "created_at",
                  "error"]
DELIVERY_ROW_KEYS = ["id", "event_id", "endpoint", "event_type", "status", "attempts", "next_at",
                     "created_at", "last_status_code", "last_error"]


def raw_get(g, path):
    """(status, body bytes) of an admin GET."""
    c = http.client.HTTPConnection("127.0.0.1", g.admin_port, timeout=10)
    try:
        c.request("GET", path, headers={"Authorization": "Bearer " + g.token})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def ordered(body):
    """The body parsed strictly as UTF-8 JSON, objects as lists of (key, value)."""
    return json.loads(body.decode("utf-8", "strict"), object_pairs_hook=list)


def keys(pairs):
    return [k for k, _ in pairs]


def get(pairs, key):
    return dict(pairs)[key]


def test_event_detail_keys_in_order_and_a_latin1_response_as_utf8():
    sink = wb.Sink([(503, {}, b"busy caf\xe9 \xff end"), (200, {}, b"ok")])
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ERP_SECRET)},
                          sign = "standard", retry = {{ "0s", "0s" }} }}
        rules "rules/"
    ''')
    g = wb.Gateway(cfg, files={"rules/10-main.lua": 'on("shipment.*", {"erp"})\n'})
    r = g.post_atoship(wb.atoship_event("shipment.delivered"), SECRET)
    assert r.status == 200, r
    eid = r.json()["id"]
    g.wait_event(eid, lambda e: e["deliveries"] and e["deliveries"][0]["status"] == "delivered")

    st, body = raw_get(g, "/api/events/" + eid)
    assert st == 200
    ev = ordered(body)
    assert keys(ev) == EVENT_KEYS, keys(ev)
    d = get(ev, "deliveries")[0]
    assert keys(d) == DELIVERY_KEYS, keys(d)
    att = get(d, "attempts")
    assert [keys(a) for a in att] == [ATTEMPT_KEYS, ATTEMPT_KEYS]
    # the Latin-1 byte and the stray 0xff: replaced, the rest kept
    assert get(att[0], "response") == "busy caf\ufffd \ufffd end"
    assert get(att[0], "status_code") == 503 and get(att[0], "error") == "HTTP 503"
    assert get(att[1], "response") == "ok" and get(att[1], "error") is None
    assert get(d, "batch") is False and get(d, "content_type") == "application/json"

    st, body = raw_get(g, "/api/events")
    page = ordered(body)
    assert keys(page) == ["data", "next"]
    assert keys(get(page, "data")[0]) == EVENT_ROW_KEYS
    st, body = raw_get(g, "/api/deliveries")
    page = ordered(body)
    row = get(page, "data")[0]
    assert keys(row) == DELIVERY_ROW_KEYS
    assert get(row, "next_at") is None and get(row, "last_status_code") == 200
    assert get(row, "last_error") is None and get(row, "attempts") == 2


def test_event_waiting_in_an_open_batch_window_lists_it():
    sink = wb.Sink()
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        endpoint "wms" {{ url = {wb.lua(sink.url)}, sign = "hex", secret = "s1", window = "1h" }}
        rules "rules/"
    ''')
    g = wb.Gateway(cfg, files={"rules/10-main.lua": 'on("*", function(ev) batch("wms", ev) end)\n'})
    r = g.post_atoship(wb.atoship_event("shipment.delivered"), SECRET)
    assert r.status == 200, r
    eid = r.json()["id"]
    ev = g.wait_event(eid, lambda e: e["deliveries"])
    st, body = raw_get(g, "/api/events/" + eid)
    assert st == 200
    d = get(ordered(body), "deliveries")
    assert len(d) == 1 and keys(d[0]) == WAITING_KEYS, d
    assert get(d[0], "id") is None and get(d[0], "endpoint") == "wms"
    assert get(d[0], "status") == "batching" and get(d[0], "batch") is True
    assert get(d[0], "attempts") == [] and get(d[0], "window_end").endswith(":00:00Z")
    assert ev["status"] == "routed"
