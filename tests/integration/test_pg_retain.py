"""Retention on PostgreSQL with several instances (SPEC section 9, issue 15:
"retention ... behave[s] identically"): two waybill instances on one
database, each running its own retention sweeps over the same rows at the
same time, with a short `retention`. Real binaries, one database of pg.py's,
real sinks on 127.0.0.1.

What an operator counts on: every event delivered and older than the
retention period goes, from both instances' answers, with its deliveries,
attempts and batch; every event that must stay -- a dead letter (failed),
a delivery waiting for its retry (pending) -- stays with its deliveries as
they were; the two sweeps never get in each other's way (no error, no
warning in either log, nothing left half deleted); and a row another
transaction holds (another instance's pass, a replay routing the event) is
stepped over without waiting -- ingest in the same group answers at once --
and deleted by a later pass once free.
"""

import subprocess
import time

import pg
import wb

SECRET = "retain-secret"
N = 300


def _gateways(db, ok, dead, slow):
    body = f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(ok.url)}, sign = "hex", secret = "k1" }}
        endpoint "hub" {{ url = {wb.lua(ok.url)}, sign = "hex", secret = "k2", window = "1s" }}
        endpoint "dead" {{ url = {wb.lua(dead.url)}, sign = "hex", secret = "k3",
                           retry = {{"0s", "200ms"}}, jitter = false }}
        endpoint "slow" {{ url = {wb.lua(slow.url)}, sign = "hex", secret = "k4",
                           retry = {{"0s", "1h"}}, jitter = false }}
        rules "rules/"
    '''
    # every 10th event a dead letter, every 10th + 1 a retry an hour away;
    # the rest delivered, each also batched into the 1 s windows of "hub"
    rules = ('on("tracking.*", function(ev)\n'
             '  local n = ev.data.n\n'
             '  if n % 10 == 0 then send("dead", ev)\n'
             '  elseif n % 10 == 1 then send("slow", ev)\n'
             '  else send("erp", ev) batch("hub", {n = n}) end\n'
             'end)\n')
    return [wb.Gateway(wb.config(body, store=db.url, retention="2s", shutdown_grace="1s"),
                       files={"rules/10.lua": rules})
            for _ in range(2)]


def _listed(g):
    """Every event id GET /api/events answers, paged."""
    ids, after = [], None
    while True:
        st, page = g.admin("GET", "/api/events?limit=100" + ("&after=" + after if after else ""))
        assert st == 200, page
        ids += [e["id"] for e in page["data"]]
        after = page["next"]
        if after is None:
            return set(ids)


@wb.timeout(90)
def test_two_instances_prune_delivered_events_and_keep_dead_letters_and_retries():
    db = pg.database()
    ok, dead, slow = wb.Sink(), wb.Sink(default=500), wb.Sink(default=500)
    gws = _gateways(db, ok, dead, slow)
    kinds = {}  # event id -> "dead", "slow" or "ok"
    for i in range(N):
        r = gws[i % 2].post_atoship(wb.atoship_event("tracking.in_transit", n=i), SECRET)
        assert r.status == 200, r
        kinds[r.json()["id"]] = "dead" if i % 10 == 0 else "slow" if i % 10 == 1 else "ok"
    kept = {e for e, k in kinds.items() if k != "ok"}
    gone = set(kinds) - kept

    # Both sweeps run every second or at once while there is more; the
    # events are old 2 s after they came. Then only the kept ones are left,
    # and both instances answer so.
    def settled():
        return all(_listed(g) == kept for g in gws)

    wb.wait_for(settled, timeout=30, interval=0.5,
                message="every delivered event pruned, every kept one still listed")
    for g in gws:
        for e in sorted(gone)[:20]:
            assert g.admin("GET", "/api/events/" + e)[0] == 404, e
    for e in kept:
        ev = gws[hash(e) % 2].event(e)
        want = {"dead": ("dead", "failed", 2), "slow": ("slow", "pending", 1)}[kinds[e]]
        got = [(d["endpoint"], d["status"], len(d["attempts"])) for d in ev["deliveries"]]
        assert got == [want], (e, got)
    # Every batch went out (its items delivered) and went with its events.
    assert ok.count >= len(gone), ok.count

    # Nothing left behind that no event holds: no delivery, attempt, batch
    # item or batch delivery of a pruned event.
    stale = db.sql("SELECT (SELECT count(*) FROM deliveries d WHERE NOT d.batch AND NOT EXISTS"
                   " (SELECT 1 FROM events e WHERE e.id = d.event_id)),"
                   " (SELECT count(*) FROM deliveries WHERE batch),"
                   " (SELECT count(*) FROM batch_items),"
                   " (SELECT count(*) FROM attempts a WHERE NOT EXISTS"
                   "  (SELECT 1 FROM deliveries d WHERE d.id = a.delivery_id)),"
                   " (SELECT count(*) FROM delivery_outcomes WHERE status = 'delivered'),"
                   " (SELECT count(*) FROM batch_windows)")
    assert stale == [["0", "0", "0", "0", "0", "0"]], stale
    for g in gws:
        log = g.log()
        assert "retention:" not in log and "deadlock" not in log, log[-3000:]
        assert " level=error" not in log and "ERROR" not in log, log[-3000:]


@wb.timeout(90)
def test_rows_another_transaction_holds_are_stepped_over_then_pruned_once_free():
    """A pass never waits for a row another transaction holds (another
    instance's pass, a replay routing the event): it steps over it, its
    group -- and the 200s of the events in it -- goes on, and the back walk
    deletes the row once free. Held here by psql: two events, and every
    batch delivery (the events of its items stay with it)."""
    db = pg.database()
    ok = wb.Sink()
    body = f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(ok.url)}, sign = "hex", secret = "k1" }}
        endpoint "hub" {{ url = {wb.lua(ok.url)}, sign = "hex", secret = "k2", window = "1s" }}
        rules "rules/"
    '''
    rules = ('on("tracking.*", function(ev)\n'
             '  if ev.data.n >= 100 then batch("hub", {n = ev.data.n}) else send("erp", ev) end\n'
             'end)\n')
    g = wb.Gateway(wb.config(body, store=db.url, retention="1h"), files={"rules/10.lua": rules})
    post = lambda n: g.post_atoship(wb.atoship_event("tracking.in_transit", n=n), SECRET)
    batched = [post(100 + i).json()["id"] for i in range(4)]
    plain = [post(i).json()["id"] for i in range(10)]
    wb.wait_for(lambda: ok.count == 11 and db.sql(
                    "SELECT count(*), count(*) FILTER (WHERE batch) FROM deliveries d"
                    " JOIN delivery_outcomes o ON o.delivery_seq = d.seq"
                    " WHERE o.status = 'delivered'") == [["11", "1"]],
                timeout=15, message="10 deliveries and 1 batch delivered")
    g.stop()

    held = {plain[3], plain[7]}
    holder = subprocess.Popen(db.cluster._psql_argv(
        db.name, "BEGIN; SELECT 1 FROM events WHERE id IN ('%s') FOR UPDATE;"
                 " SELECT 1 FROM deliveries WHERE batch FOR UPDATE;"
                 " SELECT pg_sleep(8); COMMIT;" % "', '".join(sorted(held))),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wb._register(_Reaper(holder))
    wb.wait_for(lambda: db.sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(8)%'"
                               " AND pid <> pg_backend_pid() AND wait_event = 'PgSleep'") == [["1"]],
                timeout=10, message="psql holds the rows")
    with open(g.config_path, encoding="utf-8") as f:
        cfg = f.read()
    with open(g.config_path, "w", encoding="utf-8") as f:
        f.write(cfg.replace('retention = "1h"', 'retention = "1s"'))
    g.start()

    def status(e):
        return g.admin("GET", "/api/events/" + e)[0]

    # the free ones go; the group the passes run in keeps answering at once
    deadline = time.monotonic() + 5
    while any(status(e) != 404 for e in plain if e not in held):
        assert time.monotonic() < deadline, [(e, status(e)) for e in plain]
        t = time.monotonic()
        assert post(50).status == 200
        took = time.monotonic() - t
        assert took < (2.0 if wb.ASAN else 1.0), "a POST waited %.1f s (for a pass's lock?)" % took
        time.sleep(0.1)
    time.sleep(1.5)  # passes go on stepping over the held rows
    assert holder.poll() is None, "psql let go too early: %s" % holder.stderr.read()
    assert all(status(e) == 200 for e in held | set(batched)), "a held row (or its batch) was deleted"

    # once free, the back walk deletes them, batch delivery and items with
    # the last of them
    assert holder.wait(20) == 0, holder.stderr.read()
    wb.wait_for(lambda: all(status(e) == 404 for e in held | set(batched)), timeout=10,
                message="the rows held before deleted once free")
    assert db.sql("SELECT (SELECT count(*) FROM deliveries WHERE batch),"
                  " (SELECT count(*) FROM batch_items)") == [["0", "0"]]
    log = g.log()
    assert "WARN" not in log and "ERROR" not in log, log[-3000:]


class _Reaper:
    """Kills a helper process left running by a failed test (wb.cleanup)."""

    def __init__(self, proc):
        self.proc = proc

    def _cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return []
