"""9. A truncated or corrupted store file at start: `waybill serve` says so
clearly (naming the file), exits non-zero, and leaves the file's bytes as
they were (SHA-256 before and after)."""
import hashlib
import os
import shutil
import subprocess
import time

import common
from common import wb

NAME = "9 corrupted store at start"


def _sha(path):
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _damage(path, how):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if how == "truncated to half":
            f.truncate(size // 2 // 4096 * 4096 + 1000)
        elif how == "header overwritten":
            f.write(os.urandom(100))
        elif how == "a b-tree page overwritten":
            f.seek(4096 * 2)
            f.write(os.urandom(4096))
        elif how == "every page from the 3rd zeroed":
            f.seek(4096 * 2)
            f.write(b"\0" * (size - 4096 * 2))


CASES = ("truncated to half", "header overwritten", "a b-tree page overwritten", "every page from the 3rd zeroed")


def run(short, row):
    sink = common.CountingSink()
    g = common.gateway({"erp": (sink.url, 'sign = "none"')}, 'on("*", {"erp"})')
    load = common.Load(g.port, threads=2)
    wb.wait_for(lambda: len(load.acked) >= 600, timeout=30, message="600 events stored")
    load.stop()
    sink.wait_all(load.acked, 20)
    g.stop()
    db = g.path("waybill.db")
    pristine = g.path("pristine.db")
    shutil.copyfile(db, pristine)
    row.check(not os.path.exists(db + "-wal") or os.path.getsize(db + "-wal") == 0,
              "a WAL left after a clean stop")
    outcomes = []
    worst = 0.0
    for how in CASES:
        shutil.copyfile(pristine, db)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.remove(db + suffix)
        _damage(db, how)
        before = _sha(db)
        t0 = time.monotonic()
        g.start(wait=False)
        try:
            code = g.proc.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        secs = time.monotonic() - t0
        err = g.log(current=True)
        if code is None:
            # started: damage inside a page is found when that page is read
            outcomes.append(_started(g, db, how, row))
            g.kill9()
            continue
        worst = max(worst, secs)
        after = _sha(db)
        last = [l for l in err.splitlines() if l.strip()][-1:] or [""]
        clear = "waybill.db" in err and any(w in err.lower() for w in ("corrupt", "malformed", "not a database"))
        row.check(code != 0, "%s: exit code %s" % (how, code))
        row.check(clear, "%s: no clear error naming the file: %r" % (how, last[0][:200]))
        row.check(before == after and not os.path.exists(db + "-wal"), "%s: the file changed" % how)
        outcomes.append("%s: exit %s in %.2f s, \"%s\"" % (how, code, secs, last[0].split("waybill.db: ", 1)[-1][:80]))
    row.sent = len(CASES)
    row.recovery = worst
    row.note("; ".join(outcomes))
    row.note("recovery = slowest refusal")
    return row


def _started(g, db, how, row):
    """waybill started on a damaged file (SQLite reads pages as needed, and
    a full check at every start would cost ~10 ms per MiB): ingest must then
    never answer 200 for an event it could not store, and /healthz must say
    the store cannot write once a write failed."""
    g.wait_healthy()
    load = common.Load(g.port, threads=2)
    time.sleep(2)
    load.stop()
    health = g.admin("GET", "/healthz", token=None)[0]
    wrong = {s: n for s, n in load.statuses.items() if s not in (200, 503)}
    row.check(not wrong, "%s: answers %s" % (how, wrong))
    lost = 0
    if load.acked:
        g.kill9()
        try:
            stored = set(common.stored_source_ids(g, db))
            lost = sum(1 for a in load.acked if a not in stored)
        except Exception:  # noqa: BLE001 - unreadable: every acked event lost
            lost = len(load.acked)
    row.lost = (row.lost or 0) + lost
    row.acked = (row.acked or 0) + len(load.acked)
    if load.statuses.get(503):
        row.check(health == 503, "%s: /healthz %s while ingest answers 503" % (how, health))
    return "%s: NOT found at start; then %d x 200 (%d lost), %d x 503, /healthz %s" % (
        how, load.statuses.get(200, 0), lost, load.statuses.get(503, 0), health)
