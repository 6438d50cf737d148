"""2. Disk full: the store on a 20 MiB tmpfs nearly filled by another file.
Ingest answers 503 with Retry-After and /healthz 503 while the store cannot
write, never a 200 for an event it did not store; the database stays intact
(integrity_check on a copy); once the other file is removed waybill writes
again by itself; every event answered 200 is stored and delivered."""
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time

import common
from common import wb

NAME = "2 disk full (20 MiB tmpfs)"


def _integrity(path):
    d = tempfile.mkdtemp(prefix="wb-torture-int-")
    try:
        for suffix in ("", "-wal"):
            if os.path.exists(path + suffix):
                shutil.copyfile(path + suffix, os.path.join(d, "c.db" + suffix))
        db = sqlite3.connect(os.path.join(d, "c.db"))
        try:
            return db.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            db.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(short, row):
    if os.geteuid() != 0:
        raise common.Skip("not root (mounting a tmpfs needs root)")
    mnt = wb._mkdtemp("wb-torture-disk-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", mnt], capture_output=True)
    if r.returncode != 0:
        raise common.Skip("cannot mount a tmpfs: %s" % r.stderr.decode("utf-8", "replace").strip())
    try:
        return _run(short, row, mnt)
    finally:
        wb.cleanup()  # the gateway holds files on the mount
        subprocess.run(["umount", "-l", mnt], capture_output=True)


def _run(short, row, mnt):
    filler = os.path.join(mnt, "filler")
    with open(filler, "wb") as f:
        f.write(b"\0" * (16 << 20))  # 4 MiB left for the store
    sink = common.CountingSink()
    db = os.path.join(mnt, "waybill.db")
    g = common.gateway({"erp": (sink.url, 'sign = "none"')}, 'on("*", {"erp"})', store="sqlite:" + db)
    load = common.Load(g.port, threads=4)
    try:
        wb.wait_for(lambda: load.statuses.get(503, 0) >= 300, timeout=60 if short else 90,
                    message="the disk fills and ingest answers 503")
        full_at = time.monotonic()
        st, health = g.admin("GET", "/healthz", token=None)
        time.sleep(1.0 if short else 5.0)  # stays full a while under load
    finally:
        load.stop()
    row.check(st == 503 and "cannot write" in str(health), "/healthz while full: %s %s" % (st, health))
    wrong = {s: n for s, n in load.statuses.items() if s not in (200, 503)}
    row.check(not wrong, "answers other than 200/503: %s (%s)" % (wrong, load.other[:3]))
    ra = wb.http_request(g.port, "POST", "/hooks/atoship", *common.event()[1:])
    row.check(ra.status == 503 and ra.headers.get("retry-after"),
              "a post while full: %s, Retry-After %r" % (ra.status, ra.headers.get("retry-after")))
    row.check("store" in ra.text() or "disk" in ra.text(), "the 503 gives no reason: %r" % ra.body[:200])
    # space comes back
    os.remove(filler)
    t0 = time.monotonic()
    g.wait_for(lambda: g.admin("GET", "/healthz", token=None)[0] == 200, timeout=20,
               message="/healthz 200 once space is freed")
    row.recovery = time.monotonic() - t0
    # a few events (the 20 MiB would fill again under a flood: the WAL grows)
    after = common.Load(g.port, threads=1, rate=100)
    wb.wait_for(lambda: len(after.sent_ids) >= 50, timeout=20, message="50 events sent after recovery")
    after.stop()
    row.check(after.statuses.get(200, 0) > 0 and set(after.statuses) == {200},
              "after space came back: %s" % after.statuses)
    acked = list(dict.fromkeys(load.acked + after.acked))
    missing = sink.wait_all(acked, 30)
    g.stop()
    stored = set(common.stored_source_ids(g, db))
    unstored = [a for a in acked if a not in stored]
    integrity = _integrity(db)
    row.check(integrity == "ok", "integrity_check: %s" % integrity)
    row.check(not unstored, "%d acknowledged events not stored" % len(unstored))
    row.sent = len(load.sent_ids) + len(after.sent_ids)
    row.acked = len(acked)
    row.lost = len(set(missing) | set(unstored))
    row.dup = sink.duplicates()
    row.note("%d answered 503 (Retry-After %s) over %.0f s full; integrity %s; %d stored" % (
        load.statuses.get(503, 0), ra.headers.get("retry-after"), time.monotonic() - full_at, integrity,
        len(stored)))
    return row
