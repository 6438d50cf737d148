"""A full disk (issue 18): the store on a small tmpfs fills up under ingest.
waybill answers 503 with Retry-After (never a 200 for an event it could not
commit), /healthz says the store cannot write, the log stays a few lines a
second, and once space is freed it writes again by itself (the WAL is
checkpointed and truncated); every event answered 200 is delivered.

Needs to mount a tmpfs (the suite runs as root, as CI does); where that is
not allowed the test says so and checks nothing."""
import json
import os
import subprocess
import sys
import time

import wb

SECRET = "diskfull-secret"
SQLITE_ONLY = ("a full disk under the SQLite file (its WAL checkpointed and truncated once space is "
               "freed); PostgreSQL's own disk is the database's, a fault test_pg_cluster.py provokes "
               "by stopping it")


def _mount(path, size):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", path],
                       capture_output=True)
    return r.returncode == 0


def test_full_disk_answers_503_stays_quiet_and_writes_again_once_space_is_freed():
    d = wb._mkdtemp("wb-diskfull-")
    mnt = os.path.join(d, "disk")
    if not _mount(mnt, "8m"):
        print("  skipped: cannot mount a tmpfs here (not root?)", file=sys.__stderr__)
        return
    try:
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * (5 << 20))
        sink = wb.Sink()
        cfg = wb.config('''
            source "atoship" {{ verify = "atoship", secret = {s} }}
            endpoint "erp" {{ url = {u}, sign = "none" }}
            rules "rules/"
        '''.format(s=wb.lua(SECRET), u=wb.lua(sink.url)), store="sqlite:" + os.path.join(mnt, "w.db"))
        g = wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"erp"})'})
        with g:
            acked, refused, retry_after = [], 0, None
            for _ in range(3000):
                body = wb.atoship_event("tracking.in_transit")
                r = g.post_atoship(body, SECRET)
                if r.status == 200:
                    acked.append(json.loads(body)["id"])
                    continue
                assert r.status == 503, (r.status, r.body)
                refused += 1
                retry_after = r.headers.get("retry-after")
                if refused >= 200:
                    break
            assert refused >= 200, "the disk never filled (%d accepted)" % len(acked)
            assert retry_after, "a 503 without Retry-After"
            st, body = g.admin("GET", "/healthz", token=None)
            assert st == 503 and "cannot write" in json.dumps(body), (st, body)
            # one request line per answer (the request log) is by design;
            # everything else stays a few lines a second
            lines = [l for l in open(g.log_path, "rb").read().split(b"\n")
                     if l and b"request listener=" not in l and b'"msg":"request"' not in l]
            assert len(lines) < 60, "the log grew by %d lines while the disk was full:\n%s" % (
                len(lines), b"\n".join(lines[-20:]).decode("utf-8", "replace"))
            # space comes back: waybill writes again by itself
            os.remove(filler)
            g.wait_for(lambda: g.admin("GET", "/healthz", token=None)[0] == 200, timeout=10,
                       message="/healthz 200 once space is freed")
            body = wb.atoship_event("tracking.in_transit")
            r = g.post_atoship(body, SECRET)
            assert r.status == 200, (r.status, r.body)
            acked.append(json.loads(body)["id"])
            # every event answered 200 reaches the receiver
            def missing():
                got = {json.loads(q.body)["source_id"] for q in list(sink.requests)}
                return [a for a in acked if a not in got]

            deadline = time.monotonic() + 20
            while missing() and time.monotonic() < deadline:
                time.sleep(0.1)
            lost = missing()
            assert not lost, "acknowledged events not delivered: %d of %d (%s)" % (
                len(lost), len(acked), [acked.index(x) for x in lost][:5])
    finally:
        subprocess.run(["umount", "-l", mnt], capture_output=True)
