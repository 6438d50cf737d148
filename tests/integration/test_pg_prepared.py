"""Prepared statements on PostgreSQL (issue 15's ingest target, PG >= 0.5 x
SQLite): on a direct connection each statement with parameters is planned
a handful of times, not once per event (planning the event's insert cost
as much as running it); through PgBouncer in transaction pooling, where a
statement prepared in one transaction is missing in the next, statements
are planned each time and no request fails for it. What an operator sees
in pg_stat_statements (preloaded in this test's own cluster)."""

import pg
import wb

SECRET = "pg-prepared-secret"


def cluster_with_statements():
    c = pg.Cluster(own=True)
    c.sql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    c.stop()
    c.start()
    c.sql("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
    c.sql("SELECT pg_reload_conf()")
    return c


def gateway(url, sink):
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, sign = "none" }}
        rules "rules/"
    ''', store=url)
    return wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"erp"})\n'})


def insert_stats(db):
    """(calls, plans) of the event's insert, as pg_stat_statements counts."""
    rows = db.sql("SELECT sum(calls), sum(plans) FROM pg_stat_statements s JOIN pg_database d"
                  " ON d.oid = s.dbid WHERE d.datname = current_database()"
                  " AND s.query LIKE '%INSERT INTO events%'")
    return int(rows[0][0] or 0), int(rows[0][1] or 0)


def test_direct_connection_plans_the_event_insert_a_few_times_not_per_event():
    c = cluster_with_statements()
    db = pg.Database(c)
    db.sql("CREATE EXTENSION pg_stat_statements")
    sink = wb.Sink()
    g = gateway(db.url, sink)
    for i in range(40):
        r = g.post_atoship(wb.atoship_event("tracking.in_transit", n=i), SECRET)
        assert r.status == 200, r
    sink.wait_for_count(40, timeout=20)
    calls, plans = insert_stats(db)
    assert calls >= 40, (calls, plans)
    # a prepared statement: PostgreSQL plans it for its first five
    # executions, then uses its generic plan
    assert plans <= 10, (calls, plans)
    assert "prepared statements" not in g.log()
    assert g.stop() == 0


def test_through_pgbouncer_statements_are_planned_each_time_and_no_request_fails():
    c = cluster_with_statements()
    bouncer = pg.bouncer(c)
    if bouncer is None:
        print("  skipped: pgbouncer is not installed")
        return
    db = pg.Database(c)
    db.sql("CREATE EXTENSION pg_stat_statements")
    sink = wb.Sink()
    g = gateway(bouncer.url(db), sink)
    for i in range(20):
        r = g.post_atoship(wb.atoship_event("tracking.in_transit", n=i), SECRET)
        assert r.status == 200, (i, r)
    sink.wait_for_count(20, timeout=20)
    calls, plans = insert_stats(db)
    assert calls >= 20 and plans == calls, (calls, plans)
    assert "does not exist" not in g.log(), g._tail(20)
    assert g.stop() == 0
