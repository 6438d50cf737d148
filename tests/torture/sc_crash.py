"""1. SIGKILL at random moments during ingest and delivery: every event
answered 200 is delivered after the restart (duplicates are allowed by
at-least-once, and counted)."""
import random
import time

import common
from common import wb

NAME = "1 SIGKILL during ingest + delivery"


def run(short, row):
    kills = 3 if short else 10
    sink = common.CountingSink()
    g = common.gateway({"erp": (sink.url, 'secret = %s, retry = { "0s", "1s", "1s", "2s", "5s" }'
                                % wb.lua(common.WHSEC))}, 'on("*", {"erp"})')
    load = common.Load(g.port, threads=3, retry=True)
    rng = random.Random()
    recoveries = []
    try:
        for k in range(kills):
            # a random moment while events stream in and deliveries go out
            before = len(load.acked)
            wb.wait_for(lambda: len(load.acked) > before + 40, timeout=30, message="the stream flows")
            time.sleep(rng.uniform(0, 0.5))
            g.kill9()
            time.sleep(rng.uniform(0.05, 0.3))
            t0 = time.monotonic()
            g.start()
            recoveries.append(time.monotonic() - t0)
        before = len(load.acked)
        wb.wait_for(lambda: len(load.acked) > before + 40, timeout=30, message="the stream flows after the last restart")
    finally:
        load.stop()
    acked = list(dict.fromkeys(load.acked))
    missing = sink.wait_all(acked, 60)
    stored = set(common.stored_source_ids(g))
    unstored = [a for a in acked if a not in stored]
    row.sent = len(set(load.sent_ids))
    row.acked = len(acked)
    row.lost = len(set(missing) | set(unstored))
    row.dup = sink.duplicates()
    row.recovery = max(recoveries)
    row.note("%d SIGKILLs; restart to healthy max %.2f s, median %.2f s" % (
        kills, max(recoveries), sorted(recoveries)[len(recoveries) // 2]))
    row.note("%d deliveries received for %d events" % (sum(sink.deliveries.values()), len(sink.ids)))
    row.check(not unstored, "%d acknowledged events not in the store" % len(unstored))
    return row
