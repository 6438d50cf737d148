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


@wb.sqlite_only("the one-process flock of a SQLite store; several processes on one store is what "
                "the PostgreSQL store is for (test_pg_cluster.py)")
def test_a_second_process_on_the_same_sqlite_store_refuses_to_start_and_sends_nothing():
    """One process per SQLite store (issue 15): a second `waybill serve` on
    the same file would release the first one's leases and send its
    deliveries again. It refuses to start, saying why; the first goes on,
    and each delivery arrives once."""
    sink = wb.Sink([wb.Reply(200, delay=1.0)])  # the first delivery is in flight, leased
    body = '''
        source "atoship" {{ verify = "atoship", secret = {s} }}
        endpoint "erp" {{ url = {u}, sign = "none" }}
        rules "rules/"
    '''.format(s=wb.lua(SECRET), u=wb.lua(sink.url))
    g = wb.Gateway(wb.config(body), files={"rules/10.lua": 'on("*", {"erp"})'})
    with g:
        assert g.post_atoship(wb.atoship_event("tracking.in_transit"), SECRET).status == 200
        sink.wait_for_count(1)
        second = wb.config(body, store="sqlite:" + g.path("waybill.db"))
        path = g.path("second.lua")
        with open(path, "w") as f:
            f.write(second)
        r = wb.run("serve", "-c", path, cwd=g.dir, env=g.env, timeout=20)
        err = r.stderr.decode("utf-8", "replace")
        assert r.returncode != 0, err
        assert "is in use by another waybill process" in err, err
        time.sleep(1.5)
        assert sink.count == 1, sink.requests
        assert g.post_atoship(wb.atoship_event("tracking.in_transit"), SECRET).status == 200
        sink.wait_for_count(2)
    # once the first has stopped, the store is free again
    g.start()
    g.stop()


def test_check_refuses_a_postgres_store_without_showing_its_password():
    g_dir = wb._mkdtemp("wb-pg-check-")
    path = g_dir + "/waybill.lua"
    with open(path, "w") as f:
        f.write('store = "postgresql://waybill:Sup3rS3cret@db.example:5432/waybill"\n')
    for cmd in ("check", "serve"):
        r = wb.run(cmd, "-c", path, timeout=20)
        out = (r.stdout + r.stderr).decode("utf-8", "replace")
        assert r.returncode != 0, (cmd, out)
        assert "Sup3rS3cret" not in out, (cmd, out)
        assert "postgresql://waybill:***@db.example:5432/waybill" in out, (cmd, out)
