#!/usr/bin/env python3
"""retention.py -- how fast retention prunes, idle and under ingest (issue 18).

Builds a store holding --events old events (received 2 h ago; retention is
1 h), each with a delivered delivery and its attempt and a batch item in a
delivered batch of 100; every 20th event also has a delivery still pending
(retrying: due tomorrow) and every 50th a failed one (a dead letter): those
must stay (--no-retrying: none pending). Then starts the binary on it and counts the old events left every
0.5 s until no more go for 3 s (or --timeout). With --ingest SECONDS, wrk
(-t1 -c16, tests/bench/ingest.lua) posts new events for the first SECONDS
meanwhile (their deliveries are held: a disabled endpoint).

Prints: events pruned/s while pruning, what was left (and what should be),
batch items left, ingest req/s. Run it with the old and the new binary:
    python3 tests/bench/retention.py --bin /tmp/waybill-old
    python3 tests/bench/retention.py --bin ./waybill --ingest 20

--steady SECONDS instead: a fresh store, retention = "5s", wrk -t1 -c16 at
full speed for SECONDS into a waybill delivering every event to
tests/bench/bare_server (built into the run's folder); every 5 s the events
stored, the file's size, and the ingest so far. Flat from ~10 s on when
retention keeps up with the sustained rate.
"""
import argparse
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def healthy(ap):
    try:
        return urllib.request.urlopen("http://127.0.0.1:%d/healthz" % ap, timeout=1).status == 200
    except Exception:
        return False


def start(binary, run, ap):
    env = dict(os.environ, WAYBILL_LUA_DIR=os.path.join(ROOT, "lua"))
    log = open(os.path.join(run, "log"), "ab")
    p = subprocess.Popen([binary, "serve", "-c", os.path.join(run, "waybill.lua")],
                         stdout=log, stderr=log, env=env)
    for _ in range(100):
        if healthy(ap):
            return p
        time.sleep(0.1)
    p.kill()
    sys.exit("retention: the gateway did not start; see " + os.path.join(run, "log"))


def fill(db, n, retrying):
    old = int(time.time() * 1000) - 2 * 3600 * 1000
    c = sqlite3.connect(db)
    c.execute("""WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?2)
                 INSERT INTO events(id, source, source_id, type, status, received_at, data)
                 SELECT 'evt_old_' || i, 'atoship', 'old-' || i, 'x', 'routed', ?1 + i,
                        '{"n":' || i || '}' FROM k""", (old, n))
    c.execute("""INSERT INTO deliveries(id, event_id, endpoint, event_type, status, payload,
                                        next_at, created_at)
                 SELECT 'dlv_old_' || seq, id, 'sink', 'x', 'delivered', '{"n":1}', 0, received_at
                 FROM events WHERE id LIKE 'evt_old_%'""")
    c.execute("""INSERT INTO attempts(delivery_id, n, at, status_code, latency_ms, response)
                 SELECT id, 1, created_at, 200, 3, 'ok' FROM deliveries WHERE id LIKE 'dlv_old_%'""")
    tomorrow = int(time.time() * 1000) + 86400000
    c.execute("""INSERT INTO deliveries(id, event_id, endpoint, event_type, status, payload,
                                        next_at, created_at)
                 SELECT 'dlv_retry_' || seq, id, 'parked', 'x', 'pending', '{}', ?1, received_at
                 FROM events WHERE id LIKE 'evt_old_%' AND seq % 20 = 0 AND ?2""",
              (tomorrow, retrying))
    c.execute("""INSERT INTO deliveries(id, event_id, endpoint, event_type, status, payload,
                                        next_at, created_at)
                 SELECT 'dlv_dead_' || seq, id, 'parked', 'x', 'failed', '{}', 0, received_at
                 FROM events WHERE id LIKE 'evt_old_%' AND seq % 50 = 0""")
    c.execute("""INSERT INTO deliveries(id, event_id, endpoint, event_type, status, payload,
                                        next_at, created_at, batch)
                 SELECT 'dlv_batch_' || (seq / 100), 'dlv_batch_' || (seq / 100), 'sink', 'batch',
                        'delivered', '{}', 0, MIN(received_at), 1
                 FROM events WHERE id LIKE 'evt_old_%' GROUP BY seq / 100""")
    c.execute("""INSERT INTO batch_items(endpoint, window_start, window_ms, event_id, delivery_id)
                 SELECT 'sink', (seq / 100) * 60000, 60000, id, 'dlv_batch_' || (seq / 100)
                 FROM events WHERE id LIKE 'evt_old_%'""")
    c.execute("DELETE FROM delivery_counts")
    c.execute("INSERT INTO delivery_counts(status, n) SELECT status, count(*) FROM deliveries"
              " GROUP BY status")
    c.commit()
    keep = c.execute("""SELECT count(*) FROM events WHERE id LIKE 'evt_old_%' AND
                        ((seq % 20 = 0 AND ?1) OR seq % 50 = 0)""", (retrying,)).fetchone()[0]
    c.close()
    return keep


def cpu_s(pid):
    """utime + stime of pid, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count(db, sql):
    c = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    try:
        return c.execute(sql).fetchone()[0]
    finally:
        c.close()


def steady(binary, seconds):
    run = tempfile.mkdtemp(prefix="wb-steady-")
    p, ap, sp = port(), port(), port()
    bare = os.path.join(run, "bare_server")
    subprocess.run(["cc", "-O2", "-std=c11", "-D_GNU_SOURCE", "-o", bare,
                    os.path.join(ROOT, "tests/bench/bare_server.c"), "-levent"], check=True)
    sink = subprocess.Popen([bare, str(sp)])
    os.mkdir(os.path.join(run, "rules"))
    with open(os.path.join(run, "rules", "10-all.lua"), "w") as f:
        f.write('on("*", {"sink"})\n')
    with open(os.path.join(run, "waybill.lua"), "w") as f:
        f.write(f'''listen = "127.0.0.1:{p}"
admin = {{ listen = "127.0.0.1:{ap}", token = "bench-token" }}
store = "sqlite:{run}/store.db"
retention = "5s"
allow_private = {{ "127.0.0.0/8" }}
source "atoship" {{ verify = "atoship", secret = "bench-secret" }}
endpoint "sink" {{ url = "http://127.0.0.1:{sp}/", secret = "whsec_YmVuY2gtc2VjcmV0LWZvci13YXliaWxs", sign = "standard" }}
rules "rules/"
''')
    db = os.path.join(run, "store.db")
    g = start(binary, run, ap)
    wrk = subprocess.Popen(["wrk", "-t1", "-c16", "-d%ds" % seconds, "-s",
                            os.path.join(ROOT, "tests/bench/ingest.lua"),
                            "http://127.0.0.1:%d/hooks/atoship" % p],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    print("binary %s: retention 5s, wrk -c16 for %d s" % (binary, seconds))
    while wrk.poll() is None:
        time.sleep(5 - (time.monotonic() - t0) % 5)
        if wrk.poll() is not None:
            break
        ev = count(db, "SELECT count(*) FROM events")
        mx = count(db, "SELECT IFNULL(MAX(seq), 0) FROM events")
        print("  t=%3.0fs  events stored %7d  ingested so far %8d  db %6.1f MiB"
              % (time.monotonic() - t0, ev, mx, os.path.getsize(db) / 1048576), flush=True)
    out = wrk.communicate()[0]
    reqs = [ln for ln in out.splitlines() if "Requests/sec" in ln or "Latency" in ln]
    print("  wrk: " + "; ".join(r.strip() for r in reqs))
    g.terminate()
    g.wait(30)
    sink.terminate()
    sink.wait(10)
    shutil.rmtree(run, ignore_errors=True)


def main():
    ap_ = argparse.ArgumentParser()
    ap_.add_argument("--bin", default=os.path.join(ROOT, "waybill"))
    ap_.add_argument("--events", type=int, default=100000)
    ap_.add_argument("--ingest", type=float, default=0, help="seconds of wrk load meanwhile")
    ap_.add_argument("--timeout", type=float, default=120)
    ap_.add_argument("--steady", type=float, default=0,
                     help="seconds of full-speed ingest on a fresh store with retention 5s")
    ap_.add_argument("--no-retrying", action="store_true",
                     help="no pending deliveries among the old events (the old sweep stops at one)")
    a = ap_.parse_args()
    binary = os.path.abspath(a.bin)
    if a.steady:
        return steady(binary, int(a.steady))
    run = tempfile.mkdtemp(prefix="wb-retention-")
    p, ap, sp = port(), port(), port()
    os.mkdir(os.path.join(run, "rules"))
    with open(os.path.join(run, "rules", "10-all.lua"), "w") as f:
        f.write('on("*", {"sink"})\n')
    with open(os.path.join(run, "waybill.lua"), "w") as f:
        f.write(f'''listen = "127.0.0.1:{p}"
admin = {{ listen = "127.0.0.1:{ap}", token = "bench-token" }}
store = "sqlite:{run}/store.db"
retention = "1h"
allow_private = {{ "127.0.0.0/8" }}
source "atoship" {{ verify = "atoship", secret = "bench-secret" }}
endpoint "sink" {{ url = "http://127.0.0.1:{sp}/", secret = "whsec_YmVuY2gtc2VjcmV0LWZvci13YXliaWxs", sign = "standard", enabled = false }}
endpoint "parked" {{ url = "http://127.0.0.1:{sp}/parked", secret = "whsec_YmVuY2gtc2VjcmV0LWZvci13YXliaWxs", sign = "standard" }}
rules "rules/"
''')
    db = os.path.join(run, "store.db")
    g = start(binary, run, ap)
    g.terminate()
    g.wait(20)
    keep = fill(db, a.events, 0 if a.no_retrying else 1)
    size0 = os.path.getsize(db)
    g = start(binary, run, ap)
    t0 = time.monotonic()
    cpu0 = cpu_s(g.pid)
    wrk = None
    if a.ingest > 0:
        wrk = subprocess.Popen(["wrk", "-t1", "-c16", "-d%ds" % a.ingest, "-s",
                                os.path.join(ROOT, "tests/bench/ingest.lua"),
                                "http://127.0.0.1:%d/hooks/atoship" % p],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    old_sql = "SELECT count(*) FROM events WHERE id LIKE 'evt_old_%'"
    left, last_change, t_end = a.events, t0, t0
    while time.monotonic() - t0 < a.timeout:
        time.sleep(0.5)
        n = count(db, old_sql)
        if n < left:
            left, last_change = n, time.monotonic()
        if time.monotonic() - last_change > 3 and (wrk is None or wrk.poll() is not None):
            break
    t_end = last_change
    cpu = cpu_s(g.pid) - cpu0
    wrk_out = wrk.communicate()[0] if wrk else ""
    items = count(db, "SELECT count(*) FROM batch_items")
    batches = count(db, "SELECT count(*) FROM deliveries WHERE batch = 1")
    new = count(db, "SELECT count(*) FROM events WHERE id NOT LIKE 'evt_old_%'")
    g.terminate()
    g.wait(30)
    pruned = a.events - left
    took = max(t_end - t0, 0.001)
    print("binary %s" % binary)
    print("old events %d, pruned %d in %.1f s: %.0f events/s; left %d (to keep: %d)"
          % (a.events, pruned, took, pruned / took, left, keep))
    print("batch items left %d, batch deliveries left %d" % (items, batches))
    if not wrk:
        print("gateway CPU %.2f s over the run: %.0f us per pruned event"
              % (cpu, cpu * 1e6 / max(pruned, 1)))
    print("db file %.1f MiB before, %.1f MiB after" % (size0 / 1048576, os.path.getsize(db) / 1048576))
    if wrk:
        reqs = [ln for ln in wrk_out.splitlines() if "Requests/sec" in ln]
        print("ingest under way: %s; new events stored %d" % (reqs[0].strip() if reqs else "?", new))
    print(run) if os.environ.get("KEEP") else shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
