"""The PostgreSQL store as far as it goes (issue 15, first slice): `waybill
migrate` creates the schema on a real PostgreSQL 15 (pg.py), two at once
make one schema, a newer schema is refused, an unreachable database or a
wrong password is a clear error, the password never shows, check reads the
schema without changing it, and serve creates it (serving itself:
test_pg_serve.py).
"""

import os
import subprocess
import time

import pg
import wb

TIMEOUT = 90
SCHEMA_LOCK = "33610883074878572"  # store_pg_int.h: STORE_PG_SCHEMA_LOCK

TABLES = {"waybill_schema", "events", "deliveries", "delivery_queue", "delivery_outcomes",
          "attempts", "batch_windows", "batch_items", "endpoint_state", "subscriptions",
          "nonces", "store_meta", "instances"}


def _config(url):
    d = wb._mkdtemp("wb-pg-")
    path = os.path.join(d, "waybill.lua")
    with open(path, "w") as f:
        f.write('store = "%s"\n' % url)
    return path


def _run(cmd, url, env=None, timeout=60):
    """waybill CMD -c (a config whose store is url): (exit code, stdout, stderr)."""
    r = wb.run(cmd, "-c", _config(url), env=env, timeout=timeout)
    return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


def _no_secret(outputs, *secrets):
    for out in outputs:
        for s in secrets:
            assert s not in out, "%r shown in:\n%s" % (s, out)


def _migrate_bg(url_or_cfg, *args):
    """`waybill migrate` started in the background (config path or URL)."""
    cfg = url_or_cfg if url_or_cfg.endswith(".lua") else _config(url_or_cfg)
    return subprocess.Popen([wb._bin(), "migrate", "-c", cfg] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(p, timeout=60):
    """(exit code, stdout, stderr) of a background waybill; a sanitizer's
    report in its stderr fails the test (wb.run does the same)."""
    out, err = p.communicate(timeout=timeout)
    out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    for pat in wb.SANITIZER_PATTERNS:
        assert pat not in err, err[-4000:]
    return p.returncode, out, err


def _tables(db):
    return {r[0] for r in db.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_migrate_creates_the_schema_on_an_empty_database():
    db = pg.database()
    rc, out, err = _run("migrate", db.url)
    assert rc == 0, (out, err)
    shown = db.url_with("***")
    assert out.strip() == "store: '%s': created schema version 3 (29 statements)" % shown, out
    assert err == "", err
    assert _tables(db) == TABLES
    assert db.sql("SELECT version, written_by FROM waybill_schema") == [["3", "waybill 0.1.0"]]
    # the dedupe key: the same carrier event id twice is one row
    db.sql("INSERT INTO events (id, source, source_id, status, received_at)"
           " VALUES ('e1', 'atoship', 'x1', 'received', 1)")
    dup = db.sql("INSERT INTO events (id, source, source_id, status, received_at)"
                 " VALUES ('e2', 'atoship', 'x1', 'received', 2) ON CONFLICT DO NOTHING RETURNING id")
    assert dup == [], dup
    # leases on the queue's narrow rows, attempts appended once per (delivery, n)
    cols = {r[0] for r in db.sql("SELECT column_name FROM information_schema.columns"
                                 " WHERE table_name = 'delivery_queue'")}
    assert {"lease_owner", "lease_until", "next_at"} <= cols, cols
    pk = db.sql("SELECT string_agg(a.attname, ',' ORDER BY a.attnum) FROM pg_index i"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                " WHERE i.indrelid = 'attempts'::regclass AND i.indisprimary")
    assert pk == [["delivery_id,n"]], pk
    # again: nothing to do, still exit 0
    rc, out, err = _run("migrate", db.url)
    assert rc == 0, (out, err)
    assert out.strip() == "store: '%s': schema version 3 is in place, nothing to do" % shown, out
    assert err == "", err  # no server NOTICE leaks to the terminal
    assert db.sql("SELECT count(*) FROM waybill_schema") == [["1"]]
    _no_secret([out, err], pg.PASSWORD)


def _advisory(db, granted):
    """How many advisory locks of db's database are held (granted) or waited for."""
    return int(db.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                      " AND database = (SELECT oid FROM pg_database"
                      " WHERE datname = current_database())"
                      " AND %s granted" % ("" if granted else "NOT"))[0][0])


def _lock_waiters(db):
    return _advisory(db, False)


def _hold_schema_lock(db):
    """A psql session of db holding the schema lock (for 30 s at most)."""
    holder = subprocess.Popen(
        pg.cluster()._psql_argv(db.name, "BEGIN; SELECT pg_advisory_xact_lock(%s);"
                                " SELECT pg_sleep(30); COMMIT" % SCHEMA_LOCK),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wb.wait_for(lambda: _advisory(db, True) == 1, timeout=10)
    return holder


def _release_schema_lock(db, holder):
    db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
           " WHERE datname = current_database() AND query LIKE '%%pg_sleep(30)%%'"
           " AND pid <> pg_backend_pid()")
    holder.wait(10)


def two_migrates_at_once(db, url, where=""):
    """Two `waybill migrate` on url at once, both surely waiting for the
    schema lock (held until both wait, then let go together): one creates
    the schema, the other finds it made."""
    holder = _hold_schema_lock(db)
    try:
        cfg = _config(url)
        procs = [_migrate_bg(cfg) for _ in range(2)]
        wb.wait_for(lambda: _lock_waiters(db) == 2, timeout=20,
                    message="both migrates waiting for the schema lock" + where)
        _release_schema_lock(db, holder)
        results = [_finish(p) for p in procs]
    finally:
        holder.kill()
        holder.wait()
    for rc, out, err in results:
        assert rc == 0, (out, err)
    outs = sorted(out.strip().split(": ", 2)[-1] for _, out, _ in results)
    assert outs == ["created schema version 3 (29 statements)",
                    "schema version 3 is in place, nothing to do"], outs
    assert db.sql("SELECT count(*) FROM waybill_schema") == [["1"]]
    assert _tables(db) == TABLES


def test_two_migrates_at_once_make_one_schema():
    db = pg.database()
    two_migrates_at_once(db, db.url)
    # and four let loose together on another empty database, a few times
    for _ in range(3):
        db = pg.database()
        cfg = _config(db.url)
        procs = [_migrate_bg(cfg) for _ in range(4)]
        results = [_finish(p) for p in procs]
        assert all(rc == 0 for rc, _, _ in results), results
        assert sum("created schema" in out for _, out, _ in results) == 1, results
        assert db.sql("SELECT count(*) FROM waybill_schema") == [["1"]]


def test_a_newer_schema_is_refused_by_migrate_check_and_serve():
    db = pg.database()
    assert _run("migrate", db.url)[0] == 0
    db.sql("INSERT INTO waybill_schema (version, written_by) VALUES (4, 'waybill 9.9')")
    outputs = []
    for cmd in ("migrate", "check", "serve"):
        rc, out, err = _run(cmd, db.url)
        outputs += [out, err]
        assert rc != 0, (cmd, out, err)
        assert ("store: '%s': the database's schema is version 4, newer than this waybill's (3):"
                " run the waybill that wrote it, or a newer one" % db.url_with("***")) in err, \
            (cmd, err)
    _no_secret(outputs, pg.PASSWORD)
    assert db.sql("SELECT max(version) FROM waybill_schema") == [["4"]]  # untouched


def test_unreachable_database_and_wrong_passwords_are_clear_errors_without_the_password():
    db = pg.database()
    outputs = []
    down = "postgresql://waybill:Unreach-4417@127.0.0.1:%d/x" % wb.free_port()
    for cmd in ("migrate", "check", "serve"):
        rc, out, err = _run(cmd, down)
        outputs += [out, err]
        assert rc != 0, (cmd, out, err)
        assert "cannot connect to 'postgresql://waybill:***@127.0.0.1:" in err, (cmd, err)
        assert "Connection refused" in err, err
    wrong = "Wr0ng-pw-0518"
    for url in (db.url_with(wrong), db.url_with(None, query="password=" + wrong)):
        rc, out, err = _run("migrate", url)
        outputs += [out, err]
        assert rc != 0, (out, err)
        assert 'password authentication failed for user "waybill"' in err, err
    # a password libpq cannot decode: its parse error would quote it
    bad = "Bad%zzSecret"
    rc, out, err = _run("migrate", db.url_with(bad))
    outputs += [out, err]
    assert rc != 0 and "invalid percent-encoded token" in err, (out, err)
    # and the right one in the query string works
    rc, out, err = _run("migrate", db.url_with(None, query="password=" + pg.PASSWORD))
    outputs += [out, err]
    assert rc == 0 and "created schema version 3" in out, (out, err)
    assert "password=***" in out, out
    _no_secret(outputs, "Unreach-4417", wrong, "Bad%zzSecret", "zzSecret", pg.PASSWORD)


def test_the_password_from_pgpassword_or_pgpass():
    db = pg.database()
    url = db.url_with(None)
    rc, out, err = _run("migrate", url, env={"PGPASSWORD": "", "PGPASSFILE": "/nonexistent"})
    assert rc != 0 and "no password supplied" in err, (out, err)
    rc, out, err = _run("migrate", url, env={"PGPASSWORD": pg.PASSWORD})
    assert rc == 0 and "created schema version 3" in out, (out, err)
    _no_secret([out, err], pg.PASSWORD)
    home = wb._mkdtemp("wb-pg-home-")
    with open(os.path.join(home, ".pgpass"), "w") as f:
        f.write("127.0.0.1:%d:%s:waybill:%s\n" % (db.port, db.name, pg.PASSWORD))
    os.chmod(os.path.join(home, ".pgpass"), 0o600)
    rc, out, err = _run("migrate", url, env={"HOME": home})
    assert rc == 0 and "schema version 3 is in place" in out, (out, err)
    _no_secret([out, err], pg.PASSWORD)


def test_check_reads_the_schema_and_serve_creates_it_without_showing_the_password():
    db = pg.database()
    rc, out, err = _run("check", db.url)
    assert rc == 0, (out, err)
    assert "ok (0 sources, 0 endpoints); store: '%s': the database has none yet: migrate or" \
        " serve creates it" % db.url_with("***") in out, out
    assert _tables(db) == set()  # check changes nothing
    g = wb.Gateway(wb.config("", store=db.url))
    log = g.log()
    # the first instance on an empty database created the schema, and serves
    assert "created schema version 3" in log or _tables(db) == TABLES, log
    assert _tables(db) == TABLES
    assert wb.http_request(g.admin_port, "GET", "/healthz").status == 200
    g.stop()
    rc, out, err = _run("check", db.url)
    assert rc == 0 and "schema version 3 is in place" in out, (out, err)
    _no_secret([g.log(), out, err], pg.PASSWORD)


def test_a_connection_lost_mid_migration_is_an_error_not_an_ok():
    db = pg.database()
    holder = _hold_schema_lock(db)
    try:
        p = _migrate_bg(db.url)
        wb.wait_for(lambda: _lock_waiters(db) == 1, timeout=20)
        # the database ends migrate's session while its transaction waits
        db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
               " WHERE datname = current_database() AND application_name = 'waybill'")
        rc, out, err = _finish(p, 30)
        _release_schema_lock(db, holder)
    finally:
        holder.kill()
        holder.wait()
    assert rc != 0, (out, err)
    assert out == "", out
    assert "terminating connection due to administrator command" in err, err
    _no_secret([out, err], pg.PASSWORD)
    time.sleep(0.2)
    assert "waybill_schema" not in _tables(db) or \
        db.sql("SELECT count(*) FROM waybill_schema") == [["0"]]


def test_migrate_wait_keeps_trying_until_the_database_is_up():
    # a cluster of this test's own: it is stopped (the runner's may be shared)
    cluster = pg.Cluster(own=True)
    db = pg.Database(cluster)
    cluster.stop()
    try:
        t0 = time.monotonic()
        p = _migrate_bg(db.url, "--wait", "30")
        time.sleep(1.5)
        assert p.poll() is None, p.communicate()  # still trying (backoff 0.1, 0.2, 0.4 s ...)
        cluster.start()
        rc, out, err = _finish(p, 30)
    finally:
        if cluster.proc is None:
            cluster.start()
    assert rc == 0, (out, err)
    assert "created schema version 3" in out, out
    # up within a backoff step of the start (at most 5 s + a quarter)
    assert time.monotonic() - t0 < 1.5 + 10, time.monotonic() - t0
    _no_secret([out, err], pg.PASSWORD)
    # without --wait one attempt: a stopped database fails at once
    cluster.stop()
    try:
        t0 = time.monotonic()
        rc, out, err = _run("migrate", db.url)
        secs = time.monotonic() - t0
    finally:
        cluster.start()
    assert rc != 0 and "cannot connect to" in err and "attempts" not in err, (out, err)
    assert secs < 5, secs


def test_connect_timeout_bounds_an_attempt_to_a_silent_server():
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = wb.free_port()
    s.bind(("127.0.0.1", port))
    s.listen(8)  # the kernel accepts; nothing ever answers libpq's startup packet
    try:
        t0 = time.monotonic()
        rc, out, err = _run("migrate", "postgresql://waybill:Silent-771@127.0.0.1:%d/x"
                            "?connect_timeout=2" % port)
        secs = time.monotonic() - t0
    finally:
        s.close()
    assert rc != 0, (out, err)
    assert "no connection within 2000 ms" in err, err
    assert 1.5 < secs < 8, secs
    _no_secret([out, err], "Silent-771")


def test_several_hosts_and_target_session_attrs_go_to_libpq():
    db = pg.database()
    dead = wb.free_port()
    url = "postgresql://waybill:%s@127.0.0.1:%d,127.0.0.1:%d/%s" % (pg.PASSWORD, dead, db.port,
                                                                   db.name)
    # the first host refuses, the second is a primary
    rc, out, err = _run("migrate", url + "?target_session_attrs=read-write")
    assert rc == 0 and "created schema version 3" in out, (out, err)
    # no standby among them: libpq says so, waybill passes it on
    rc, out, err = _run("migrate", url + "?target_session_attrs=standby")
    assert rc != 0, (out, err)
    assert "server is not in hot standby mode" in err, err
    _no_secret([out, err], pg.PASSWORD)
