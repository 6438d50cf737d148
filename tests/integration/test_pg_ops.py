"""The PostgreSQL store's operations on a real PostgreSQL 15 (issue 15):
tests/unit/test_store_pg_ops.c (built with the unit tests, run here, never
by the unit run: it needs a database) drives the backend of
core/store_pg_*.c, one process or several racing on one database, and the
tests check what it printed and the rows it left (a fresh database per
test, pg.py).

What a user of several instances counts on: a group is one round trip and
all or nothing (a failed statement or a lost connection: every write of it
fails, none is acked); the same event posted to two instances at once is
stored once and both are answered with its id; two instances claiming one
endpoint never take the same row; a killed instance's leases come back at
their expiry, not before; an ordered endpoint's head has one owner; a batch
window closes once; an attempt is recorded once.
"""

import os
import signal
import subprocess
import time

import pg
import wb

TIMEOUT = 90


def _prog():
    build = "build-asan" if wb.ASAN else "build"
    path = os.path.join(wb.ROOT, build, "tests", "test_store_pg_ops")
    assert os.path.exists(path), "%s is missing: make %s" % (path, os.path.relpath(path, wb.ROOT))
    return path


def _no_sanitizer(err):
    for pat in wb.SANITIZER_PATTERNS:
        assert pat not in err, err[-4000:]


class Proc:
    """One test_store_pg_ops process in a racing mode: started, then held
    at its starting gun (it prints "ready INSTANCE" once connected)."""

    def __init__(self, db, *args, env=None):
        self.p = subprocess.Popen([_prog(), db.url] + [str(a) for a in args],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, **(env or {})))
        wb._register(self)
        line = self.p.stdout.readline()
        assert line.startswith("ready "), (line, self.p.stderr.read() if self.p.poll() is not None else "")
        self.instance = line.split()[1]

    def go(self):
        self.p.stdin.write("go\n")
        self.p.stdin.flush()

    def finish(self, timeout=60):
        out, err = self.p.communicate(timeout=timeout)
        _no_sanitizer(err)
        return self.p.returncode, out, err

    def readline(self):
        return self.p.stdout.readline()

    def kill(self):
        self.p.kill()
        self.p.wait()

    def _cleanup(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            try:
                f.close()
            except OSError:
                pass
        return []


def _race(procs, timeout=60):
    for p in procs:
        p.go()
    return [p.finish(timeout) for p in procs]


def _migrated():
    db = pg.database()
    d = wb._mkdtemp("wb-pgops-")
    cfg = os.path.join(d, "waybill.lua")
    with open(cfg, "w") as f:
        f.write('store = "%s"\n' % db.url)
    r = wb.run("migrate", "-c", cfg)
    assert r.returncode == 0, r.stderr
    return db


def _one(db, sql):
    return db.sql(sql)[0][0]


def _seed_queue(db, endpoint, n):
    db.sql("INSERT INTO deliveries (id, event_id, endpoint, created_at, payload)"
           " SELECT 'dlv_%s_' || g, 'evt_seed', '%s', 0, convert_to('{}', 'UTF8')"
           " FROM generate_series(1, %d) g" % (endpoint, endpoint, n))
    db.sql("INSERT INTO delivery_queue (delivery_seq, endpoint, status, next_at)"
           " SELECT seq, endpoint, 'pending', 0 FROM deliveries WHERE endpoint = '%s'" % endpoint)
    return sorted(int(r[0]) for r in db.sql("SELECT seq FROM deliveries WHERE endpoint = '%s'"
                                            % endpoint))


def _claimed(out, word="claimed"):
    return [int(line.split()[1]) for line in out.splitlines() if line.startswith(word + " ")]


def test_one_process_group_round_trip_failures_dedupe_attempts_batch_reads():
    db = pg.database()
    r = subprocess.run([_prog(), db.url, "checks"], capture_output=True, text=True, timeout=120)
    _no_sanitizer(r.stderr)
    assert r.returncode == 0 and r.stdout.rstrip().endswith(" 0 failed"), r.stdout + r.stderr
    # one round trip a group: BEGIN, three statements an event, COMMIT, two
    # Syncs, whatever the number of events and their fan-out
    assert "group a events=20 fanout=4 syncs=2 queries=62" in r.stdout, r.stdout
    assert "group b events=1 fanout=1 syncs=2 queries=5" in r.stdout, r.stdout
    assert "failed group: store: postgresql: duplicate key value" in r.stdout, r.stdout
    assert "lost group: store: postgresql: " in r.stdout, r.stdout
    # what the groups left: 20 + 1 + 1 + 1 + 1 + 1 + 1 + 1 events (none of
    # the failed or lost groups), each a's 4 deliveries with their queue rows
    assert _one(db, "SELECT count(*) FROM events") == "27"
    assert _one(db, "SELECT count(*) FROM events WHERE source_id LIKE 'fail-%'"
                    " OR source_id LIKE 'lost-1' OR source_id LIKE 'lost-2'") == "0"
    assert _one(db, "SELECT count(*) FROM deliveries d JOIN events e ON e.id = d.event_id"
                    " WHERE e.source_id LIKE 'a-%'") == "80"
    assert _one(db, "SELECT count(DISTINCT endpoint) FROM deliveries WHERE event_id LIKE 'evt_a_%'") == "4"
    # the matched handlers name the derived delivery ids
    m = _one(db, "SELECT matched FROM events WHERE id = 'evt_a_0'")
    ids = [r[0] for r in db.sql("SELECT id FROM deliveries WHERE event_id = 'evt_a_0' ORDER BY seq")]
    assert len(ids) == 4 and all(i in m for i in ids), (m, ids)
    # payloads and raw bodies stored byte for byte
    assert _one(db, "SELECT convert_from(payload, 'UTF8') FROM deliveries WHERE event_id = 'evt_a_0'"
                    " AND endpoint = 'ep0'") == '{"p":"a\\"b"}'
    assert _one(db, "SELECT convert_from(raw, 'UTF8') FROM events WHERE id = 'evt_a_0'") == '{"x":1}'


def test_the_same_event_from_two_processes_is_stored_once_and_both_get_its_id():
    db = _migrated()
    for i in range(8):
        sid = "race-%d" % i
        results = _race([Proc(db, "put", "atoship", sid), Proc(db, "put", "atoship", sid)])
        lines = [out.split() for _, out, _ in results]
        assert all(rc == 0 for rc, _, _ in results), results
        # "put STATUS ID group 0": one stored it (0), the other is a dedupe hit (1)
        assert sorted(l[1] for l in lines) == ["0", "1"], lines
        assert lines[0][2] == lines[1][2], lines
        assert all(l[3:5] == ["group", "0"] for l in lines), lines
        stored = db.sql("SELECT id FROM events WHERE source_id = '%s'" % sid)
        assert stored == [[lines[0][2]]], (stored, lines)
        assert _one(db, "SELECT count(*) FROM deliveries WHERE event_id = '%s'" % lines[0][2]) == "2"
    # a first copy whose transaction is still open: both wait for it on the
    # unique key, then both are answered with its id, their groups intact
    holder = subprocess.Popen(db.cluster._psql_argv(db.name,
                              "BEGIN; INSERT INTO events (id, source, source_id, status, received_at)"
                              " VALUES ('evt_first', 'atoship', 'held', 'received', 1);"
                              " SELECT pg_sleep(4); COMMIT;"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wb.wait_for(lambda: _one(db, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a"
                                 " ON a.pid = l.pid WHERE a.query LIKE '%pg_sleep%'"
                                 " AND l.locktype = 'transactionid' AND a.pid <> pg_backend_pid()")
                != "0", timeout=10)
    procs = [Proc(db, "put", "atoship", "held"), Proc(db, "put", "atoship", "held")]
    assert holder.poll() is None, "the first copy committed before the race began"
    results = _race(procs)
    assert holder.wait(30) == 0, holder.stderr.read()
    lines = [out.split() for _, out, _ in results]
    assert all(l[1:5] == ["1", "evt_first", "group", "0"] for l in lines), lines
    assert _one(db, "SELECT count(*) FROM events WHERE source_id = 'held'") == "1"


def test_two_processes_claiming_one_endpoint_never_take_the_same_row():
    db = _migrated()
    seqs = _seed_queue(db, "ep", 400)
    a, b = Proc(db, "claim", "ep", 60000, 7), Proc(db, "claim", "ep", 60000, 7)
    (ra, outa, _), (rb, outb, _) = _race([a, b])
    assert ra == 0 and rb == 0, (outa, outb)
    ca, cb = _claimed(outa), _claimed(outb)
    assert len(ca) == len(set(ca)) and len(cb) == len(set(cb))
    assert not set(ca) & set(cb), sorted(set(ca) & set(cb))[:10]
    assert sorted(ca + cb) == seqs
    # the database agrees: every row leased, to the one that said so
    owners = dict((r[0], int(r[1])) for r in db.sql(
        "SELECT lease_owner, count(*) FROM delivery_queue GROUP BY lease_owner"))
    assert owners == {k: v for k, v in ((a.instance, len(ca)), (b.instance, len(cb))) if v}, owners


def test_capped_claims_of_two_processes_never_lease_more_than_the_cap_together():
    """An endpoint's concurrency across instances: two processes claim at
    the same moment with a cap of 5 (each asks for 7 and keeps what it
    got): together they hold 5 leases, never more; rows whose lease expired
    do not count, so the cap is free again once the holders' leases end."""
    db = _migrated()
    _seed_queue(db, "ep", 50)
    # the endpoint's row exists (as after its first claim): its insert
    # does not make the claims take turns, only the lock does
    db.sql("INSERT INTO endpoint_state (name) VALUES ('ep')")
    lease_ms = 4000
    holders = [Proc(db, "hold", "ep", lease_ms, 7, env={"CLAIM_CAP": "5"}) for _ in range(2)]
    # both claims wait behind a table lock and go at the same instant: each
    # claim's count of live leases would see none of the other's
    blocker = subprocess.Popen(db.cluster._psql_argv(
        db.name, "BEGIN; LOCK TABLE delivery_queue IN SHARE ROW EXCLUSIVE MODE;"
                 " SELECT pg_sleep(1.5); COMMIT;"), stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    for h in holders:
        h.go()
    assert blocker.wait(30) == 0
    held = []
    for h in holders:
        while True:
            line = h.readline()
            assert line, "a holder ended"
            if line.startswith("holding"):
                break
            held.append(int(line.split()[1]))
    assert len(held) == 5 and len(set(held)) == 5, held
    assert _one(db, "SELECT count(*) FROM delivery_queue WHERE lease_until > 0") == "5"
    # a third claimer meanwhile: nothing (the cap is taken)
    _, out, _ = _race([Proc(db, "once", "ep", lease_ms, 7, env={"CLAIM_CAP": "5"})])[0]
    assert _claimed(out) == [] and "done 0" in out, out
    for h in holders:
        h.kill()
    # the killed holders' leases expire: the cap is free again
    time.sleep(lease_ms / 1000.0 + 0.5)
    _, out, _ = _race([Proc(db, "once", "ep", lease_ms, 7, env={"CLAIM_CAP": "5"})])[0]
    assert len(_claimed(out)) == 5, out


def test_a_killed_processes_leases_come_back_at_expiry_not_before():
    db = _migrated()
    seqs = _seed_queue(db, "ep", 50)
    lease_ms = 5000
    holder = Proc(db, "hold", "ep", lease_ms, 50)
    holder.go()
    held = []
    while True:
        line = holder.readline()
        assert line, "the holder ended"
        if line.startswith("holding"):
            break
        held.append(int(line.split()[1]))
    t_claimed = time.monotonic()
    assert sorted(held) == seqs
    os.kill(holder.p.pid, signal.SIGKILL)
    holder.p.wait()
    # before the expiry: nothing to claim
    early = Proc(db, "once", "ep", lease_ms, 50)
    _, out, _ = _race([early])[0]
    assert time.monotonic() - t_claimed < lease_ms / 1000.0, "too slow to check before the expiry"
    assert _claimed(out) == [] and "done 0" in out, out
    # after it: every row, to the new owner
    time.sleep(max(0.0, lease_ms / 1000.0 - (time.monotonic() - t_claimed)) + 0.5)
    late = Proc(db, "once", "ep", lease_ms, 50)
    _, out, _ = _race([late])[0]
    assert sorted(_claimed(out)) == seqs, out
    assert db.sql("SELECT DISTINCT lease_owner FROM delivery_queue") == [[late.instance]]


def test_an_ordered_endpoints_head_has_one_owner_until_its_lease_expires():
    db = _migrated()
    seqs = _seed_queue(db, "ord", 20)
    lease_ms = 4000
    a, b = Proc(db, "once", "ord", lease_ms, 5, 0), Proc(db, "once", "ord", lease_ms, 5, 0)
    t0 = time.monotonic()
    (_, outa, _), (_, outb, _) = _race([a, b])
    ca, cb = _claimed(outa), _claimed(outb)
    # one of them owns the head and took the first five, in order
    assert sorted([len(ca), len(cb)]) == [0, 5], (outa, outb)
    winner = a if ca else b
    assert (ca or cb) == seqs[:5]
    assert db.sql("SELECT head_owner FROM endpoint_state WHERE name = 'ord'") == [[winner.instance]]
    # a third instance, before the head's lease ends: nothing
    c = Proc(db, "once", "ord", lease_ms, 5, 0)
    _, out, _ = _race([c])[0]
    assert time.monotonic() - t0 < lease_ms / 1000.0, "too slow to check before the expiry"
    assert _claimed(out) == [], out
    # once it ended: the head moves, and the rows the first owner held with it
    time.sleep(max(0.0, lease_ms / 1000.0 - (time.monotonic() - t0)) + 0.5)
    d = Proc(db, "once", "ord", lease_ms, 5, 0)
    _, out, _ = _race([d])[0]
    assert _claimed(out) == seqs[:5], out
    assert db.sql("SELECT head_owner FROM endpoint_state WHERE name = 'ord'") == [[d.instance]]


def test_a_batch_window_closes_once_when_two_processes_race():
    db = _migrated()
    for k in range(1, 6):
        start = 60000 * k
        db.sql("INSERT INTO batch_items (endpoint, window_ms, window_start, event_id, payload)"
               " SELECT 'b', 60000, %d, 'evt_' || g, convert_to('{\"n\":' || g || '}', 'UTF8')"
               " FROM generate_series(1, 30) g" % start)
        results = _race([Proc(db, "close", "b", start, 60000), Proc(db, "close", "b", start, 60000)])
        lines = [out.split() for _, out, _ in results]
        assert all(l[0] == "closed" and l[2:4] == ["group", "0"] for l in lines), lines
        assert sorted(int(l[1]) for l in lines) == [0, 30], lines
        batch = db.sql("SELECT id, convert_from(payload, 'UTF8')::json->>'count' FROM deliveries"
                       " WHERE batch AND endpoint = 'b' AND created_at > 0 AND id IN"
                       " (SELECT DISTINCT delivery_id FROM batch_items WHERE window_start = %d)"
                       % start)
        assert len(batch) == 1 and batch[0][1] == "30", batch
        assert _one(db, "SELECT count(*) FROM batch_items WHERE window_start = %d"
                        " AND delivery_id = '%s'" % (start, batch[0][0])) == "30"
    assert _one(db, "SELECT count(*) FROM deliveries WHERE batch") == "5"
    assert _one(db, "SELECT count(*) FROM delivery_queue q JOIN deliveries d"
                    " ON d.seq = q.delivery_seq WHERE d.batch") == "5"


def test_an_attempt_is_recorded_once_when_two_processes_race():
    db = _migrated()
    for i in range(5):
        seq = _seed_queue(db, "ep%d" % i, 1)[0]
        dlv = _one(db, "SELECT id FROM deliveries WHERE seq = %d" % seq)
        results = _race([Proc(db, "attempt", dlv, 1, "delivered"),
                         Proc(db, "attempt", dlv, 1, "delivered")])
        lines = sorted(out.strip() for _, out, _ in results)
        assert lines == ["attempt 0", "attempt 1"], lines
        assert _one(db, "SELECT count(*) FROM attempts WHERE delivery_id = '%s'" % dlv) == "1"
        assert db.sql("SELECT status, attempts FROM delivery_outcomes WHERE delivery_seq = %d"
                      % seq) == [["delivered", "1"]]
        assert _one(db, "SELECT count(*) FROM delivery_queue WHERE delivery_seq = %d" % seq) == "0"


def test_rated_claims_of_two_processes_take_no_more_than_the_shared_bucket_gives():
    """An endpoint's rate across instances (schema version 2): two processes
    claim one endpoint over and over for 2 s with rate = 50 (each claim may
    ask for 20 rows, the cap is no limit): together they claim at most
    50 x 2 s + the burst (5), since the bucket in endpoint_state is refilled
    by the database's clock under the claim's row lock and each row takes a
    token; and about that many (nothing lost between them). A claim that
    found the bucket empty says when the next token is due: within 1/rate."""
    db = _migrated()
    _seed_queue(db, "ep", 1000)
    rate, secs = 50, 2.0
    env = {"CLAIM_CAP": "1000", "CLAIM_RATE": str(rate)}
    procs = [Proc(db, "for", "ep", 30000, 20, int(secs * 1000), env=env) for _ in range(2)]
    results = _race(procs)
    claimed = []
    waits = []
    for rc, out, err in results:
        assert rc == 0, (out, err)
        claimed += _claimed(out)
        waits += [int(line.split()[1]) for line in out.splitlines() if line.startswith("wait ")]
    per = [len(_claimed(out)) for _, out, _ in results]
    assert len(claimed) == len(set(claimed)), "a row claimed twice"
    # the two started within a moment of each other: 0.3 s of slack
    assert len(claimed) <= rate * (secs + 0.3) + rate // 10, "claimed %s in %.1f s at rate %d" % (
        per, secs, rate)
    assert len(claimed) >= rate * secs * 0.6, "only %s claimed in %.1f s at rate %d" % (per, secs, rate)
    assert waits and all(0 < w <= 1000 // rate + 1 for w in waits), sorted(set(waits))
    left = float(_one(db, "SELECT tokens FROM endpoint_state WHERE name = 'ep'"))
    assert 0 <= left <= rate / 10, left
