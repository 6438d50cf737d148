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
    # no session lock behind a pooler (it would stay with a pooled server
    # session): the instance is registered without one, and none is held
    assert db.sql("SELECT session_lock FROM instances") == [["f"]]
    assert db.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [["0"]]
    assert g.stop() == 0


def test_through_pgbouncer_under_concurrent_load_every_request_is_answered():
    """PgBouncer (transaction pooling) forwards a client's messages as they
    arrive and hands its server connection back to the pool at the
    ReadyForQuery that ends a transaction: a next transaction already
    partly sent on that connection (pipelined, split across reads) is cut
    in two, its answers reach nobody and its requests would wait forever.
    Eight posting threads, large events, two endpoints and their
    deliveries keep several transactions in flight at once: every request
    is answered and every event delivered."""
    import concurrent.futures
    c = pg.Cluster()
    bouncer = pg.bouncer(c)
    if bouncer is None:
        print("  skipped: pgbouncer is not installed")
        return
    db = pg.Database(c)
    erp, shop = wb.Sink(), wb.Sink()
    cfg = wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(erp.url)}, sign = "none" }}
        endpoint "shop" {{ url = {wb.lua(shop.url)}, sign = "none" }}
        rules "rules/"
    ''', store=bouncer.url(db))
    g = wb.Gateway(cfg, files={"rules/10.lua": 'on("*", {"erp", "shop"})\n'})
    n = 400

    def post(i):
        body = wb.atoship_event("tracking.in_transit", n=i, notes="x" * (3000 + 37 * (i % 200)))
        try:
            return g.post("/hooks/atoship", body, wb.atoship_headers(SECRET, body), timeout=20).status
        except OSError as e:  # no answer in 20 s
            return repr(e)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(post, range(n)))
    bad = [s for s in statuses if s != 200]
    assert not bad, (len(bad), bad[:3], bouncer.log()[-1500:])
    erp.wait_for_count(n, timeout=60)
    shop.wait_for_count(n, timeout=60)
    assert "when not linked" not in bouncer.log(), bouncer.log()[-2000:]
    assert g.stop() == 0


class PoolerLikeProxy(pg.ProtocolRelay):
    """A relay to PostgreSQL that does what a pooler does to the backend key
    (BackendKeyData gets a made-up pid, as PgBouncer's) and watches the
    protocol: it records every client message that arrives while a Sync of
    that client is still unanswered, the pipelining a pooler in transaction
    mode cannot follow safely."""

    def __init__(self, db):
        self.overlaps = 0  # client messages sent while a Sync was unanswered
        self.syncs = 0
        super().__init__(db)

    def new_conn(self):
        return {"out": 0}

    def from_client(self, conn, head, body):
        with self.lock:
            # (a Terminate while a Sync is unanswered ends the session, as
            # a connection closed: not a transaction)
            if conn["out"] > 0 and head[:1] != b"X":
                self.overlaps += 1
            if head[:1] == b"S":
                conn["out"] += 1
                self.syncs += 1
        return head + body

    def from_server(self, conn, head, body):
        if head[:1] == b"K":  # BackendKeyData: a pid that is not PostgreSQL's
            body = (int.from_bytes(body[:4], "big") ^ 0x5a5a5a).to_bytes(4, "big") + body[4:]
        if head[:1] == b"Z":
            with self.lock:
                conn["out"] = max(0, conn["out"] - 1)
        return head + body


def test_behind_a_pooler_no_transaction_is_sent_while_another_is_unanswered():
    """Why PgBouncer must never see a pipelined next transaction (see
    test_through_pgbouncer_under_concurrent_load...): a relay that changes
    the backend pid as a pooler does counts every client message sent while
    a Sync was unanswered. Under concurrent ingest and delivery there are
    none, and every request is answered; on a direct connection pipelining
    stays (test_pg_serve's round-trip counts)."""
    import concurrent.futures
    c = pg.Cluster()
    db = pg.Database(c)
    proxy = PoolerLikeProxy(db)
    sink = wb.Sink()
    try:
        g = gateway(proxy.url(db), sink)
        n = 100

        def post(i):
            body = wb.atoship_event("tracking.in_transit", n=i, notes="x" * (2000 + 53 * (i % 100)))
            try:
                return g.post("/hooks/atoship", body, wb.atoship_headers(SECRET, body), timeout=20).status
            except OSError as e:
                return repr(e)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, range(n)))
        assert statuses == [200] * n, [s for s in statuses if s != 200][:3]
        sink.wait_for_count(n, timeout=30)
        assert proxy.syncs > n // 4, proxy.syncs
        assert proxy.overlaps == 0, "%d messages sent while a Sync was unanswered (%d syncs)" % (
            proxy.overlaps, proxy.syncs)
        assert g.stop() == 0
    finally:
        proxy.close()
