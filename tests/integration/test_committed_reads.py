"""Admin reads show committed state only (issue 18): an event whose group is
still open -- waiting behind a group whose fdatasync is slow -- is not in
GET /api/events, /api/deliveries, /api/events/{id} or the counts, and the
admin API answers at once meanwhile; once the carrier has its 200 the event
is there. The slow sync is an LD_PRELOAD shim (tests/integration/preload/
slowsync.c, built here) that delays fdatasync of the WAL while a flag file
exists. Real binary, real sink on 127.0.0.1."""
import json
import os
import subprocess
import threading
import time

import wb

SECRET = "reads-secret"
SQLITE_ONLY = ("holds a group open by slowing fdatasync of the SQLite WAL (an LD_PRELOAD shim in "
               "waybill's process); PostgreSQL syncs its COMMIT in the server, out of the shim's reach")
HERE = os.path.dirname(os.path.abspath(__file__))


def slowsync_lib(dirpath):
    out = os.path.join(dirpath, "slowsync.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", out,
                    os.path.join(HERE, "preload", "slowsync.c"), "-ldl"], check=True)
    return out


def post_in_thread(g, body, results):
    def run():
        try:
            results.append(g.post_atoship(body, SECRET))
        except OSError as e:  # noted, the test fails on it
            results.append(e)
    t = threading.Thread(target=run)
    t.start()
    return t


def source_ids(g, path="/api/events?limit=100"):
    st, page = g.admin("GET", path, timeout=5)
    assert st == 200, (st, page)
    return page["data"]


def test_an_open_group_is_not_shown_by_admin_reads_until_committed():
    sink = wb.Sink()
    libdir = wb._mkdtemp("wb-preload-")
    flag = os.path.join(libdir, "slow")
    env = {"LD_PRELOAD": slowsync_lib(libdir), "WB_SLOW_SYNC_FLAG": flag,
           # a sanitizer build wants its runtime first; the shim only wraps fdatasync
           "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
    g = wb.Gateway(wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, sign = "hex", secret = "k", enabled = false }}
        rules "rules/"
    '''), env=env, files={"rules/10-main.lua": 'on("*", {"erp"})'})
    first = g.post_atoship(wb.atoship_event(), SECRET)
    assert first.status == 200, first
    st, status0 = g.admin("GET", "/api/status")
    assert st == 200, status0

    # A's group commits and its sync takes 2 s; B, arriving meanwhile, waits
    # in the next group, open (not committed) until that sync is done.
    with open(flag, "w") as f:
        f.write("2000")
    a_body, b_body = wb.atoship_event(), wb.atoship_event()
    a_sid, b_sid = json.loads(a_body)["id"], json.loads(b_body)["id"]
    ra, rb = [], []
    ta = post_in_thread(g, a_body, ra)
    time.sleep(0.4)
    tb = post_in_thread(g, b_body, rb)
    time.sleep(0.4)
    os.unlink(flag)  # the syncs after A's are quick again
    assert not ra and not rb, (ra, rb)  # neither answered yet: A syncing, B open

    t0 = time.monotonic()
    events = source_ids(g)
    took = time.monotonic() - t0
    shown = {e["source_id"] for e in events}
    assert b_sid not in shown, "an event of the open group is shown"
    # A is committed (its sync still running): shown. Committed = COMMIT done.
    assert a_sid in shown, shown
    st, dl_during = g.admin("GET", "/api/deliveries?limit=100", timeout=5)
    assert st == 200, dl_during
    st, status = g.admin("GET", "/api/status", timeout=5)
    assert st == 200, status
    # A's held delivery counts, B's does not
    assert status["queue"]["held"] == status0["queue"]["held"] + 1, (status0["queue"], status["queue"])
    assert took < 1.0, "the admin read waited for the group: %.2f s" % took

    ta.join(10)
    tb.join(10)
    assert ra and ra[0].status == 200, ra
    assert rb and rb[0].status == 200, rb
    b_id = rb[0].json()["id"]
    assert b_id not in {d["event_id"] for d in dl_during["data"]}, "a delivery of the open group"
    assert ra[0].json()["id"] in {d["event_id"] for d in dl_during["data"]}
    # once B's carrier has its 200, every read shows it
    assert b_sid in {e["source_id"] for e in source_ids(g)}
    ev = g.event(b_id)
    assert ev["id"] == b_id and ev["deliveries"][0]["status"] == "held", ev
    st, dl = g.admin("GET", "/api/deliveries?limit=100")
    assert st == 200 and b_id in {d["event_id"] for d in dl["data"]}, dl
    st, status = g.admin("GET", "/api/status")
    assert status["queue"]["held"] == status0["queue"]["held"] + 2, status["queue"]
