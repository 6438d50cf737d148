#!/usr/bin/env python3
"""pg_bench.py -- make bench's PostgreSQL rows (issue 15), beside SQLite and
the bare server in the same run; run by tests/bench/run.sh after bench.py.

A PostgreSQL 15 of its own (tests/integration/pg.py: initdb into a temp
dir, fsync on; shared_buffers raised to 128 MB for the run), unpinned: the
database's CPU is shared with waybill's core and the load generator's, and
its own CPU per request is printed beside waybill's.

A. Ingest at c64 (the bench's load: wrk -t1 -c64, a new signed atoship
   event per request, waybill pinned to core 0, wrk to core 1), rounds
   interleaved: waybill on SQLite, the same binary on PostgreSQL (a fresh
   database each round), the bare libevent server. Target: PostgreSQL >=
   0.5 x SQLite.
B. Sustained delivery with 1, 2 and 3 instances on one database (every
   event to one enabled endpoint on a counting bare server): the load split
   over the instances (one wrk per instance, 64 connections in all),
   deliveries/s at the sink, whether every delivery the store holds was
   delivered once the queue drained, and how many more requests the sink
   got than deliveries the store marks delivered (duplicates: an expired
   lease). On 2 cores this shows what more
   instances cost, not how they scale.
C. The held xmin horizon: sustained delivery (one instance) for
   --xmin-seconds (60) without, then with, a REPEATABLE READ transaction
   held open the whole time (what a long report, a pg_dump or an idle
   replication slot does: VACUUM cannot remove the queue's dead rows).
   Deliveries/s with it / without it (target >= 0.8), the dead tuples of
   the store's tables when it ends, and after a VACUUM once it ended.

Skipped, with the reason, when PostgreSQL is not installed or waybill
does not serve on it. Prints the tables and appends them to
tests/bench/out/results.md. Exits 0 whatever the numbers.
"""

import argparse
import os
import subprocess
import sys
import time

import bench
from bench import HERE, ROOT, Waybill, Bare, log, med, run_wrk, bare_count, port_open

import wb  # noqa: E402  (bench put tests/integration on the path)
import pg  # noqa: E402


class WaybillPg(Waybill):
    """waybill serve on a PostgreSQL database (url set before start)."""

    name = "waybill-pg"
    url = None

    def store_setting(self):
        return self.url

    def after_run(self, d):  # no SQLite WAL or file to measure
        d.update(bench.proc_mem(self.proc.pid))


def fmt_int(x):
    return "-" if x is None else bench.fmt_int(x)


def pg_cpu_ticks(cluster):
    """utime + stime of the postmaster and its children (the backends)."""
    total = 0
    pids = [cluster.proc.pid]
    try:
        pids += [int(p) for p in subprocess.run(["pgrep", "-P", str(cluster.proc.pid)], capture_output=True,
                                                 text=True).stdout.split()]
    except OSError:
        pass
    for pid in pids:
        t = bench.cpu_ticks(pid)
        if t is not None:
            total += t
    return total


def start_cluster():
    c = pg.Cluster()
    c.sql("ALTER SYSTEM SET shared_buffers = '128MB'")
    c.sql("ALTER SYSTEM SET max_connections = 100")
    c.stop()
    c.start()
    return c


def probe(args, cluster):
    """None when waybill serves on PostgreSQL, else why not."""
    s = WaybillPg(args)
    s.url = pg.Database(cluster).url
    try:
        s.start()
    except RuntimeError as e:
        return str(e).splitlines()[0][:200]
    finally:
        s.stop()
    return None


def part_ingest(args, cluster):
    rows = {"waybill": [], "waybill-pg": [], "bare": []}
    pgcpu = []
    for rnd in range(1, args.rounds + 1):
        for name in ("waybill", "waybill-pg", "bare"):
            s = {"waybill": Waybill, "waybill-pg": WaybillPg, "bare": Bare}[name](args)
            if name == "waybill-pg":
                s.url = pg.Database(cluster).url
            try:
                s.start()
                if args.warmup:
                    run_wrk(args, s, 64, args.warmup)
                p0 = pg_cpu_ticks(cluster)
                d = run_wrk(args, s, 64, args.duration)
                p1 = pg_cpu_ticks(cluster)
                if name == "waybill-pg" and d["requests"]:
                    pgcpu.append((p1 - p0) / bench.TICK * 1e6 / d["requests"])
                d["round"] = rnd
                rows[name].append(d)
                log("pg ingest round %d %-10s %8.0f req/s p99 %.1f ms non2xx %d" % (
                    rnd, name, d["rps"], d["p99_us"] / 1000.0, d["non2xx"]))
            except RuntimeError as e:
                log("pg ingest round %d %s: %s" % (rnd, name, e))
            finally:
                s.stop()
    return rows, pgcpu


def sustained(args, cluster, ninstances, seconds, hold=False):
    """ninstances on one fresh database delivering to one counting sink for
    seconds; hold: a REPEATABLE READ transaction open for the whole window."""
    db = pg.Database(cluster)
    sink_port = wb.free_port()
    sink = subprocess.Popen(["taskset", "-c", args.wrk_cpu, args.bare, str(sink_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    insts, holder = [], None
    try:
        wb.wait_for(lambda: port_open(sink_port), 5)
        for _ in range(ninstances):
            s = WaybillPg(args)
            s.url = db.url
            s.endpoints = [("e1", "http://127.0.0.1:%d/e1" % sink_port)]
            s.start()
            insts.append(s)
        if hold:
            holder = subprocess.Popen(cluster._psql_argv(
                db.name, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM events; "
                         "SELECT pg_sleep(%d); COMMIT;" % (seconds + 30)),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        c0, t0 = bare_count(sink_port), time.monotonic()
        conns = max(1, 64 // ninstances)
        procs = []
        env = dict(os.environ, WB_SECRET=bench.SECRET, WB_SIG_HEADER="X-Atoship-Signature",
                   WB_PATH="/hooks/atoship")
        for k, s in enumerate(insts):
            env["WB_ID_SALT"] = "i%d" % k  # each wrk its own event ids
            procs.append(subprocess.Popen(
                ["taskset", "-c", args.wrk_cpu, "wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout",
                 "10s", "-s", os.path.join(HERE, "ingest.lua"), "http://127.0.0.1:%d/hooks/atoship" % s.port],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env))
        accepted = 1 * ninstances  # each instance's start-up check
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 60)
            for line in out.splitlines():
                if line.startswith("WRKJSON "):
                    d = bench.json.loads(line[len("WRKJSON "):])
                    accepted += d["requests"] - d["errors"]["status"]
        c1, t1 = bare_count(sink_port), time.monotonic()
        dead = None
        if hold:
            dead = dead_tuples(db)
            end_holder(db, holder)
            holder = None
        # What the store holds is what was accepted (wrk does not count the
        # requests still in flight when it stops): every delivery row, and
        # how many of them are delivered, once the queue has drained.
        deadline = time.monotonic() + args.drain_timeout
        while True:
            q = insts[0].queue()
            total = sum(q.values())
            if q["delivered"] >= total or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # a transfer answered after its row's outcome was read
        got = bare_count(sink_port)
        log("pg sustained %d: wrk accepted %d, store counts %s, events in the database %s" % (
            ninstances, accepted, q, db.sql("SELECT count(*) FROM events")[0][0]))
        accepted = max(accepted, total)
        after = None
        if hold:
            db.sql("VACUUM")
            time.sleep(1.5)  # the statistics are flushed at most once a second
            after = dead_tuples(db)
        return {"instances": ninstances, "out_rps": (c1 - c0) / (t1 - t0), "accepted": accepted, "got": got,
                "complete": q["delivered"] >= total and got >= total, "extra": max(0, got - q["delivered"]),
                "delivered": q["delivered"], "dead": dead, "dead_after": after}
    finally:
        if holder:
            end_holder(db, holder)
        for s in insts:
            s.stop()
        sink.terminate()
        sink.wait()


def end_holder(db, holder):
    """Ends the held transaction: its backend, asleep in pg_sleep, would
    not notice psql going away until the sleep ends."""
    db.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
           " WHERE datname = current_database() AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()")
    holder.terminate()
    holder.wait()


def dead_tuples(db):
    rows = db.sql("SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables")
    return int(rows[0][0]) if rows else None


def main():
    ap = argparse.ArgumentParser(description="waybill on PostgreSQL, beside SQLite and the bare server")
    ap.add_argument("--bin", default=os.path.join(ROOT, "waybill"))
    ap.add_argument("--bare", default=os.path.join(HERE, "out", "bare_server"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--store", default="sqlite:waybill.db")
    ap.add_argument("--server-cpu", default="0")
    ap.add_argument("--wrk-cpu", default="1")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--sustained-seconds", type=int, default=15)
    ap.add_argument("--xmin-seconds", type=int, default=60)
    ap.add_argument("--drain-timeout", type=float, default=90.0)
    ap.add_argument("--out", default=os.path.join(HERE, "out", "results.md"))
    args = ap.parse_args()

    lines = ["", "## PostgreSQL (issue 15)", ""]
    if not os.access(os.path.join(pg.PG_BIN, "postgres"), os.X_OK):
        lines.append("skipped: PostgreSQL 15 is not installed (make test-deps installs it)")
        return finish(args, lines)
    cluster = start_cluster()
    try:
        why = probe(args, cluster)
        if why:
            lines.append("skipped: waybill does not serve on PostgreSQL: %s" % why)
            return finish(args, lines)
        rows, pgcpu = part_ingest(args, cluster)
        sq = med([d["rps"] for d in rows["waybill"]])
        pq = med([d["rps"] for d in rows["waybill-pg"]])
        bq = med([d["rps"] for d in rows["bare"]])
        lines += ["### A. Ingest, c64 (medians of %d rounds)" % args.rounds, "",
                  "| server | req/s | p99 ms | waybill CPU us/req | PostgreSQL CPU us/req | vs SQLite | vs bare |",
                  "|---|---|---|---|---|---|---|"]
        for name, rate in (("waybill (SQLite)", sq), ("waybill (PostgreSQL)", pq), ("bare", bq)):
            key = {"waybill (SQLite)": "waybill", "waybill (PostgreSQL)": "waybill-pg", "bare": "bare"}[name]
            p99 = med([d["p99_us"] / 1000.0 for d in rows[key]])
            cpu = med([d["cpu_us"] for d in rows[key] if d.get("cpu_us")])
            lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                name, fmt_int(rate), "%.1f" % p99 if p99 else "-", "%.0f" % cpu if cpu else "-",
                "%.0f" % med(pgcpu) if key == "waybill-pg" and pgcpu else "-",
                "%.2fx" % (rate / sq) if rate and sq else "-", "%.2fx" % (rate / bq) if rate and bq else "-"))
        lines += ["", "### B. Sustained delivery, 1-3 instances on one database (%d s each)" %
                  args.sustained_seconds, "",
                  "| instances | deliveries/s | vs 1 | all delivered (sink got / stored) | sink requests beyond "
                  "the deliveries (duplicates) |", "|---|---|---|---|---|"]
        one = None
        for n in (1, 2, 3):
            r = sustained(args, cluster, n, args.sustained_seconds)
            one = one or r["out_rps"]
            log("pg sustained %d instance(s): %.0f/s complete %s extra %d" % (n, r["out_rps"], r["complete"],
                                                                             r["extra"]))
            lines.append("| %d | %s | %.2fx | %s (%s / %s) | %d |" % (
                n, fmt_int(r["out_rps"]), r["out_rps"] / one if one else 0, "yes" if r["complete"] else "NO",
                fmt_int(r["got"]), fmt_int(r["accepted"]), r["extra"]))
        base = sustained(args, cluster, 1, args.xmin_seconds)
        held = sustained(args, cluster, 1, args.xmin_seconds, hold=True)
        lines += ["", "### C. A REPEATABLE READ transaction held open for %d s" % args.xmin_seconds, "",
                  "| run | deliveries/s | ratio | dead tuples at its end | after VACUUM |", "|---|---|---|---|---|",
                  "| without | %s | 1.00x | - | - |" % fmt_int(base["out_rps"]),
                  "| with | %s | %.2fx | %s | %s |" % (
                      fmt_int(held["out_rps"]), held["out_rps"] / base["out_rps"] if base["out_rps"] else 0,
                      fmt_int(held["dead"]), fmt_int(held["dead_after"]))]
    finally:
        cluster.close()
    return finish(args, lines)


def finish(args, lines):
    print("\n".join(lines))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "a") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
