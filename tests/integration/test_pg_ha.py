"""`waybill migrate` through PostgreSQL's own failover and through PgBouncer
(issue 15, a slice): what exists of the PostgreSQL store today is its schema
step, so that is what goes through them here, on real processes (pg.py):

- a primary with a synchronous streaming standby (pg_basebackup -R), both
  named in the URL with target_session_attrs=read-write: the schema is made
  on the primary and is on the standby; the primary is killed with SIGKILL;
  with only the read-only standby left, migrate fails on one line naming
  each host and no password, and `migrate --wait` waits, then reaches the
  standby once it is promoted and finds the schema in place;
- a first host that accepts and never answers (a machine gone, a hung
  postmaster): connect_timeout is per host, as in libpq, so waybill goes on
  to the next host instead of timing out on the first one for ever;
- PgBouncer in transaction pooling: migrate through it makes the schema; two
  at once make one (the schema lock is pg_advisory_xact_lock, held by the
  transaction, which transaction pooling keeps on one server connection;
  nothing is left held on the pooled connections after); check and serve
  through it say what they say directly, without the password;
- `waybill serve` under load through the failover: 503 while there is no
  primary, 200 again within one reconnect step of the promotion, every
  event answered 200 on the new primary and delivered, no restart
  (failover_under_load; tests/bench/failover.py runs it with longer
  outages for the README's figures);
- a claim whose COMMIT's answer is lost (a relay cuts it): its rows are
  given back once reconnected, not held for the lease.
"""

import http.client
import json
import os
import socket
import sys
import threading
import time

import pg
import test_pg as base
import wb

TIMEOUT = 90


def _one_line(err):
    assert err.endswith("\n") and err.count("\n") == 1, "not one line:\n%s" % err
    return err


def _standby_has_the_schema(standby, db):
    return (base.TABLES <= {r[0] for r in standby.sql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", db.name)}
        and standby.sql("SELECT version FROM waybill_schema", db.name) == [["3"]])


def test_failover_to_the_promoted_synchronous_standby():
    primary = pg.Cluster(own=True)
    standby = pg.standby(primary, synchronous=True)
    db = pg.Database(primary)  # made on the primary, replicated
    url = pg.hosts_url(db, [primary, standby])
    shown = url.replace(pg.PASSWORD, "***")
    outputs = []

    rc, out, err = base._run("migrate", url)
    outputs += [out, err]
    assert rc == 0, (out, err)
    assert out.strip() == "store: '%s': created schema version 3 (29 statements)" % shown, out
    assert primary.replication(standby) == ["streaming", "sync"]
    # COMMIT returned once the standby had flushed it: the primary may die now
    primary.kill()
    wb.wait_for(lambda: _standby_has_the_schema(standby, db), timeout=10,
                message="the schema replayed on the standby")
    assert standby.in_recovery()

    # only the read-only standby is left: one attempt, one line, each host
    t0 = time.monotonic()
    rc, out, err = base._run("migrate", url)
    outputs += [out, err]
    assert rc != 0 and out == "", (out, err)
    assert time.monotonic() - t0 < 5, time.monotonic() - t0
    _one_line(err)
    assert err.startswith("waybill migrate: store: cannot connect to '%s': " % shown), err
    assert ('connection to server at "127.0.0.1", port %d failed: Connection refused'
            % primary.port) in err, err
    assert ('connection to server at "127.0.0.1", port %d failed: session is read-only'
            % standby.port) in err, err

    # --wait: keeps trying while there is no primary, reaches the promoted one
    p = base._migrate_bg(url, "--wait", "40")
    time.sleep(1.5)
    assert p.poll() is None, base._finish(p)
    assert standby.in_recovery()  # nothing was written to it
    standby.promote()
    t0 = time.monotonic()
    rc, out, err = base._finish(p, 30)
    outputs += [out, err]
    assert rc == 0, (out, err)
    assert out.strip() == "store: '%s': schema version 3 is in place, nothing to do" % shown, out
    assert err == "", err
    # within one backoff step (5 s at most, a quarter more at random)
    assert time.monotonic() - t0 < 6.25 + 2, time.monotonic() - t0
    assert standby.sql("SELECT count(*) FROM waybill_schema", db.name) == [["1"]]
    # and at once from now on, the dead host first in the URL or not
    rc, out, err = base._run("migrate", url)
    outputs += [out, err]
    assert rc == 0 and "schema version 3 is in place" in out, (out, err)
    base._no_secret(outputs, pg.PASSWORD)


def _silent_listener():
    """A port whose kernel accepts and where nothing ever answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", wb.free_port()))
    s.listen(8)
    return s


def test_connect_timeout_is_per_host_a_silent_first_host_does_not_hide_the_second():
    db = pg.database()
    silent, silent2 = _silent_listener(), _silent_listener()
    dead = wb.free_port()
    try:
        hosts = lambda *ports: ",".join("127.0.0.1:%d" % p for p in ports)  # noqa: E731
        url = "postgresql://waybill:%s@%s/%s?connect_timeout=2&target_session_attrs=read-write"
        # the first host silent, the second the primary: libpq's
        # connect_timeout is per host, so is waybill's
        t0 = time.monotonic()
        rc, out, err = base._run("migrate", url % (pg.PASSWORD, hosts(
            silent.getsockname()[1], db.port), db.name))
        secs = time.monotonic() - t0
        assert rc == 0 and "created schema version 3" in out, (out, err)
        assert 1.5 < secs < 8, secs
        # all three fail: each is named with its own reason, on one line
        rc, out, err = base._run("migrate", url % (pg.PASSWORD, hosts(
            silent.getsockname()[1], dead, silent2.getsockname()[1]), db.name))
        _one_line(err)
        assert rc != 0, (out, err)
        for port, why in ((silent.getsockname()[1], "no connection within 2000 ms"),
                          (dead, "Connection refused"),
                          (silent2.getsockname()[1], "no connection within 2000 ms")):
            assert 'connection to server at "127.0.0.1", port %d failed: %s' % (port, why) \
                in err, (port, err)
        base._no_secret([out, err], pg.PASSWORD)
    finally:
        silent.close()
        silent2.close()


def _bouncer():
    b = pg.bouncer(pg.cluster())
    if b is None:
        print("  skipped: pgbouncer not installed (make test-deps installs it)",
              file=sys.__stderr__)
    return b


def _pooled_idle(db):
    """The role's server connections to db that sit idle (in the pool)."""
    return int(db.sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'waybill'"
                      " AND datname = current_database() AND state = 'idle'")[0][0])


def test_migrate_through_pgbouncer_in_transaction_pooling():
    bouncer = _bouncer()
    if bouncer is None:
        return
    db = pg.database()
    url = bouncer.url(db)
    shown = url.replace(pg.PASSWORD, "***")
    rc, out, err = base._run("migrate", url)
    assert rc == 0, (out, err)
    assert out.strip() == "store: '%s': created schema version 3 (29 statements)" % shown, out
    assert err == "", err
    assert base._tables(db) == base.TABLES
    assert "login attempt: db=%s user=waybill" % db.name in bouncer.log(), bouncer.log()[-2000:]

    # two at once through it, both waiting for the schema lock on the server
    db = pg.database()
    url = bouncer.url(db)
    base.two_migrates_at_once(db, url, " behind pgbouncer")
    # the lock went with its transaction: the pool's server connections
    # stay open, idle, and hold nothing
    assert _pooled_idle(db) >= 1, db.sql("SELECT usename, state FROM pg_stat_activity")
    assert base._advisory(db, True) == 0

    # four at once on two pooled server connections, a few times
    for _ in range(3):
        db = pg.database()
        cfg = base._config(bouncer.url(db))
        procs = [base._migrate_bg(cfg) for _ in range(4)]
        results = [base._finish(p) for p in procs]
        assert all(rc == 0 for rc, _, _ in results), results
        assert sum("created schema" in out for _, out, _ in results) == 1, results
        assert db.sql("SELECT count(*) FROM waybill_schema") == [["1"]]
        base._no_secret([o for r in results for o in r[1:]], pg.PASSWORD)


def test_check_and_serve_through_pgbouncer_are_clear_without_the_password():
    bouncer = _bouncer()
    if bouncer is None:
        return
    db = pg.database()
    url = bouncer.url(db)
    shown = url.replace(pg.PASSWORD, "***")
    outputs = []
    rc, out, err = base._run("check", url)
    outputs += [out, err]
    assert rc == 0, (out, err)
    assert ("ok (0 sources, 0 endpoints); store: '%s': the database has none yet" % shown
            ) in _one_line(out), out
    assert base._tables(db) == set()  # check changes nothing
    assert base._run("migrate", url)[0] == 0
    rc, out, err = base._run("check", url)
    outputs += [out, err]
    assert rc == 0 and "schema version 3 is in place" in _one_line(out), (out, err)
    # serve through it: no session state is kept across transactions (the
    # schema lock is transaction-scoped, each group one transaction)
    sink = wb.Sink()
    g = wb.Gateway(wb.config('''
        source "atoship" { verify = "atoship", secret = "bouncer-secret" }
        endpoint "erp" { url = %s, secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }
        rules "rules/"
    ''' % wb.lua(sink.url), store=url), files={"rules/10.lua": 'on("*", {"erp"})'})
    for _ in range(5):
        assert g.post_atoship(wb.atoship_event(), "bouncer-secret").status == 200
    sink.wait_for_count(5, timeout=10)
    g.stop()
    outputs.append(g.log())
    # a wrong password: pgbouncer refuses it (in its words), waybill says so
    wrong = "Wr0ng-bouncer-9a"
    rc, out, err = base._run("check", bouncer.url(db, password=wrong))
    outputs += [out, err]
    assert rc != 0, (out, err)
    _one_line(err)
    assert ("cannot connect to '%s': connection to server at \"127.0.0.1\", port %d failed:"
            " FATAL:  SASL authentication failed" % (bouncer.url(db, password="***"),
                                                     bouncer.port)) in err, err
    # no password at all (none in the URL, PGPASSWORD or a pgpass file)
    rc, out, err = base._run("check", bouncer.url(db, password=None),
                             env={"PGPASSWORD": "", "PGPASSFILE": "/nonexistent"})
    outputs += [out, err]
    assert rc != 0 and "no password supplied" in _one_line(err), (out, err)
    base._no_secret(outputs, pg.PASSWORD, wrong)


def _failover_gateway(url, sink, **settings):
    return wb.Gateway(wb.config('''
        source "atoship" { verify = "atoship", secret = "failover-secret" }
        endpoint "erp" { url = %s, sign = "none", retry = { "0s", "500ms", "1s", "2s" } }
        rules "rules/"
    ''' % wb.lua(sink.url), store=url, **settings), files={"rules/10.lua": 'on("*", {"erp"})'})


class _Posters:
    """Threads posting events to g without a pause; each answer kept as
    (sent, answered, status, event id or None)."""

    def __init__(self, g, threads=4):
        self.g, self.results, self.lock = g, [], threading.Lock()
        self.stop_ = threading.Event()
        self.ts = [threading.Thread(target=self._client, args=(c, threads), daemon=True)
                   for c in range(threads)]
        for t in self.ts:
            t.start()

    def _client(self, c, step):
        i = c
        while not self.stop_.is_set():
            t = time.monotonic()
            try:
                r = self.g.post_atoship(wb.atoship_event("tracking.in_transit", n=i),
                                        "failover-secret")
                status = r.status
                eid = r.json()["id"] if r.status == 200 else None
                if r.status == 503:
                    assert r.headers.get("retry-after"), r.headers
            except (OSError, http.client.HTTPException) as e:
                status, eid = "error: %r" % e, None
            with self.lock:
                self.results.append((t, time.monotonic(), status, eid))
            i += step
            time.sleep(0.005)

    def first_200_after(self, t0):
        """When the first 200 answered after t0 came."""
        with self.lock:
            return min((r[1] for r in self.results if r[1] >= t0 and r[2] == 200), default=None)

    def stop(self):
        self.stop_.set()
        for t in self.ts:
            t.join(30)
        return list(self.results)


def _processes_of(cluster):
    """The pids whose command line names the cluster (its postmaster and
    its backends: pg.py sets cluster_name, which each one's title shows)."""
    pids = []
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if cluster.name.encode() in f.read():
                    pids.append(int(pid))
        except (OSError, ValueError):
            pass
    return pids


def _promote_timed(standby):
    """Promotes standby; returns (when pg_ctl promote began, when the
    standby was first seen out of recovery): pg_ctl -w and pg.py's own
    check return a while after it takes writes, so a thread asks meanwhile."""
    seen = []

    def watch():
        while not seen:
            try:
                if not standby.in_recovery():
                    seen.append(time.monotonic())
            except AssertionError:
                pass
            time.sleep(0.01)

    t = threading.Thread(target=watch, daemon=True)
    began = time.monotonic()
    t.start()
    try:
        standby.promote()
    finally:
        t.join(10)
    return began, seen[0]


def _missing_context(standby, db, g, miss):
    now = int(time.time() * 1000)
    return "%d missing; their rows (event, status, attempts, due in ms, lease owner, lease" \
        " left ms, outcome): %s\n%s" % (len(miss), standby.sql(
            "SELECT d.event_id, q.status, q.attempts, q.next_at - %d, q.lease_owner,"
            " q.lease_until - %d, o.status FROM deliveries d"
            " LEFT JOIN delivery_queue q ON q.delivery_seq = d.seq"
            " LEFT JOIN delivery_outcomes o ON o.delivery_seq = d.seq WHERE d.event_id IN (%s)"
            % (now, now, ",".join("'%s'" % e for e in miss[:20])), db.name), g._tail(60))


def failover_under_load(dark_s=1.5, lease=None):
    """A gateway serving on [primary, synchronous standby] under load; the
    primary is SIGKILLed, the standby promoted dark_s later. Checks what a
    user sees (the test below says what) and returns the seconds from the
    standby taking writes to the gateway's first 200 (tests/bench/failover.py
    runs it with other dark_s for the README's figures)."""
    primary = pg.Cluster(own=True)
    standby = pg.standby(primary, synchronous=True)
    db = pg.Database(primary)  # replicated: the standby has it
    url = pg.hosts_url(db, [primary, standby])
    sink = wb.Sink()
    g = _failover_gateway(url, sink, **({"lease": lease} if lease else {}))
    pid = g.pid
    posters = _Posters(g)
    try:
        g.wait_for(lambda: sink.count >= 30, timeout=10, message="deliveries flowing")
        t_kill = time.monotonic()
        primary.kill()  # a crash: no shutdown, its port closed
        # its backends end as they notice (a commit they were finishing,
        # replicated to the synchronous standby, may still be answered)
        wb.wait_for(lambda: not _processes_of(primary), timeout=5,
                    message="the killed primary's backends gone")
        t_gone = time.monotonic()
        g.wait_for(lambda: wb.http_request(g.admin_port, "GET", "/healthz", timeout=2).status == 503,
                   timeout=5, message="/healthz 503 with no primary")
        time.sleep(max(0.0, t_kill + dark_s - time.monotonic()))
        assert wb.http_request(g.admin_port, "GET", "/healthz", timeout=2).status == 503
        assert standby.in_recovery()
        t_promote, t_writable = _promote_timed(standby)
        g.wait_for(lambda: posters.first_200_after(t_promote), timeout=15,
                   message="ingest answers 200 again after the promotion")
        took = posters.first_200_after(t_promote) - t_writable
        g.wait_for(lambda: wb.http_request(g.admin_port, "GET", "/healthz", timeout=2).status == 200,
                   timeout=5, message="/healthz 200 again")
        time.sleep(1.0)  # load on the new primary
    finally:
        results = posters.stop()
    print("  failover (%.1f s without a primary): the standby took writes %.2f s after pg_ctl"
          " promote, the first 200 %.2f s after that; %d posts, %d answered 200"
          % (dark_s, t_writable - t_promote, took, len(results),
             sum(r[2] == 200 for r in results)), file=sys.__stderr__)
    # within one backoff step (5 s at most, a quarter more at random), a
    # connection and a group
    assert took < 6.25 + 2, took
    assert g.pid == pid and g.running() and g.starts == 1, "the gateway restarted or died"
    bad = [r for r in results if r[2] not in (200, 503)]
    assert not bad, bad[:5]
    # while there was no primary: every POST answered 503, none 200
    dark = [r for r in results if r[0] >= t_gone and r[1] <= t_promote]
    assert dark and all(r[2] == 503 for r in dark), \
        [(round(r[0] - t_kill, 3), round(r[1] - t_kill, 3), r[2]) for r in dark if r[2] != 503][:10]
    acked = [r[3] for r in results if r[2] == 200]
    before = [r[3] for r in results if r[2] == 200 and r[1] <= t_kill]
    after = [r[3] for r in results if r[2] == 200 and r[0] >= t_writable]
    assert len(before) >= 20 and len(after) >= 5, (len(before), len(after))
    # every event answered 200 is on the new primary: the gateway's API and SQL
    for eid in acked:
        st, ev = g.admin("GET", "/api/events/" + eid)
        assert st == 200, (eid, st, ev)
    ids = ",".join("'%s'" % e for e in acked)
    assert standby.sql("SELECT count(*) FROM events WHERE id IN (%s)" % ids, db.name) == \
        [[str(len(acked))]]
    # ... and reaches the sink, well before a lease (30 s) ends
    got = lambda: {q.json()["id"] for q in sink.requests}  # noqa: E731
    try:
        g.wait_for(lambda: set(acked) <= got(), timeout=15,
                   message="every acknowledged event delivered (%d)" % len(acked))
    except AssertionError as e:
        raise AssertionError("%s\n%s" % (e, _missing_context(standby, db, g, sorted(set(acked) - got()))))
    assert g.pid == pid and g.running()
    base._no_secret([g.log()], pg.PASSWORD)
    return took


@wb.timeout(120)
def test_serve_under_load_through_a_failover_503_meanwhile_no_acknowledged_event_lost():
    """waybill serve given both hosts (target_session_attrs=read-write),
    posters sending without a pause, a sink endpoint (the default 30 s
    lease); the primary SIGKILLed, the standby promoted 1.5 s later: while
    there is no primary every POST answers 503 (a commit the dying
    primary's backends finish and the standby has may still be 200) and
    /healthz 503; after the promotion 200 again within one backoff step;
    every event answered 200 is in the new primary (the gateway's API and
    SQL on it) and reaches the sink; never restarted; no password logged."""
    failover_under_load(1.5)

# How the relay below tells statements apart: by their SQL (a Parse names
# it; a Bind names the statement parsed, an Execute runs the last bound).
MARKS = ((b"SET lease_owner = $4, lease_until = $2::bigint + $5::bigint", "claim"),
         (b"INSERT INTO events (", "event"), (b"COMMIT", "commit"))


class CommitAnswerCutter(pg.ProtocolRelay):
    """A TCP relay to PostgreSQL that, once armed with a kind ("claim": a
    claim that leased rows; "event": a group that stored an event), lets
    such a transaction commit and then cuts the connection before its
    COMMIT's answer reaches waybill: what a primary dying between
    committing and answering does. Each Execute's kind is queued and each
    CommandComplete taken against it, in order (no statement fails while
    it is armed)."""

    def __init__(self, db):
        self.armed = None
        self.cut_at = None
        self.cut_rows = 0
        super().__init__(db)

    def new_conn(self):
        return {"names": {}, "bound": None, "runs": [], "rows": 0, "kind": None}

    def arm(self, kind):
        with self.lock:
            self.armed, self.cut_at = kind, None

    def from_client(self, conn, head, body):
        t = head[:1]
        with self.lock:
            if t == b"P":
                name, sql = body.split(b"\0")[:2]
                conn["names"][name] = next((k for m, k in MARKS if m in sql), None)
            elif t == b"B":
                conn["bound"] = conn["names"].get(body.split(b"\0")[1])
            elif t == b"E":
                conn["runs"].append(conn["bound"])
        return head + body

    def from_server(self, conn, head, body):
        if head[:1] in (b"C", b"I", b"E") and self._answer(conn, head[:1], body):
            return None
        return head + body

    def _answer(self, conn, t, body):
        """One Execute's answer; True: cut here."""
        with self.lock:
            kind = conn["runs"].pop(0) if conn["runs"] else None
            tag = body.rstrip(b"\0") if t == b"C" else b""
            if kind == "claim" and tag.startswith(b"UPDATE ") and int(tag[7:]) > 0:
                conn["kind"], conn["rows"] = "claim", int(tag[7:])
            elif kind == "event" and tag == b"SELECT 1":  # stored (not a duplicate)
                conn["kind"], conn["rows"] = "event", 1
            elif kind == "commit":
                cut = tag == b"COMMIT" and self.armed and conn["kind"] == self.armed
                if cut:
                    self.armed, self.cut_rows, self.cut_at = None, conn["rows"], time.monotonic()
                conn["kind"], conn["rows"] = None, 0
                return cut
            return False


def test_a_claim_committed_whose_answer_was_lost_is_given_back_not_held_for_its_lease():
    """The primary dies after committing a claim and before answering it
    (the failover test meets this now and then): the rows are leased to
    this instance, which never got them. They must not wait out the lease
    (30 s by default) before anyone sends them: once reconnected, the
    instance gives back the leases of the claims it did not hear back from,
    and they are delivered within seconds, each once."""
    db = pg.database()
    cutter = CommitAnswerCutter(db)
    sink = wb.Sink()
    try:
        g = _failover_gateway(cutter.url(db), sink)  # lease: the default 30 s
        first = g.post_atoship(wb.atoship_event("tracking.in_transit"), "failover-secret")
        assert first.status == 200, first
        sink.wait_for_count(1, timeout=10)
        cutter.arm("claim")
        ids = [first.json()["id"]]
        for i in range(3):
            r = g.post_atoship(wb.atoship_event("tracking.in_transit", n=i), "failover-secret")
            assert r.status == 200, r
            ids.append(r.json()["id"])
        wb.wait_for(lambda: cutter.cut_at is not None, timeout=10,
                    message="a claim's COMMIT answer cut")
        got = lambda: [q.json()["id"] for q in sink.requests]  # noqa: E731
        g.wait_for(lambda: set(ids) <= set(got()), timeout=10,
                   message="the %d rows of the cut claim delivered within 10 s, not at the"
                   " lease's end (30 s)" % cutter.cut_rows)
        took = time.monotonic() - cutter.cut_at
        time.sleep(0.5)
        assert sorted(got()) == sorted(ids), "a delivery sent twice: %s" % got()
        assert g.running()
        assert "gave back the leases of %d" % cutter.cut_rows in g.log(), g.log()[-3000:]
        print("  a claim's answer lost: %d rows delivered %.2f s after the cut"
              % (cutter.cut_rows, took), file=sys.__stderr__)
        base._no_secret([g.log()], pg.PASSWORD)
    finally:
        cutter.close()


def test_a_group_whose_commit_answer_was_lost_is_answered_503_and_its_retry_200_once():
    """The connection goes after the group's COMMIT reached the server and
    before its answer came (a primary killed at that moment): waybill cannot
    know the event is stored, so the carrier gets 503 (never a 200 for a
    group whose COMMIT did not answer); the event is in fact committed, and
    the carrier's retry of the same body is answered 200 with the stored
    copy's id, marked duplicate; its delivery goes out once."""
    db = pg.database()
    cutter = CommitAnswerCutter(db)
    sink = wb.Sink()
    try:
        g = _failover_gateway(cutter.url(db), sink)
        assert g.post_atoship(wb.atoship_event("tracking.in_transit"), "failover-secret").status == 200
        sink.wait_for_count(1, timeout=10)
        time.sleep(0.5)  # its outcome's group committed
        body = wb.atoship_event("tracking.delivered")
        source_id = json.loads(body)["id"]
        cutter.arm("event")
        r = g.post_atoship(body, "failover-secret")
        assert cutter.cut_at is not None, "no group's COMMIT answer was cut"
        assert r.status == 503 and r.headers.get("retry-after"), r
        stored = db.sql("SELECT id FROM events WHERE source_id = '%s'" % source_id)
        assert len(stored) == 1, stored  # committed all the same
        g.wait_for(lambda: wb.http_request(g.admin_port, "GET", "/healthz", timeout=2).status == 200,
                   timeout=5, message="healthy again")
        r = g.post_atoship(body, "failover-secret")
        assert r.status == 200, r
        assert r.json() == {"id": stored[0][0], "duplicate": True}, r.json()
        sink.wait_for_count(2, timeout=10)
        time.sleep(1.0)
        assert [q.json()["id"] for q in sink.requests].count(stored[0][0]) == 1, sink.requests
        base._no_secret([g.log()], pg.PASSWORD)
    finally:
        cutter.close()
