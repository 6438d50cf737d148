"""8. Reload storm: SIGHUPs during steady load, alternating a good rule set
and a broken one. Two rule files each stamp the generation they were
written in into their own endpoint's payload: an event routed by a
half-loaded set would reach the two endpoints with different generations.
No request fails; each broken reload keeps the whole previous set."""
import time

import common
from common import wb

NAME = "8 reload storm (SIGHUP, good/broken)"


def _rules(gen, broken=False):
    a = 'on("*", function(ev) send("a", { source_id = ev.source_id, gen = %d }) end)\n' % gen
    b = 'on("*", function(ev) send("b", { source_id = ev.source_id, gen = %d }) end)\n' % gen
    if broken:
        b = b.replace("end)", "end") + "this is not Lua (\n"
    return a, b


def run(short, row):
    hups = 20 if short else 100
    gens = {"a": {}, "b": {}}

    def keeper(name):
        def on_doc(doc):
            if isinstance(doc, dict) and "gen" in doc:
                gens[name][doc.get("source_id")] = doc["gen"]
        return on_doc

    sa, sb = common.CountingSink(on_doc=keeper("a")), common.CountingSink(on_doc=keeper("b"))
    a, b = _rules(0)
    g = common.gateway({"a": (sa.url, 'sign = "none"'), "b": (sb.url, 'sign = "none"')}, a)
    g.write("rules/20.lua", b)
    g.restart()
    load = common.Load(g.port, threads=2, rate=150)
    good = bad = 0
    slow = 0.0
    try:
        time.sleep(0.5)
        for i in range(1, hups + 1):
            broken = i % 2 == 0
            a, b = _rules(i, broken)
            g.write("rules/10.lua", a)
            g.write("rules/20.lua", b)
            t0 = time.monotonic()
            g.sighup()
            want = (good + (not broken), bad + broken)

            def applied():
                st = g.admin("GET", "/api/status")[1]
                return (st["reloads"], st["reload_failures"]) == want

            g.wait_for(applied, timeout=10, message="reload %d applied" % i)
            slow = max(slow, time.monotonic() - t0)
            good, bad = want
            time.sleep(0.05 if short else 0.1)
        time.sleep(0.5)
    finally:
        load.stop()
    acked = list(dict.fromkeys(load.acked))
    missing_a = sa.wait_all(acked, 30)
    missing_b = sb.wait_all(acked, 30)
    with sa.lock, sb.lock:
        mixed = [sid for sid in acked if sid in gens["a"] and sid in gens["b"] and gens["a"][sid] != gens["b"][sid]]
        seen = sorted(set(gens["a"].values()))
    odd = [x for x in seen if x % 2 == 0 and x != 0]  # a broken generation routed something
    failed = {s: n for s, n in load.statuses.items() if s != 200}
    row.check(not failed, "requests not answered 200: %s %s" % (failed, load.other[:2]))
    row.check(not mixed, "%d events routed by a half-loaded rule set (e.g. %s)" % (len(mixed), mixed[:3]))
    row.check(not odd, "generations of broken sets routed events: %s" % odd[:5])
    row.sent = len(load.sent_ids)
    row.acked = len(acked)
    row.lost = len(set(missing_a) | set(missing_b))
    row.dup = sa.duplicates() + sb.duplicates()
    row.recovery = slow
    row.note("%d SIGHUPs (%d good, %d broken kept the old set); %d generations seen routing; "
             "ingest p99 %s; recovery = slowest SIGHUP-to-applied" % (
                 hups, good, bad, len(seen), common.ms(common.pct([d for _, d in load.lat], 99))))
    return row
