"""The scheduler and the batch closer on a slow store (issue 15): every
asynchronous store answer -- claims, an ordered endpoint's head, the
watchdog's due times, batch windows, the admin API's reads -- handed over
20 ms after its call (WAYBILL_STORE_REPLY_DELAY_MS, honoured by the checked
build only: `make asan` runs this file against ./waybill-asan; the plain
suite's ./waybill skips it). What a store across a network does to the
loop: deliveries, retries, order, concurrency, batch windows and a graceful
stop must come out as they do on the next loop turn, and the watchdog
(which aborts a checked build on a lost wake-up) must stay quiet."""
import collections
import signal
import sys

import wb

SECRET = "slow-store-secret"
DELAY_MS = 20
TIMEOUT = 90
SCALE = 2.0 if wb.ASAN else 1.0


def gateway(plain, ordered, batched, extra=""):
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        endpoint "plain" {{ url = {wb.lua(plain.url)}, sign = "none", concurrency = 2,
                            retry = {{"0s", "200ms", "200ms"}}, jitter = false }}
        endpoint "ord" {{ url = {wb.lua(ordered.url)}, sign = "none", ordered = true,
                          retry = {{"0s", "200ms", "200ms"}}, jitter = false }}
        endpoint "bat" {{ url = {wb.lua(batched.url)}, sign = "none", window = "1s" }}
        {extra}
        rules "rules/"
    ''', shutdown_grace="5s")
    rules = 'on("*", function(ev) send("plain", ev) send("ord", ev) batch("bat", { id = ev.id }) end)\n'
    return wb.Gateway(cfg, files={"rules/10.lua": rules},
                      env={"WAYBILL_STORE_REPLY_DELAY_MS": str(DELAY_MS)})


def post(g, n):
    r = g.post_atoship(wb.atoship_event("tracking.in_transit", n=n), SECRET)
    assert r.status == 200, r
    return r.json()["id"]


def checked_build():
    if not wb.ASAN:
        print("  skipped: the delay knob is in the checked build only (make asan)", file=sys.stderr)
        return False
    return True


def assert_quiet(g):
    log = g.log()
    assert "handed over %d ms after its call" % DELAY_MS in log, g._tail(20)
    assert "scheduler bug" not in log and "invariant broken" not in log, g._tail(40)


def ok_once(sink):
    """Each delivery id answered 200 exactly once; returns the ids."""
    oks = collections.Counter(r.headers.get("X-Waybill-Delivery") for r in sink.requests
                              if r.reply == 200)
    twice = [d for d, n in oks.items() if n > 1]
    assert not twice, twice
    return set(oks)


def test_deliveries_retries_order_and_batches_on_a_store_answering_20ms_late():
    if not checked_build():
        return
    plain = wb.Sink([500, 500], default=200, delay=0.02)
    ordered = wb.Sink([500, 503], default=200)
    batched = wb.Sink()
    g = gateway(plain, ordered, batched)
    sent = [post(g, i) for i in range(40)]
    wb.wait_for(lambda: len(ok_once(plain)) == 40 and len(ok_once(ordered)) == 40,
                timeout=30 * SCALE, message="every delivery answered 200")
    assert plain.max_concurrency <= 2, plain.max_concurrency
    assert ordered.max_concurrency == 1, ordered.max_concurrency
    # the ordered endpoint: its failing head retried first, then all in order
    assert [r.json()["id"] for r in ordered.requests[:3]] == [sent[0]] * 3
    assert [r.json()["id"] for r in ordered.requests if r.reply == 200] == sent
    # every event in exactly one batch
    wb.wait_for(lambda: sum(b.json()["count"] for b in batched.requests) >= 40,
                timeout=10 * SCALE, message="every event batched")
    ids = [e["id"] for b in batched.requests for e in b.json()["events"]]
    assert sorted(ids) == sorted(sent), (len(ids), len(sent))
    starts = [b.json()["window_start"] for b in batched.requests]
    assert len(starts) == len(set(starts)), starts  # no window closed twice
    assert_quiet(g)
    assert g.stop() == 0


def test_disable_enable_and_sigterm_with_claims_in_flight_lose_and_repeat_nothing():
    if not checked_build():
        return
    plain = wb.Sink(delay=0.05)
    ordered = wb.Sink()
    batched = wb.Sink()
    g = gateway(plain, ordered, batched)
    first = [post(g, i) for i in range(10)]
    # disabled and enabled while claims of it are in flight: the answers of
    # a disabled endpoint give their rows back; enabling sends each once
    assert g.admin("POST", "/api/endpoints/plain/disable")[0] == 200
    held = [post(g, 10 + i) for i in range(10)]
    assert g.admin("POST", "/api/endpoints/plain/enable")[0] == 200
    plain.wait_for_count(5, timeout=10 * SCALE)
    # SIGTERM mid-stream: claims answered while stopping give their rows
    # back, and the next run sends the rest
    g.send_signal(signal.SIGTERM)
    g.proc.wait(30)
    assert g.proc.returncode == 0, g._tail(30)
    assert_quiet(g)
    g.start()
    wb.wait_for(lambda: len(ok_once(plain)) == 20 and len(ok_once(ordered)) == 20,
                timeout=30 * SCALE, message="every delivery answered 200 across the restart")
    got = sorted(r.json()["id"] for r in ordered.requests if r.reply == 200)
    assert got == sorted(first + held)
    assert_quiet(g)
    assert g.stop() == 0
