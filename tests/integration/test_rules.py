"""Lua rules end to end (SPEC section 6): matching, fan-out, transforms,
batch windows, sandbox limits, hot reload, and the check/route commands.

Each test starts the real waybill binary and real receivers on 127.0.0.1.
"""
import json
import os
import re
import shutil
import threading
import time

import wb

SECRET = "atoship-test-secret"
KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def gateway(sinks, rules, endpoint_extra=None, start=True, **settings):
    """A gateway with one atoship source and one endpoint per sink name."""
    endpoint_extra = endpoint_extra or {}
    eps = "\n".join(
        f'endpoint "{name}" {{ url = {wb.lua(s.url)}, secret = {wb.lua(KEY)},'
        f' retry = {{"0s", "1s"}} {endpoint_extra.get(name, "")} }}'
        for name, s in sinks.items())
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        {eps}
        rules "rules/"
    ''', **settings)
    return wb.Gateway(cfg, files={"rules/10-main.lua": rules}, start=start)


def post(g, type, **data):
    r = g.post_atoship(wb.atoship_event(type, **data), SECRET)
    assert r.status == 200, r
    return r.json()["id"]


def settled(g, evt):
    return g.wait_event(evt, lambda e: e["status"] != "received")


def quiet(sink, n, seconds):
    """Asserts sink still has exactly n requests after seconds."""
    time.sleep(seconds)
    assert sink.count == n, [r.body for r in sink.requests]


# ---- matching, fan-out, transforms ----

def test_exact_glob_and_star_matching_all_handlers_run_in_order():
    a, b, c = wb.Sink(), wb.Sink(), wb.Sink()
    g = gateway({"a": a, "b": b, "c": c}, '''
        on("shipment.delivered", function(ev) send("a", {n = 1, t = ev.type}) end)
        on("shipment.*", function(ev) send("b", {n = 2, t = ev.type}) end)
        on("*", function(ev) send("c", {n = 3, t = ev.type}) end)
        on("shipment.delivered", function(ev) send("a", {n = 4, t = ev.type}) end)
    ''')
    e1 = post(g, "shipment.delivered")
    a.wait_for_count(2), b.wait_for_count(1), c.wait_for_count(1)
    ev = settled(g, e1)
    assert ev["status"] == "routed" and [d["endpoint"] for d in ev["deliveries"]] == ["a", "b", "c", "a"], ev
    assert sorted(r.json()["n"] for r in a.requests) == [1, 4]
    e2 = post(g, "shipment.cancelled")   # glob and star, not exact
    b.wait_for_count(2), c.wait_for_count(2)
    e3 = post(g, "tracking.in_transit")  # only star
    c.wait_for_count(3)
    assert [d["endpoint"] for d in settled(g, e2)["deliveries"]] == ["b", "c"]
    assert [d["endpoint"] for d in settled(g, e3)["deliveries"]] == ["c"]
    quiet(a, 2, 0.3)
    assert b.count == 2


def test_list_handlers_send_the_data_as_stored_byte_for_byte():
    """A list handler sends the event as the encoder writes it (keys in the
    order received, 1.0 as 1, escapes as JSON.stringify), whether or not a function handler
    ran before it; after one changed the event, the change is sent."""
    a, b = wb.Sink(), wb.Sink()
    g = gateway({"a": a, "b": b}, '''
        on("*", {"a"})
        on("*", function(ev) ev.data.added = json.array({}) end)
        on("*", "b")
    ''')
    body = (b'{"id":"evt_bytes_1","type":"shipment.delivered","created_at":"2026-01-02T03:04:05Z",'
            b'"data":{"z":1.0,"b":2.50,"big":123456789012345678901234567890,"e":1E21,'
            b'"s":"\\u00e9\xf0\x9f\x98\x80\\u0001\\/\\"","arr":[1,[],{},null],'
            b'"o":{},"10":"ten","2":"two","neg":-0.0,"t":true}}')
    r = g.post_atoship(body, SECRET)
    assert r.status == 200, r
    # keys as received (array indexes first, as JavaScript orders them)
    data = (b'{"2":"two","10":"ten","z":1,"b":2.5,"big":1.2345678901234568e+29,"e":1e+21,'
            b'"s":"\xc3\xa9\xf0\x9f\x98\x80\\u0001/\\"","arr":[1,[],{},null],'
            b'"o":{},"neg":0,"t":true}')
    got_a = a.wait_for_count(1)[0].body
    sent = json.loads(got_a)
    envelope = (b'{"created_at":"2026-01-02T03:04:05Z","data":%s,"id":"%s","received_at":"%s",'
                b'"shipment":{"status":"delivered"},'
                b'"source":"atoship","source_id":"evt_bytes_1","type":"shipment.delivered"}')
    assert got_a == envelope % (data, sent["id"].encode(), sent["received_at"].encode()), got_a
    got_b = b.wait_for_count(1)[0].body
    changed = data[:-1] + b',"added":[]}'  # a key a rule adds follows the received ones
    assert got_b == envelope % (changed, sent["id"].encode(), sent["received_at"].encode()), got_b


def test_handler_sees_the_data_as_stored_after_ingest():
    """A function handler gets the data as decoding the stored JSON gives
    it (1.0 as an integer, "1" keys as strings, [] as an array), though
    the ingest path hands it over without decoding again; an adapter that
    changes its table later does not reach it."""
    a = wb.Sink()
    g = gateway({"a": a}, '''
        on("*", function(ev)
          local d = ev.data
          send("a", { z = math.type(d.z), big = math.type(d.big), arr = getmetatable(d.arr),
                      key = math.type(next(d.o)) or type(next(d.o)), n = #d.arr,
                      e = getmetatable(d.e), s = d.s })
        end)
    ''')
    body = (b'{"id":"evt_seen_1","type":"shipment.delivered","created_at":"2026-01-02T03:04:05Z",'
            b'"data":{"z":1.0,"big":123456789012345678901234567890,"arr":[1,2.0],'
            b'"o":{"1":2},"e":{},"s":"x\\u00e9"}}')
    r = g.post_atoship(body, SECRET)
    assert r.status == 200, r
    got = json.loads(a.wait_for_count(1)[0].body)
    assert got == {"z": "integer", "big": "float", "arr": "json.array", "key": "string",
                   "n": 2, "s": "x\u00e9"}, got


def test_fan_out_transform_string_payload_and_headers():
    erp, crm, bi = wb.Sink(), wb.Sink(), wb.Sink()
    g = gateway({"erp": erp, "crm": crm, "bi": bi}, '''
        on("tracking.delivered", function(ev)
          send({"erp", "crm"}, { order = ev.data.order_id, at = ev.data.delivered_at,
                                 carrier = string.lower(ev.data.carrier) })
          send("bi", '{"raw":true, "kept":  "as is"}', { headers = { ["X-Tenant"] = "acme" } })
        end)
        on("shipment.*", { "erp", "crm" })
    ''')
    evt = post(g, "tracking.delivered", order_id="order_42", carrier="UPS",
               delivered_at="2026-01-02T03:04:05Z")
    for s in (erp, crm):
        got = s.wait_for_count(1)[0].json()
        assert got == {"order": "order_42", "at": "2026-01-02T03:04:05Z", "carrier": "ups"}, got
    req = bi.wait_for_count(1)[0]
    assert req.body == b'{"raw":true, "kept":  "as is"}'   # byte for byte
    assert req.headers["x-tenant"] == "acme"
    assert len(settled(g, evt)["deliveries"]) == 3
    # the shorthand sends the event unchanged to both
    post(g, "shipment.delivered", order_id="order_7")
    for s in (erp, crm):
        got = s.wait_for_count(2)[1].json()
        assert got["type"] == "shipment.delivered" and got["data"]["order_id"] == "order_7"


def test_filter_sends_nothing_and_event_is_unrouted():
    erp = wb.Sink()
    g = gateway({"erp": erp}, '''
        on("tracking.*", function(ev)
          if ev.data.carrier ~= "USPS" then return end
          send("erp", ev)
        end)
    ''')
    dropped = post(g, "tracking.in_transit", carrier="UPS")
    kept = post(g, "tracking.in_transit", carrier="USPS")
    erp.wait_for_count(1)
    assert settled(g, dropped)["status"] == "unrouted"
    assert settled(g, kept)["status"] == "routed"
    quiet(erp, 1, 0.3)


# ---- batch windows ----

def align(window_s, margin=0.15):
    """Sleeps until just after the start of a clock-aligned window."""
    t = time.time()
    time.sleep(window_s - (t % window_s) + margin)


def test_batch_window_one_post_with_all_events_after_close():
    wh = wb.Sink()
    g = gateway({"warehouse": wh}, '''
        on("tracking.*", function(ev) batch("warehouse", { tn = ev.data.tracking_number, t = ev.type }) end)
    ''', endpoint_extra={"warehouse": ', window = "2s"'})
    align(2)
    t0 = time.time()
    ids = [post(g, "tracking.in_transit", tracking_number="TN%d" % i) for i in range(5)]
    assert time.time() - t0 < 1.5, "posting took too long for one window"
    assert wh.count == 0                      # nothing before the window closes
    ev = g.event(ids[0])
    assert ev["status"] == "routed" and len(ev["deliveries"]) == 1, ev
    waiting = ev["deliveries"][0]
    assert waiting["status"] == "batching" and waiting["batch"] is True and waiting["id"] is None
    assert waiting["endpoint"] == "warehouse" and waiting["window_end"].endswith("Z"), waiting
    req = wh.wait_for_count(1, timeout=6)[0]
    got = req.json()
    assert got["type"] == "batch" and got["count"] == 5, got
    assert [e["tn"] for e in got["events"]] == ["TN%d" % i for i in range(5)]
    start = time.mktime(time.strptime(got["window_start"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    end = time.mktime(time.strptime(got["window_end"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert end - start == 2 and int(start) % 2 == 0 and start <= t0 < end, got
    assert req.headers["x-waybill-event-type"] == "batch"
    for evt in ids:
        ev = settled(g, evt)
        assert ev["status"] == "routed", ev
        assert [(d["endpoint"], d["batch"]) for d in ev["deliveries"]] == [("warehouse", True)], ev
    # later, empty windows send nothing
    quiet(wh, 1, 4.5)


def test_batch_per_call_window_and_max_batch_sends_early():
    wh = wb.Sink()
    g = gateway({"warehouse": wh}, '''
        on("tracking.*", function(ev) batch("warehouse", ev, "1h") end)
    ''', endpoint_extra={"warehouse": ', max_batch = 3'})
    ids = [post(g, "tracking.in_transit") for _ in range(3)]
    got = wh.wait_for_count(1, timeout=5)[0].json()   # full: sent without waiting an hour
    assert got["count"] == 3 and [e["id"] for e in got["events"]] == ids, got
    post(g, "tracking.in_transit")
    post(g, "tracking.in_transit")
    quiet(wh, 1, 1.0)                                 # 2 < max_batch: still open


def test_batch_survives_sigkill_and_is_sent_once_complete():
    wh = wb.Sink()
    g = gateway({"warehouse": wh}, '''
        on("tracking.*", function(ev) batch("warehouse", { id = ev.id }) end)
    ''', endpoint_extra={"warehouse": ', window = "3s"'})
    align(3)
    ids = [post(g, "tracking.in_transit") for _ in range(4)]
    g.kill9()
    assert wh.count == 0
    g.restart()
    req = wh.wait_for_count(1, timeout=10)[0]
    got = req.json()
    assert got["count"] == 4 and sorted(e["id"] for e in got["events"]) == sorted(ids), got
    quiet(wh, 1, 3.5)


def test_batch_window_already_past_at_restart_closes_at_once():
    wh = wb.Sink()
    g = gateway({"warehouse": wh}, '''
        on("*", function(ev) batch("warehouse", { id = ev.id }) end)
    ''', endpoint_extra={"warehouse": ', window = "2s"'})
    align(2)
    evt = post(g, "tracking.in_transit")
    g.stop()
    time.sleep(2.2)               # the window ended while waybill was down
    g.restart()
    t0 = time.time()
    got = wh.wait_for_count(1, timeout=5)[0].json()
    assert time.time() - t0 < 2.0 and got["count"] == 1 and got["events"][0]["id"] == evt
    quiet(wh, 1, 0.5)


# ---- sandbox limits ----

HOSTILE = {
    "t.loop": "while true do end",
    "t.pcall_loop": "pcall(function() while true do end end) send('erp', ev)",
    "t.rep_bomb": "local s = string.rep('x', 1 << 40) send('erp', {s = s})",
    "t.rep_doubling": "local s = 'x' for i = 1, 64 do s = s .. s end send('erp', {s = s})",
    "t.table_growth": "local t = {} local i = 0 while true do i = i + 1 t[i] = {i, i, i} end",
    "t.io_open": "local f = io.open('/etc/passwd') send('erp', {x = f:read('a')})",
    "t.os_execute": "os.execute('touch /tmp/waybill-pwned') send('erp', ev)",
    "t.require": "local m = require('os') send('erp', {x = m.getenv('HOME')})",
    "t.bytecode": "local f = load(string.dump(function() return 1 end)) send('erp', {x = f()})",
    "t.bytecode_mode": "local f = load('\\27Lua', 'x', 'b') send('erp', {x = f()})",
}


def test_hostile_rules_are_stopped_and_gateway_keeps_answering():
    erp = wb.Sink()
    rules = "\n".join(
        f'on({wb.lua("atoship." + t)}, function(ev) {code} end)' for t, code in HOSTILE.items())
    rules += '\non("atoship.ok.ping", {"erp"})\n'
    g = gateway({"erp": erp}, rules)
    for t in HOSTILE:
        evt = post(g, t)
        ev = settled(g, evt)
        assert ev["status"] == "rule_error", (t, ev)
        assert "rules/10-main.lua:" in ev["error"], (t, ev["error"])
        assert ev["deliveries"] == [], (t, ev)
        # the next request is answered at once
        t0 = time.monotonic()
        st, _ = g.admin("GET", "/healthz")
        took = time.monotonic() - t0
        assert st == 200 and took < (0.5 if wb.ASAN else 0.1), (t, took)
    assert not os.path.exists("/tmp/waybill-pwned")
    post(g, "ok.ping")
    erp.wait_for_count(1)
    quiet(erp, 1, 0.2)


# ---- reload ----

def test_sighup_changes_routing_and_syntax_error_keeps_old_rules():
    a, b = wb.Sink(), wb.Sink()
    g = gateway({"a": a, "b": b}, 'on("*", {"a"})')
    post(g, "tracking.in_transit")
    a.wait_for_count(1)
    g.write("rules/10-main.lua", 'on("*", function(ev) send("b", {changed = true}) end)')
    g.sighup()
    g.wait_for(lambda: g.admin("GET", "/api/status")[1]["reloads"] == 1)
    post(g, "tracking.in_transit")
    assert b.wait_for_count(1)[0].json() == {"changed": True}
    g.write("rules/10-main.lua", 'on("*", {"a"})\n\non("x", function(ev)\n  send("a" ev)\nend)\n')
    g.sighup()
    g.wait_for(lambda: g.admin("GET", "/api/status")[1]["reload_failures"] == 1)
    st, status = g.admin("GET", "/api/status")
    assert re.search(r"rules/10-main\.lua:4:", status["last_reload_error"]), status
    post(g, "tracking.in_transit")      # still the second generation
    b.wait_for_count(2)
    quiet(a, 1, 0.3)


def test_events_during_20_reloads_are_each_routed_once():
    a, b = wb.Sink(), wb.Sink()
    g = gateway({"a": a, "b": b}, 'on("*", {"a"})')
    n = 500
    ids = []
    errors = []

    def sender():
        try:
            for i in range(n):
                r = g.post_atoship(wb.atoship_event("tracking.in_transit", order_id="o%d" % i),
                                   SECRET)
                if r.status != 200:
                    errors.append(r)
                else:
                    ids.append(r.json()["id"])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    th = threading.Thread(target=sender)
    th.start()
    for i in range(20):   # one reload every 20 events, while they stream in
        wb.wait_for(lambda: len(ids) >= i * 20 or errors or not th.is_alive(), timeout=60)
        g.write("rules/10-main.lua", 'on("*", {"%s"})' % ("b" if i % 2 == 0 else "a"))
        st, body = g.admin("POST", "/api/reload")
        assert st == 200, body
    assert th.is_alive(), "the reloads did not overlap the stream"
    th.join(timeout=120)
    assert not th.is_alive() and not errors, errors[:3]
    assert len(ids) == n
    wb.wait_for(lambda: a.count + b.count >= n, timeout=60,
                message=lambda: "got %d of %d" % (a.count + b.count, n))
    quiet_total = a.count + b.count
    time.sleep(0.5)
    assert a.count + b.count == quiet_total == n
    got = sorted(r.json()["id"] for r in a.requests + b.requests)
    assert got == sorted(ids)          # each event exactly once, by a or by b
    st, status = g.admin("GET", "/api/status")
    assert status["reloads"] == 20


# ---- commands ----

def test_check_reports_file_line_of_broken_rule():
    erp = wb.Sink()
    g = gateway({"erp": erp}, 'on("*", {"erp"})\nlocal x = = 1\n', start=False)
    r = g.cli("check")
    assert r.returncode == 1
    assert re.search(r"rules/10-main\.lua:2:", r.stderr.decode()), r.stderr
    g.write("rules/10-main.lua", 'on("*", function(ev) send("nope", ev) end)\n')
    assert g.cli("check").returncode == 0   # unknown endpoints are found when routing
    g.write("rules/10-main.lua", 'on("*", {"erp"})\n')
    assert g.cli("check").returncode == 0


def test_route_prints_planned_deliveries_and_sends_nothing():
    erp, wh = wb.Sink(), wb.Sink()
    g = gateway({"erp": erp, "warehouse": wh}, '''
        on("tracking.delivered", function(ev)
          send("erp", { order = ev.data.order_id }, { headers = { ["X-Tenant"] = "acme" } })
          batch("warehouse", ev, "10m")
        end)
        on("shipment.delivered", function(ev) error("boom") end)
    ''', start=False)
    g.write("event.json", wb.atoship_event("tracking.delivered", order_id="order_9"))
    r = g.cli("route", "--source", "atoship", "event.json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["event"]["type"] == "tracking.delivered" and out["event"]["source"] == "atoship"
    assert out["event"]["data"]["order_id"] == "order_9"
    d = out["deliveries"]
    assert [x["endpoint"] for x in d] == ["erp", "warehouse"], d
    assert d[0]["payload"] == {"order": "order_9"} and d[0]["window"] is None
    assert d[0]["headers"]["X-Tenant"] == "acme"
    assert d[1]["window"]["ms"] == 600000 and d[1]["window"]["start"].endswith(("0:00Z", "0:00.000Z")), d[1]
    assert d[1]["payload"]["type"] == "tracking.delivered"
    time.sleep(0.3)
    assert erp.count == 0 and wh.count == 0
    assert not g.store_opened()   # no store opened
    g.write("bad.json", wb.atoship_event("shipment.delivered"))
    r = g.cli("route", "--source", "atoship", "bad.json")
    assert r.returncode == 1 and b"rules/10-main.lua:" in r.stderr and b"boom" in r.stderr, r.stderr
    r = g.cli("route", "--source", "nope", "event.json")
    assert r.returncode == 1 and b"nope" in r.stderr


def test_init_writes_a_starter_that_checks_and_routes():
    d = wb._mkdtemp("wb-init-")
    target = os.path.join(d, "site")
    r = wb.run("init", target)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(os.path.join(target, "waybill.lua"))
    assert os.path.exists(os.path.join(target, "rules", "10-routes.lua"))
    cfg = os.path.join(target, "waybill.lua")
    r = wb.run("check", "-c", cfg)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(d, "ev.json"), "wb") as f:
        f.write(wb.atoship_event("shipment.delivered"))
    r = wb.run("route", "-c", cfg, "--source", "atoship", os.path.join(d, "ev.json"))
    assert r.returncode == 0, r.stderr
    assert [x["endpoint"] for x in json.loads(r.stdout)["deliveries"]] == ["erp"]
    r = wb.run("init", target)          # never overwrites
    assert r.returncode == 1 and b"exists" in r.stderr


def test_test_rules_command_reports_failures():
    d = wb._mkdtemp("wb-rt-")
    f = os.path.join(d, "x.test")
    with open(f, "w") as fh:
        fh.write('on("*", {"erp"})\n\n{"type":"a.b","data":{}}\n\n[{"endpoint":"crm"}]\n\n'
                 'on("*", {"erp"})\n\n{"type":"a.b","data":{}}\n\n[{"endpoint":"erp"}]\n')
    r = wb.run("test-rules", f)
    out = r.stdout.decode()
    assert r.returncode == 1 and out.splitlines()[-1] == "1 passed, 1 failed", out
    assert "x.test:1:" in out and "want crm" in out, out
    with open(f, "w") as fh:   # errors point into the .test file
        fh.write('# c\n\non("*", function(ev)\n  error("bad")\nend)\n\n{"type":"a.b","data":{}}\n\n[]\n')
    out = wb.run("test-rules", f).stdout.decode()
    assert "x.test:4: bad" in out, out


EXAMPLE_ENV = {
    "WAYBILL_ADMIN_TOKEN": "t", "ATOSHIP_SECRET": "a", "AFTERSHIP_SECRET": "b",
    "SHIPTIFY_SECRET": "c", "SHOP_SECRET": "d",
    "ERP_SECRET": "whsec_ZGV2LWVycC1zZWNyZXQtZm9yLXdheWJpbGw=",
    "CRM_SECRET": "whsec_ZGV2LWNybS1zZWNyZXQtZm9yLXdheWJpbGw=",
    "ALERTS_SECRET": "whsec_ZGV2LWFsZXJ0cy1zZWNyZXQtZm9yLXdheWI=",
    "WAREHOUSE_SECRET": "whsec_ZGV2LXdhcmVob3VzZS1zZWNyZXQtZm9yLXc=",
}


def test_example_config_checks_and_routes_like_a_merchant_wants():
    # on a copy of examples/: the assertion at the end (route opens no store)
    # must not depend on what a `make run` left in the tree
    ex = os.path.join(wb._mkdtemp("wb-examples-"), "examples")
    shutil.copytree(os.path.join(wb.ROOT, "examples"), ex,
                    ignore=shutil.ignore_patterns("*.db", "*.db-*"))
    cfg = os.path.join(ex, "waybill.lua")
    r = wb.run("check", "-c", cfg, env=EXAMPLE_ENV)
    assert r.returncode == 0, r.stderr
    assert b"5 sources" in r.stdout, r.stdout
    d = wb._mkdtemp("wb-ex-")

    def plan(type, **data):
        f = os.path.join(d, type + ".json")
        with open(f, "wb") as fh:
            fh.write(wb.atoship_event(type, **data))
        r = wb.run("route", "-c", cfg, "--source", "atoship", f, env=EXAMPLE_ENV)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["deliveries"]

    got = plan("tracking.delivered", order_id="order_1")
    assert [x["endpoint"] for x in got] == ["erp", "crm", "warehouse"], got
    assert got[0]["payload"]["order"] == "order_1" and got[1]["payload"]["event"] == "parcel_delivered"
    assert got[2]["window"]["ms"] == 60000
    got = plan("shipment.exception", exception_reason="damaged")
    assert [x["endpoint"] for x in got] == ["erp", "alerts"], got
    assert "damaged" in got[1]["payload"]["text"] and got[1]["headers"]["X-Alert-Severity"] == "high"
    got = plan("tracking.in_transit")
    assert [(x["endpoint"], x["window"]["ms"]) for x in got] == [("warehouse", 60000)], got
    assert sorted(f for f in os.listdir(os.path.dirname(ex)) if f != "examples") == [], \
        "route created a store"
    assert not [f for f in os.listdir(ex) if ".db" in f]


def test_reload_adds_endpoint_and_open_window_keeps_its_length():
    wh, new = wb.Sink(), wb.Sink()
    g = gateway({"warehouse": wh}, 'on("*", function(ev) batch("warehouse", { id = ev.id }) end)',
                endpoint_extra={"warehouse": ', window = "2s"'})
    align(2)
    first = post(g, "tracking.in_transit")
    with open(g.config_path) as f:
        text = f.read().replace('window = "2s"', 'window = "1h"')
    g.write("waybill.lua", text + 'endpoint "new" { url = %s, secret = %s }\n' % (
        wb.lua(new.url), wb.lua(KEY)))
    g.write("rules/10-main.lua", 'on("*", function(ev) batch("warehouse", { id = ev.id })'
                                 ' send("new", { id = ev.id }) end)')
    g.sighup()
    g.wait_for(lambda: g.admin("GET", "/api/status")[1]["reloads"] == 1)
    second = post(g, "tracking.in_transit")
    assert new.wait_for_count(1)[0].json() == {"id": second}
    got = wh.wait_for_count(1, timeout=6)[0].json()     # the 2s window still closes
    assert got["count"] == 1 and got["events"] == [{"id": first}], got
    ev = g.event(second)
    assert [(d["endpoint"], d["batch"]) for d in ev["deliveries"]] == [
        ("new", False), ("warehouse", True)], ev
    assert ev["deliveries"][1]["status"] == "batching", ev
    quiet(wh, 1, 1.0)                                    # the second waits for its hour
