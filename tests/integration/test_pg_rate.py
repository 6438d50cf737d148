"""An endpoint's `rate` across instances on one PostgreSQL (issue 15: "`rate`
across instances too (say how)"; SPEC 7 `rate`).

Each instance has its own token bucket (deliver_sched.c); on one database
three instances would send three times the rate. The bucket the claims take
from is the endpoint's own row in the database (endpoint_state, schema
version 2), refilled by the database's clock under the claim's row lock, so
the sum of all instances' claims over any interval is at most rate x
interval + burst. What a receiver sees is checked here: kernel receive
stamps (schedsink), no second with more than rate + a tenth + 3 requests
(the bound of the SQLite tests in test_scheduler.py), every event
delivered once. And the schema step that adds the bucket: a database at
version 1 is upgraded by `waybill migrate` and by the first instance (and
one at version 2 to 3, the instances' session lock: store_pg_reap.c).
"""

import re
import sys
import time

import pg
import schedsink
import test_pg as base
import wb

TIMEOUT = 120
SECRET = "rate-secret"
RATE = 20
N_EVENTS = 240  # 12 s of the rate
SLOW = 2.0 if wb.ASAN else 1.0


def say(*a):
    print("  " + " ".join(str(x) for x in a), file=sys.__stderr__)


def _gateways(db, endpoint, n=3, **settings):
    body = '''
        source "atoship" {{ verify = "atoship", secret = {s} }}
        {ep}
        rules "rules/"
    '''.format(s=wb.lua(SECRET), ep=endpoint)
    settings.setdefault("shutdown_grace", "1s")
    return [wb.Gateway(wb.config(body, store=db.url, **settings),
                       files={"rules/10.lua": 'on("tracking.*", {"limited"})\n'})
            for _ in range(n)]


def _held(g):
    st, data = g.admin("GET", "/api/endpoints")
    assert st == 200, (st, data)
    return {e["name"]: e for e in data["data"]}["limited"]["held"]


def _attempts(g):
    m = re.search(r'^waybill_delivery_attempts_total\{endpoint="limited"\}\s+(\S+)\s*$', g.metrics(), re.M)
    return int(float(m.group(1))) if m else 0


@wb.timeout(180)
def test_rate_holds_across_three_instances_on_one_database():
    """rate = 20 on three instances of one database: a backlog held while the
    endpoint is disabled, posted round-robin to all three, is let go at once.
    Each instance's own bucket alone lets each send 20 a second (60 in all);
    the endpoint's bucket in the database holds the three to 20 a second
    (+ its burst, a tenth), and every event is delivered once."""
    db = pg.database()
    sink = schedsink.Sink(name="limited")
    gws = _gateways(db, 'endpoint "limited" {{ url = {u}, sign = "none", rate = {r}, concurrency = 1000 }}'
                    .format(u=wb.lua(sink.url), r=RATE))
    st, body = gws[0].admin("POST", "/api/endpoints/limited/disable")
    assert st == 200, (st, body)
    for g in gws[1:]:  # seen by the others (within a second): nothing goes out before the enable
        g.wait_for(lambda: "endpoint limited disabled through another instance" in g.log(),
                   timeout=5 * SLOW)
    posters = [schedsink.Poster(g, SECRET) for g in gws]
    sent = [posters[i % 3].post_event("tracking.in_transit", n=i)[1] for i in range(N_EVENTS)]
    for p in posters:
        p.close()
    gws[0].wait_for(lambda: _held(gws[0]) == N_EVENTS, timeout=10 * SLOW,
                    message="%d deliveries held" % N_EVENTS)
    assert sink.count == 0
    st, body = gws[1].admin("POST", "/api/endpoints/limited/enable")
    assert st == 200, (st, body)
    sink.wait_for(lambda s: s.delivered_ids() >= set(sent), timeout=(N_EVENTS / RATE + 30) * SLOW,
                  message="every event delivered")
    time.sleep(0.5)
    reqs = sink.snapshot()
    times = sorted(r.mono for r in reqs)
    most = schedsink.max_in_window(times, 1.0)
    span = times[-1] - times[0]
    per = [_attempts(g) for g in gws]
    ctx = "%d requests over %.1fs; busiest second %d; attempts per instance %s" % (
        len(times), span, most, per)
    say("rate across three instances: " + ctx)
    ids = [r.source_id for r in reqs]
    assert len(ids) == len(set(ids)) == N_EVENTS, "delivered more than once: " + ctx
    assert most <= RATE + RATE // 10 + 3, "rate = %d across three instances: %d requests in one second (%s)" % (
        RATE, most, ctx)
    # the bucket does not starve them either: the backlog goes at about the rate
    assert span <= (N_EVENTS / RATE) * 1.6 * SLOW + 2, "too slow for rate = %d: %s" % (RATE, ctx)
    assert sum(1 for a in per if a > 0) >= 2, "not sent by several instances: " + ctx
    # waiting for the shared bucket is neither a stuck endpoint nor a lost wake-up
    for g in gws:
        log = g.log()
        assert "are not going out" not in log and "scheduler bug" not in log, log[-3000:]


def _run(cmd, url):
    rc, out, err = base._run(cmd, url)
    return rc, out.strip(), err


def _as_version_2(db):
    """A database whose schema is version 2 (before the instances' session
    lock): made by this binary, then version 3's step undone."""
    rc, out, err = _run("migrate", db.url)
    assert rc == 0, (out, err)
    db.sql("ALTER TABLE instances DROP COLUMN lock_key, DROP COLUMN session_lock")
    db.sql("UPDATE waybill_schema SET version = 2")


def _as_version_1(db):
    """A database whose schema is version 1 (before the shared bucket): made
    by this binary, then the steps of versions 3 and 2 undone."""
    _as_version_2(db)
    db.sql("ALTER TABLE endpoint_state DROP COLUMN tokens, DROP COLUMN tokens_at")
    db.sql("DROP INDEX batch_items_delivery")
    db.sql("UPDATE waybill_schema SET version = 1")


def _instance_columns(db):
    return {r[0] for r in db.sql("SELECT column_name FROM information_schema.columns"
                                 " WHERE table_name = 'instances' AND column_name IN ('lock_key', 'session_lock')")}


def _bucket_columns(db):
    return {r[0] for r in db.sql("SELECT column_name FROM information_schema.columns"
                                 " WHERE table_name = 'endpoint_state' AND column_name LIKE 'tokens%'")}


def test_migrate_upgrades_a_version_2_database_to_version_3():
    db = pg.database()
    _as_version_2(db)
    shown = db.url_with("***")
    rc, out, err = _run("check", db.url)
    assert rc == 0 and out.endswith("; store: '%s': version 2 is in place; migrate brings it to 3" % shown), (
        out, err)
    assert _instance_columns(db) == set()
    rc, out, err = _run("migrate", db.url)
    assert rc == 0 and out == "store: '%s': upgraded the schema from version 2 to 3" % shown, (out, err)
    assert _instance_columns(db) == {"lock_key", "session_lock"}
    assert db.sql("SELECT version FROM waybill_schema ORDER BY version") == [["2"], ["3"]]


def test_migrate_upgrades_a_version_1_database_to_version_3():
    db = pg.database()
    _as_version_1(db)
    shown = db.url_with("***")
    rc, out, err = _run("check", db.url)
    assert rc == 0 and out.endswith("; store: '%s': version 1 is in place; migrate brings it to 3" % shown), (
        out, err)
    assert _bucket_columns(db) == set()
    rc, out, err = _run("migrate", db.url)
    assert rc == 0 and out == "store: '%s': upgraded the schema from version 1 to 3" % shown, (out, err)
    assert _bucket_columns(db) == {"tokens", "tokens_at"}
    assert _instance_columns(db) == {"lock_key", "session_lock"}
    assert db.sql("SELECT count(*) FROM pg_indexes WHERE indexname = 'batch_items_delivery'") == [["1"]]
    assert db.sql("SELECT version FROM waybill_schema ORDER BY version") == [["1"], ["3"]]  # a row per migrate
    rc, out, err = _run("migrate", db.url)
    assert rc == 0 and out == "store: '%s': schema version 3 is in place, nothing to do" % shown, (out, err)


def test_the_first_instance_upgrades_a_version_1_database_and_a_rated_endpoint_delivers():
    db = pg.database()
    _as_version_1(db)
    db.sql("INSERT INTO endpoint_state (name) VALUES ('limited')")  # a row from before: kept
    sink = wb.Sink()
    g, = _gateways(db, 'endpoint "limited" {{ url = {u}, sign = "none", rate = 5 }}'.format(
        u=wb.lua(sink.url)), n=1)
    assert "upgraded the schema from version 1 to 3" in g.log(), g.log()[-2000:]
    assert _bucket_columns(db) == {"tokens", "tokens_at"}
    ids = [schedsink.Poster(g, SECRET).post_event("tracking.in_transit", n=i)[0] for i in range(3)]
    sink.wait_for_count(3, timeout=15 * SLOW)
    assert sorted(q.json()["id"] for q in sink.requests) == sorted(ids)
    # the bucket is the database's: its clock stamped, its tokens taken
    at = int(db.sql("SELECT tokens_at FROM endpoint_state WHERE name = 'limited'")[0][0])
    assert at > 0, at
