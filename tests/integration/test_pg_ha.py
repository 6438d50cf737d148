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
  through it say what they say directly, without the password.
"""

import socket
import sys
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
        and standby.sql("SELECT version FROM waybill_schema", db.name) == [["2"]])


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
    assert out.strip() == "store: '%s': created schema version 2 (26 statements)" % shown, out
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
    assert out.strip() == "store: '%s': schema version 2 is in place, nothing to do" % shown, out
    assert err == "", err
    # within one backoff step (5 s at most, a quarter more at random)
    assert time.monotonic() - t0 < 6.25 + 2, time.monotonic() - t0
    assert standby.sql("SELECT count(*) FROM waybill_schema", db.name) == [["1"]]
    # and at once from now on, the dead host first in the URL or not
    rc, out, err = base._run("migrate", url)
    outputs += [out, err]
    assert rc == 0 and "schema version 2 is in place" in out, (out, err)
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
        assert rc == 0 and "created schema version 2" in out, (out, err)
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
    assert out.strip() == "store: '%s': created schema version 2 (26 statements)" % shown, out
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
    assert rc == 0 and "schema version 2 is in place" in _one_line(out), (out, err)
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
