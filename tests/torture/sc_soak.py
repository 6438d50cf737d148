"""Soak (issue 18's retention defect): 10 minutes of steady ingest at half
the rate this runner sustains against the gateway (measured first, for 15 s,
delivering), with `retention = "1m"`, every event delivered to a healthy
endpoint and to one that fails 20 % of its requests, and a SIGHUP every
30 s. The database file (with its WAL) stays flat after the first retention
period, ingest p99 drifts by at most 1.3x from the first minute to the last,
memory and fds stay flat, and every acknowledged event is delivered.

WB_SOAK_SECONDS changes the length (default 600) and WB_SOAK_RATE sets the
rate instead of measuring it. The receivers run in a process of their own,
so that they do not share this runner's interpreter lock with the senders."""
import multiprocessing
import os
import signal
import time

import common

NAME = "soak: retention 1m, 20% failures, SIGHUP/30s"


def _sinks(conn):
    ok = common.CountingSink()
    flaky = common.CountingSink(fail=0.2)
    conn.send((ok.url, flaky.url))
    conn.recv()  # "stop"
    out = {}
    for name, s in (("ok", ok), ("flaky", flaky)):
        with s.lock:
            out[name] = {"ids": set(s.ids), "dup": sum(n - 1 for n in s.deliveries.values() if n > 1),
                         "total": s.total, "refused": s.refused}
    conn.send(out)


def _size(g):
    db = g.path("waybill.db")
    return sum(os.path.getsize(db + x) for x in ("", "-wal") if os.path.exists(db + x))


def run(short, row):
    seconds = float(os.environ.get("WB_SOAK_SECONDS", "600"))
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_sinks, args=(there,), daemon=True)
    proc.start()
    try:
        ok_url, flaky_url = here.recv()
        return _run(row, seconds, here, ok_url, flaky_url)
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(5)


def _run(row, seconds, pipe, ok_url, flaky_url):
    g = common.gateway({"ok": (ok_url, 'sign = "none"'),
                        "flaky": (flaky_url, 'sign = "none", retry = { "1s", "1s", "2s", "2s", "5s", "5s", "10s", "10s", "10s", "10s" }')},
                       'on("*", {"ok", "flaky"})', retention="1m")
    rate = float(os.environ.get("WB_SOAK_RATE", "0"))
    calibrated = None
    if not rate:
        cal = common.Load(g.port, threads=8)
        time.sleep(15)
        cal.stop()
        calibrated = len(cal.acked) / (time.monotonic() - cal.t0)
        rate = max(20.0, 0.5 * calibrated)
        time.sleep(5)
    load = common.Load(g.port, threads=6, rate=rate)
    samples = []  # (t, db bytes, rss KiB, fds, threads, ingest p99 of the last 10 s)
    t0 = time.monotonic()
    next_hup = t0 + 30
    hups = 0
    try:
        while time.monotonic() - t0 < seconds:
            time.sleep(10 - ((time.monotonic() - t0) % 10))
            now = time.monotonic()
            if now >= next_hup:
                g.sighup()
                hups += 1
                next_hup += 30
            rss, _, fds, thr = common.proc_stats(g.pid)
            samples.append((now - t0, _size(g), rss, fds, thr, common.pct(load.latencies(since=now - 10), 99)))
            print("    soak %4.0f s: db %5.1f MiB, rss %5.1f MiB, fds %d, threads %d, p99 %s, acked %d" % (
                samples[-1][0], samples[-1][1] / 1048576.0, rss / 1024.0, fds, thr, common.ms(samples[-1][5]),
                len(load.acked)), flush=True)
    finally:
        load.stop()
    acked = list(dict.fromkeys(load.acked))
    t_drain = time.monotonic()
    deadline = t_drain + 120
    while True:
        st, body = g.admin("GET", "/api/status")
        q = body.get("queue") if isinstance(body, dict) else None
        pending = q.get("pending", 0) if isinstance(q, dict) else q
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(1)
    drain = time.monotonic() - t_drain
    time.sleep(2)
    pipe.send("stop")
    got = pipe.recv()
    lost_ok = [a for a in acked if a not in got["ok"]["ids"]]
    lost_flaky = [a for a in acked if a not in got["flaky"]["ids"]]
    dead = set(common.dead_letters(g)) if lost_flaky else set()
    lost_flaky = [a for a in lost_flaky if a not in dead]  # a dead letter is kept and retryable, not lost
    first_ret = [s for s in samples if s[0] >= 120]  # after the first retention period (and its prune)
    base = first_ret[0] if first_ret else samples[0]
    end = samples[-1]
    t_last = t0 + samples[-1][0]
    p99_first = common.pct(load.latencies(since=t0 + 60, until=t0 + 120), 99)  # the 2nd minute
    p99_last = common.pct(load.latencies(since=t_last - 60, until=t_last), 99)
    row.check(end[1] <= base[1] * 1.2 + (1 << 20), "DB file grew from %.1f MiB at %.0f s to %.1f MiB" % (
        base[1] / 1048576.0, base[0], end[1] / 1048576.0))
    row.check(end[2] <= base[2] * 1.2 + 8192, "RSS grew from %d to %d MiB" % (base[2] >> 10, end[2] >> 10))
    row.check(end[3] <= base[3] + 16, "fds grew from %d to %d" % (base[3], end[3]))
    if p99_first and p99_last:
        row.check(p99_last <= 1.3 * p99_first, "ingest p99 drifted from %s to %s" % (
            common.ms(p99_first), common.ms(p99_last)))
    failed = {s: n for s, n in load.statuses.items() if s != 200}
    row.check(not failed, "ingest answers other than 200: %s" % failed)
    row.check(not lost_flaky, "%d acknowledged events neither reached the failing endpoint nor are dead letters" % len(lost_flaky))
    row.sent = len(load.sent_ids)
    row.acked = len(acked)
    row.lost = len(set(lost_ok) | set(lost_flaky))
    row.dup = got["ok"]["dup"] + got["flaky"]["dup"]
    row.recovery = drain
    row.note("%.0f s at %.0f ev/s (%s); %d SIGHUPs; DB %.1f MiB at %.0f s -> %.1f MiB at the end (max %.1f); "
             "RSS %d -> %d MiB; fds %d -> %d; threads %d -> %d; ingest p99 %s in the 2nd minute, %s in the last; the failing endpoint refused %d of %d (%d dead letters); recovery = drain after the load" % (
                 seconds, rate, "0.5 x %.0f ev/s measured" % calibrated if calibrated else "WB_SOAK_RATE", hups,
                 base[1] / 1048576.0, base[0], end[1] / 1048576.0, max(s[1] for s in samples) / 1048576.0,
                 base[2] >> 10, end[2] >> 10, base[3], end[3], base[4], end[4], common.ms(p99_first),
                 common.ms(p99_last), got["flaky"]["refused"], got["flaky"]["total"], len(dead)))
    return row
