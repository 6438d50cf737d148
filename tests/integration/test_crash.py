"""Durability: events answered 200 survive SIGKILL of the gateway.

Crash torture (SPEC 7, at-least-once): a steady stream of events while the
gateway is SIGKILLed at random moments five times and restarted; every event
answered 200 reaches the sink at least once; duplicates are reported."""
import random
import sys
import threading
import time

import wb

TIMEOUT = 120
SECRET = "crash-secret"


def test_sigkill_during_steady_stream_loses_no_acknowledged_event():
    sink = wb.Sink()
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                          retry = {{ "0s", "1s", "1s", "2s", "5s" }} }}
        rules "rules/"
    ''')
    g = wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"erp"})'})
    acked = []            # carrier ids answered 200
    lock = threading.Lock()
    stop = threading.Event()
    total = 450
    nkills = 5

    def carrier(worker):
        for i in range(worker, total, 2):
            body = wb.atoship_event("tracking.in_transit")
            cid = wb.json.loads(body)["id"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not stop.is_set():
                try:
                    r = g.post_atoship(body, SECRET)
                    if r.status == 200:
                        with lock:
                            acked.append(cid)
                        break
                except OSError:
                    pass  # gateway down: retry like a carrier would
                time.sleep(0.02)
            time.sleep(0.01)

    senders = [threading.Thread(target=carrier, args=(w,)) for w in range(2)]
    for t in senders:
        t.start()
    rng = random.Random()
    kills = 0
    try:
        for _ in range(nkills):
            # kill at a random moment while the stream flows
            wb.wait_for(lambda: len(acked) > (kills + 1) * 70, timeout=30)
            time.sleep(rng.uniform(0, 0.3))
            g.kill9()
            kills += 1
            time.sleep(rng.uniform(0.05, 0.3))
            g.restart()
        for t in senders:
            t.join(60)
    finally:
        stop.set()
    assert kills == nkills
    assert len(acked) == total, "only %d of %d events were ever accepted" % (len(acked), total)

    def delivered_ids():
        return [r.json()["source_id"] for r in sink.requests]

    wb.wait_for(lambda: set(acked) <= set(delivered_ids()), timeout=30,
                message="every acknowledged event delivered")
    ids = delivered_ids()
    dups = len(ids) - len(set(ids))
    print("  crash torture: %d events acknowledged, %d deliveries, %d duplicates after %d SIGKILLs"
          % (len(acked), len(ids), dups, kills), file=sys.__stderr__)
