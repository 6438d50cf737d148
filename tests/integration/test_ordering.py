"""Order per shipment (issue 20; SPEC section 7 and the README's "Ordered by
key"): an endpoint with `ordered = "data.tracking_number"` (or a key
function) delivers the events of one key one at a time, in the order
waybill received them, while different keys go out in parallel; a failing
head blocks its key only; a key whose head failed for good is blocked,
shown by the admin API and /metrics, and released by retry or skip.

Real binary, real receivers (schedsink: asyncio servers on one background
loop). Each key's events are posted in order by one carrier connection
(each waits for its 200), so the order waybill received them in is known;
keys are posted from several connections at once.
"""
import json
import os
import random
import re
import threading
import time

import schedsink
import wb
from test_scheduler import SECRET, gateway, say

TIMEOUT = 120
SCALE = 2.0 if wb.ASAN else 1.0
FAST_RETRY = ', retry = { "0s", "20ms", "20ms", "20ms", "20ms", "20ms", "20ms", "20ms", "20ms" }'


def key_of(req):
    return req.json()["data"]["tracking_number"]


def seq_of(req):
    return req.json()["data"]["n"]


def post_keys(g, keys, per_key, connections):
    """Posts per_key events for every key, each key's in order (n = 0, 1, ...)
    from one connection; keys spread over `connections` threads. Returns
    {key: [carrier id by n]}."""
    out = {k: [] for k in keys}
    errors = []

    def run(my_keys):
        try:
            p = schedsink.Poster(g, SECRET)
            for n in range(per_key):
                for k in my_keys:
                    out[k].append(p.post_event("tracking.in_transit", tracking_number=k, n=n)[1])
            p.close()
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(keys[i::connections],)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors, errors
    return out


def check_order(sink, keys, per_key):
    """Every key's events were delivered, each n first answered 2xx in order,
    and no request of a key started before the previous event of that key
    had its 2xx answer (one in flight per key, FIFO)."""
    by_key = {}
    for r in sink.snapshot():
        if r.reply is None and not r.abandoned:
            continue
        by_key.setdefault(key_of(r), []).append(r)
    for k in keys:
        reqs = sorted(by_key.get(k, []), key=lambda r: r.mono)
        ok_n = [seq_of(r) for r in reqs if r.ok]
        firsts = []
        for n in ok_n:
            if n not in firsts:
                firsts.append(n)
        assert firsts == list(range(per_key)), "key %s: first successes in the order %s" % (k, firsts)
        done_at = {}
        for r in reqs:
            n = seq_of(r)
            if n > 0:
                prev = done_at.get(n - 1)
                assert prev is not None and r.mono >= prev - 0.001, (
                    "key %s: event %d was sent before event %d was delivered" % (k, n, n - 1))
            if r.ok and n not in done_at:
                done_at[n] = r.done


def test_1000_events_over_50_keys_arrive_in_order_per_key_and_keys_run_in_parallel():
    rnd = random.Random(20)
    lock = threading.Lock()

    def behaviour(req):
        with lock:
            delay = rnd.uniform(0, 0.020)
            status = 500 if rnd.random() < 0.10 else 200
        return status, delay

    sink = schedsink.Sink(behaviour=behaviour)
    g = gateway({"erp": (sink.url, ', ordered = "data.tracking_number", concurrency = 32'
                 + FAST_RETRY + ', jitter = false')},
                'on("tracking.*", { "erp" })')
    keys = ["TN%02d" % i for i in range(50)]
    with g:
        t0 = time.monotonic()
        post_keys(g, keys, 20, connections=10)
        sink.wait_for(lambda s: len(s.first_successes()) >= 1000, timeout=TIMEOUT * SCALE,
                      message="1000 events delivered")
        say("1000 events over 50 keys: delivered in %.1fs, %d requests, %d in flight at most"
            % (time.monotonic() - t0, sink.count, sink.max_inflight))
        check_order(sink, keys, 20)
        # parallel across keys: more than one key in flight at a time
        assert sink.max_inflight > 1, "never more than one delivery in flight"
        assert any(r.reply == 500 for r in sink.snapshot()), "the 10% of 500s did not happen"
        st, ep = g.admin("GET", "/api/endpoints/erp")
        assert st == 200 and ep["order_key"] == "data.tracking_number" and ep["blocked"] == 0, ep
        assert ep["blocked_keys"] == [] and ep["pending"] == 0, ep


def test_a_key_whose_receiver_fails_for_5s_holds_only_that_key():
    t_block = [None]

    def behaviour(req):
        if key_of(req) == "TN-BLOCK" and time.monotonic() < t_block[0] + 5.0:
            return 500
        return 200, 0.002

    sink = schedsink.Sink(behaviour=behaviour)
    g = gateway({"erp": (sink.url, ', ordered = "data.tracking_number", concurrency = 8,'
                 ' retry = { "0s", "500ms", "500ms", "500ms", "500ms", "500ms", "500ms", "500ms",'
                 ' "500ms", "500ms", "500ms", "500ms", "500ms", "500ms" }, jitter = false')},
                'on("tracking.*", { "erp" })')
    others = ["TN-%02d" % i for i in range(20)]
    with g:
        t_block[0] = time.monotonic()
        post_keys(g, ["TN-BLOCK"], 10, connections=1)
        post_keys(g, others, 10, connections=4)
        # the other keys all go while TN-BLOCK's head keeps failing
        sink.wait_for(lambda s: len([1 for r in s.ok_requests() if key_of(r) != "TN-BLOCK"]) >= 200,
                      timeout=20 * SCALE, message="the other keys' 200 events")
        elapsed = time.monotonic() - t_block[0]
        blocked_ok = [r for r in sink.ok_requests() if key_of(r) == "TN-BLOCK"]
        say("other keys done %.1fs after the block started; TN-BLOCK delivered so far: %d"
            % (elapsed, len(blocked_ok)))
        if elapsed < 4.5:
            assert not blocked_ok, "TN-BLOCK was delivered while its receiver answered 500"
        tries = [r for r in sink.snapshot() if key_of(r) == "TN-BLOCK"]
        assert {seq_of(r) for r in tries if r.mono < t_block[0] + 4.5} <= {0}, \
            "only TN-BLOCK's head may be tried while it fails"
        sink.wait_for(lambda s: len([1 for r in s.ok_requests() if key_of(r) == "TN-BLOCK"]) >= 10,
                      timeout=30 * SCALE, message="TN-BLOCK's 10 events after the block")
        check_order(sink, ["TN-BLOCK"] + others, 10)


def test_a_key_failed_for_good_is_blocked_shown_and_released_by_retry_or_skip():
    failing = {"TN-A": True, "TN-B": True}

    def behaviour(req):
        return 500 if failing.get(key_of(req)) else 200

    sink = schedsink.Sink(behaviour=behaviour)
    g = gateway({"erp": (sink.url, ', ordered = "data.tracking_number",'
                 ' retry = { "0s", "50ms" }, jitter = false')},
                'on("tracking.*", { "erp" })')
    with g:
        post_keys(g, ["TN-A", "TN-B"], 3, connections=1)
        post_keys(g, ["TN-C"], 3, connections=1)
        sink.wait_for(lambda s: len([1 for r in s.ok_requests() if key_of(r) == "TN-C"]) >= 3,
                      timeout=10 * SCALE, message="TN-C")

        def blocked():
            st, ep = g.admin("GET", "/api/endpoints/erp")
            assert st == 200, (st, ep)
            return ep

        deadline = time.monotonic() + 10 * SCALE
        while blocked()["blocked"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        ep = blocked()
        keys = {b["key"]: b for b in ep["blocked_keys"]}
        assert set(keys) == {"TN-A", "TN-B"}, ep
        assert keys["TN-A"]["depth"] == 2 and keys["TN-A"]["since"], ep
        # a new event of a blocked key waits behind its head too
        post_keys(g, ["TN-A"], 1, connections=1)
        assert blocked()["blocked_keys"][0]["depth"] in (2, 3), ep
        m = g.metrics()
        assert re.search(r'waybill_endpoint_blocked_keys\{endpoint="erp"\} 2\b', m), m
        assert 'waybill_endpoint_oldest_blocked_seconds{endpoint="erp"}' in m, m
        st, dl = g.admin("GET", "/api/deliveries?endpoint=erp&status=pending")
        waiting = [d for d in dl["data"] if d.get("key") == "TN-B"]
        assert len(waiting) == 2 and all(d["next_at"] is None for d in waiting), dl

        # retry: TN-A's head goes again, now answered 200, and its key follows in order
        failing["TN-A"] = False
        st, body = g.admin("POST", "/api/deliveries/%s/retry" % keys["TN-A"]["head"])
        assert st == 200, (st, body)
        sink.wait_for(lambda s: len({seq_of(r) for r in s.ok_requests() if key_of(r) == "TN-A"}) >= 3,
                      timeout=10 * SCALE, message="TN-A after the retry")
        # skip: TN-B's head stays failed (a dead letter), the rest of TN-B goes
        failing["TN-B"] = False
        head_b = keys["TN-B"]["head"]
        st, body = g.admin("POST", "/api/deliveries/%s/skip" % head_b)
        assert st == 200 and body["skipped"] is True, (st, body)
        sink.wait_for(lambda s: len({seq_of(r) for r in s.ok_requests() if key_of(r) == "TN-B"}) >= 2,
                      timeout=10 * SCALE, message="TN-B after the skip")
        assert sorted({seq_of(r) for r in sink.ok_requests() if key_of(r) == "TN-B"}) == [1, 2]
        st, body = g.admin("POST", "/api/deliveries/%s/skip" % head_b)
        assert st == 409, (st, body)
        st, body = g.admin("POST", "/api/deliveries/dlv_nosuch/skip")
        assert st == 404, (st, body)
        ep = blocked()
        assert ep["blocked"] == 0 and ep["blocked_keys"] == [], ep
        check_order(sink, ["TN-C"], 3)


def test_an_endpoints_blocked_count_and_its_keys_come_from_one_view():
    """GET /api/endpoints/NAME's `blocked` and its `blocked_keys` are one
    answer: while keys fail for good one after another, every answer lists
    as many keys as it counts (they were read from two views of the store:
    the count saw a failure its group had not committed yet, the list not)."""
    keys = ["TN-%02d" % i for i in range(40)]
    sink = schedsink.Sink(behaviour=lambda req: 500)
    g = gateway({"erp": (sink.url, ', ordered = "data.tracking_number",'
                 ' retry = { "0s" }, jitter = false')},
                'on("tracking.*", { "erp" })')
    with g:
        seen, bad = [], []
        stop = threading.Event()

        def poll():
            while not stop.is_set():
                st, ep = g.admin("GET", "/api/endpoints/erp")
                if st != 200:
                    bad.append((st, ep))
                    return
                seen.append(ep["blocked"])
                if len(ep["blocked_keys"]) != ep["blocked"]:
                    bad.append(ep)

        pollers = [threading.Thread(target=poll) for _ in range(2)]
        for t in pollers:
            t.start()
        try:
            post_keys(g, keys, 1, connections=4)
            deadline = time.monotonic() + 15 * SCALE
            while (not seen or seen[-1] < len(keys)) and time.monotonic() < deadline and not bad:
                time.sleep(0.05)
        finally:
            stop.set()
            for t in pollers:
                t.join(TIMEOUT)
        assert not bad, bad[:3]
        assert seen and seen[-1] == len(keys), seen[-5:]
        assert len(set(seen)) > 2, "the answers saw too few steps to test anything: %s" % sorted(set(seen))


def test_kill9_mid_stream_keeps_every_key_in_order_and_loses_nothing():
    rnd = random.Random(9)
    lock = threading.Lock()

    def behaviour(req):
        with lock:
            return 200, rnd.uniform(0, 0.010)

    sink = schedsink.Sink(behaviour=behaviour)
    g = gateway({"erp": (sink.url, ', ordered = "data.tracking_number", concurrency = 8'
                 + FAST_RETRY)},
                'on("tracking.*", { "erp" })')
    keys = ["TN-K%02d" % i for i in range(20)]
    with g:
        poster = threading.Thread(target=post_keys, args=(g, keys, 10, 4))
        # kill while deliveries flow, then start again: the carriers' posts retry
        poster.start()
        sink.wait_for(lambda s: s.ok_count() >= 40, timeout=30 * SCALE, message="40 deliveries")
        g.kill9()
        time.sleep(0.3)
        g.restart()
        poster.join(TIMEOUT)
        sink.wait_for(lambda s: len(s.first_successes()) >= 200, timeout=60 * SCALE,
                      message="200 events delivered after the restart")
        check_order(sink, keys, 10)


def test_a_key_function_that_fails_or_loops_sends_unordered_and_says_where():
    sink = schedsink.Sink()
    g = gateway({"erp": (sink.url, ', ordered = function(ev)\n'
                 '  if ev.data.n == 1 then error("no key for this one") end\n'
                 '  if ev.data.n == 2 then while true do end end\n'
                 '  return ev.data.tracking_number\nend')},
                'on("tracking.*", { "erp" })')
    with g:
        p = schedsink.Poster(g, SECRET)
        ids = [p.post_event("tracking.in_transit", tracking_number="TN-F", n=n)[0] for n in range(3)]
        ids.append(p.post_event("tracking.in_transit", tracking_number=None, n=3)[0])
        sink.wait_for(lambda s: len(s.first_successes()) >= 4, timeout=10 * SCALE,
                      message="4 events delivered")
        st, ev = g.admin("GET", "/api/events/%s" % ids[1])
        assert st == 200 and ev["status"] == "routed", ev
        assert re.search(r"waybill\.lua:\d+: .*no key for this one", ev["error"] or ""), ev
        st, ev = g.admin("GET", "/api/events/%s" % ids[2])
        assert "instruction budget exceeded" in (ev["error"] or ""), ev
        st, ev = g.admin("GET", "/api/events/%s" % ids[0])
        assert ev["error"] is None, ev
        m = g.metrics()
        assert re.search(r'waybill_ordered_key_missing_total\{endpoint="erp"\} 3\b', m), m


def test_ordered_settings_are_checked_with_file_and_line():
    d = wb._mkdtemp("wb-ordered-")
    cfg = os.path.join(d, "waybill.lua")
    for bad in ('"data..tracking"', '"1abc"', "5", '{ "a" }'):
        with open(cfg, "w") as f:
            f.write('endpoint "erp" {\n url = "http://127.0.0.1:9/x", sign = "none",\n'
                    ' ordered = %s }\n' % bad)
        r = wb.run("check", "-c", cfg)
        err = (r.stderr + r.stdout).decode("utf-8", "replace")
        assert r.returncode != 0, (bad, err)
        assert re.search(r"waybill\.lua:\d+: endpoint erp: ordered must be true, a dotted path", err), (bad, err)


def test_route_shows_each_deliverys_key_from_the_shipment_model():
    """ordered = "shipment.tracking_number": the same key for every carrier
    (issue 22's shipment model), shown by `waybill route`."""
    d = wb._mkdtemp("wb-route-key-")
    os.makedirs(os.path.join(d, "rules"))
    with open(os.path.join(d, "waybill.lua"), "w") as f:
        f.write('source "atoship" { secret = "s" }\n'
                'endpoint "erp" { url = "http://127.0.0.1:9/erp", sign = "none",'
                ' ordered = "shipment.tracking_number" }\n'
                'endpoint "crm" { url = "http://127.0.0.1:9/crm", sign = "none" }\n'
                'rules "rules/"\n')
    with open(os.path.join(d, "rules", "a.lua"), "w") as f:
        f.write('on("*", { "erp", "crm" })\n')
    ev = os.path.join(d, "ev.json")
    with open(ev, "wb") as f:
        f.write(wb.atoship_event("tracking.in_transit", tracking_number="1Z999AA10123456784"))
    r = wb.run("route", "-c", os.path.join(d, "waybill.lua"), "--source", "atoship", ev)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    keys = {x["endpoint"]: x.get("key", "absent") for x in plan["deliveries"]}
    assert keys == {"erp": "1Z999AA10123456784", "crm": "absent"}, plan["deliveries"]
