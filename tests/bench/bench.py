#!/usr/bin/env python3
"""bench.py -- waybill's benchmark beside its baselines, in one run.

Run by tests/bench/run.sh (which installs wrk/webhook and builds the bare
server). Parts, numbered as in issue 7:

1. Ingest. For each of --rounds rounds, interleaved (A B C D E, A B C D E,
   ...), each server is started pinned to core 0 (`taskset -c 0`), warmed
   up, then measured with `wrk -t1 -c64` and `-c8` pinned to core 1
   (`taskset -c 1`) using tests/bench/ingest.lua (a new signed ~600-byte
   atoship event per request). Servers:

     waybill     ./waybill serve: atoship source, endpoint "sink" `enabled =
                 false` (its deliveries held; a bare server on core 1 stands
                 behind it in case deliveries do go out), rules sending
                 everything to it, endpoint "parked" (enabled, unused), a
                 fresh store per round
     waybill-1m  the same config on a store holding --scale-rows (1,000,000)
                 pending deliveries for "parked" (part 5; c64 only)
     bare        tests/bench/out/bare_server: libevent evhttp answering 200
     webhook     Debian's webhook (adnanh): payload-hmac-sha256 rule on
                 X-Atoship-Signature, no command (answers, stores nothing)
     node        the seed-002 Express receiver (tests/integration/sinks/
                 xsignature.js, SINK_QUIET=1): raw body, HMAC, timingSafeEqual

2. Sustained throughput (--delivery-rounds, default 3; --fanout 1,4): the
   same wrk -c64 load into a waybill delivering every event to 1 and to 4
   enabled endpoints on a counting bare server (keep-alive, core 1): events/s
   in, deliveries/s out over the window, pending deliveries (admin API) at
   its start and end, the time to drain; ratio to the bare server's c64 rate
   of part 1.
3. End-to-end latency ingest -> sink receipt at a steady --latency-rate
   (1,000) events/s for --latency-seconds (20): one asyncio sender with
   every request signed beforehand, the bare server in record mode as the
   sink (C; it notes when it has read each delivery); p50/p95/p99/max and
   how many never arrived. Convoy's published figure is p95 124 ms at 200
   events/s.
4. Rule cost: `waybill bench-rules` over the example rules (us/event), and
   callgrind's instructions/event when valgrind is installed.
   With --old-bin, "waybill-old" (that binary, the same config) runs in
   the same rounds beside waybill, for before/after ratios (issue 16).
   Under each waybill row, WAL bytes per event: pages the commits appended
   to the write-ahead log (waybill_store_wal_frames_total on /metrics) x
   (page size + 24), and disk write_bytes per event (/proc/PID/io; with the
   checkpoints' copies), against the bytes stored per event (the event row,
   its deliveries and batch items).
6. Phases: one more c64 run of waybill under `perf record --call-graph
   dwarf`; its CPU us per request split by phase (HTTP, verify, parse,
   rules, store, other) from perf's inclusive ("children") shares.
5. Scale: the store for waybill-1m is built before the rounds (waybill
   creates the schema, then tests/bench/scale_store.py bulk-inserts the rows
   in one transaction, ~30 s); ingest at c64 and RSS (VmRSS after the run,
   VmHWM peak) vs the empty store of part 1's waybill, same rounds.

Prints the tables of medians with ratios and writes them, with every
round's numbers, to tests/bench/out/results.md. Exits 0 whatever the
numbers (1 only on a usage error).
"""

import argparse
import asyncio
import json
import re
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import wb  # noqa: E402  (signing helpers, events, free_port)

_LIVE = []  # servers started and not yet stopped (stopped on INT/TERM)
_DIRS = []  # stores to remove on INT/TERM (the scale store)

SECRET = "bench-secret"
ADMIN_TOKEN = "bench-token"
TICK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_ticks(pid):
    """utime+stime of a process (all its threads), in clock ticks."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Server:
    """One server under test: start() -> pid, url, wrk env; stop()."""

    name = "?"
    conns = None  # None: every --conns; else only these
    path = "/hooks/atoship"
    sig_header = "X-Atoship-Signature"

    def __init__(self, args):
        self.args = args
        self.proc = None
        self.port = None
        self.tmp = None
        self.extra = []  # helper processes (not measured)

    def available(self):
        return None  # or a reason why not

    def command(self):
        raise NotImplementedError

    def env(self):
        return dict(os.environ)

    def ready(self):
        return port_open(self.port)

    def start(self):
        self.tmp = tempfile.mkdtemp(prefix="wb-bench-%s-" % self.name)
        _LIVE.append(self)
        self.port = wb.free_port()
        self.prepare()
        self.logf = open(os.path.join(self.tmp, "server.log"), "wb")
        self.proc = subprocess.Popen(["taskset", "-c", self.args.server_cpu] + self.command(),
                                     cwd=self.tmp, env=self.env(), stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf)
        deadline = time.monotonic() + 15
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s: %s" % (self.name, self.proc.returncode, self.log_tail()))
            if time.monotonic() > deadline:
                raise RuntimeError("%s not ready within 15s: %s" % (self.name, self.log_tail()))
            time.sleep(0.05)
        # one signed event by hand: it must be accepted, or numbers mean nothing
        body = wb.atoship_event()
        h = {"Content-Type": "application/json", self.sig_header: wb.sign_hex(SECRET, body)}
        r = wb.http_request(self.port, "POST", self.path, body, h, timeout=10)
        if r.status != 200:
            raise RuntimeError("%s answered %s to a signed event: %r" % (self.name, r.status, r.body[:200]))

    def prepare(self):
        pass

    def log_tail(self, n=10):
        try:
            with open(os.path.join(self.tmp, "server.log"), "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        for p in [self.proc] + self.extra:
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.extra = []
        if self in _LIVE:
            _LIVE.remove(self)
        if getattr(self, "logf", None):
            self.logf.close()
        if self.tmp and not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


class Bare(Server):
    name = "bare"

    def available(self):
        return None if os.access(self.args.bare, os.X_OK) else "%s not built" % self.args.bare

    def command(self):
        return [self.args.bare, str(self.port)]


class Webhook(Server):
    name = "webhook"

    def available(self):
        return None if shutil.which("webhook") else "webhook not installed"

    def prepare(self):
        hooks = [{
            "id": "atoship",
            # No command: webhook answers at once and looks the command up in a
            # goroutine; an absolute path that does not exist costs one stat()
            # (an empty one is searched along $PATH, ~12 stats per request).
            # Running a real one (/bin/true) costs ~2 ms per request.
            "execute-command": "/nonexistent/waybill-bench-no-command",
            "response-message": "ok",
            "http-methods": ["POST"],
            "trigger-rule": {"match": {"type": "payload-hmac-sha256", "secret": SECRET,
                                       "parameter": {"source": "header", "name": self.sig_header}}},
        }]
        with open(os.path.join(self.tmp, "hooks.json"), "w") as f:
            json.dump(hooks, f)

    def command(self):
        return ["webhook", "-hooks", os.path.join(self.tmp, "hooks.json"), "-ip", "127.0.0.1",
                "-port", str(self.port)]


class Node(Server):
    name = "node"
    path = "/webhook"
    sig_header = "X-Signature"

    def available(self):
        if not shutil.which("node"):
            return "node not installed"
        if not os.path.isdir(os.path.join(ROOT, "tests", "node_modules", "express")):
            return "tests/node_modules missing (cd tests && npm ci)"
        return None

    def env(self):
        e = dict(os.environ)
        e.update({"SINK_QUIET": "1", "SINK_SECRET": SECRET, "SINK_PORT": str(self.port),
                  "NODE_ENV": "production"})
        return e

    def command(self):
        return ["node", os.path.join(ROOT, "tests", "integration", "sinks", "xsignature.js")]


class Waybill(Server):
    """waybill serve with the ingest bench's config: the example rules
    (examples/rules/) with their endpoints disabled (deliveries held; a bare
    server on the load generator's core stands behind them in case
    deliveries do go out), plus endpoint "parked" (enabled, no rule sends to it) that holds part
    5's million pending deliveries, so the empty and the 1M-row store run the
    same config. With `endpoints` set (part 2, part 3): those (name, url)
    endpoints instead, all enabled, every event routed to all of them."""

    name = "waybill"
    endpoints = None  # None: the ingest config above; else [(name, url), ...]
    order = None  # the endpoints' `ordered` option (Lua text), or None
    conns = None  # None: every --conns; else only these

    def available(self):
        return None if os.access(self.args.bin, os.X_OK) else "%s not built" % self.args.bin

    def store_setting(self):
        return self.args.store

    def prepare(self):
        self.admin_port = wb.free_port()
        secret = "whsec_YmVuY2gtc2VjcmV0LWZvci13YXliaWxs"
        if self.endpoints:
            eps = [(n, u, "true") + (("ordered = " + self.order,) if self.order else ())
                   for n, u in self.endpoints]
        else:
            sink_port = wb.free_port()
            if os.access(self.args.bare, os.X_OK):
                self.extra.append(subprocess.Popen(["taskset", "-c", self.args.wrk_cpu, self.args.bare,
                                                    str(sink_port)],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            # the example rules (examples/rules/) and their endpoints, all
            # disabled: a shipment.delivered event goes whole to "erp" and as
            # a record made by a function handler to "crm", both held.
            eps = [(n, "http://127.0.0.1:%d/%s" % (sink_port, n), "false")
                   for n in ("erp", "crm", "alerts")]
            eps.append(("warehouse", "http://127.0.0.1:%d/warehouse" % sink_port, "false", 'window = "1m"'))
            eps.append(("parked", "http://127.0.0.1:%d/parked" % sink_port, "true"))
        os.makedirs(os.path.join(self.tmp, "rules"))
        if self.endpoints:
            routed = [e[0] for e in eps]
            with open(os.path.join(self.tmp, "rules", "10-all.lua"), "w") as f:
                f.write('on("*", {%s})\n' % ", ".join('"%s"' % n for n in routed))
        else:
            for name in sorted(os.listdir(os.path.join(ROOT, "examples", "rules"))):
                if name.endswith(".lua"):
                    shutil.copy(os.path.join(ROOT, "examples", "rules", name), os.path.join(self.tmp, "rules", name))
        with open(os.path.join(self.tmp, "waybill.lua"), "w") as f:
            f.write('listen = "127.0.0.1:%d"\n' % self.port)
            f.write('admin = { listen = "127.0.0.1:%d", token = "%s" }\n' % (self.admin_port, ADMIN_TOKEN))
            f.write('store = "%s"\n' % self.store_setting())
            f.write('allow_private = { "127.0.0.0/8" }\n')
            f.write('source "atoship" { verify = "atoship", secret = "%s" }\n' % SECRET)
            for e in eps:
                f.write('endpoint "%s" { url = "%s", secret = "%s", sign = "standard", enabled = %s%s }\n'
                        % (e[0], e[1], secret, e[2], ", " + e[3] if len(e) > 3 else ""))
            f.write('rules "rules/"\n')

    def ready(self):
        try:
            return wb.http_request(self.admin_port, "GET", "/healthz", timeout=1).status == 200
        except OSError:
            return False
        except Exception:  # noqa: BLE001 - http.client errors while starting
            return False

    def command(self):
        return [self.args.bin, "serve", "-c", os.path.join(self.tmp, "waybill.lua")]

    def queue(self):
        """The admin API's delivery counts: {"pending": n, "held": n, ...}."""
        r = wb.http_request(self.admin_port, "GET", "/api/status",
                            headers={"Authorization": "Bearer " + ADMIN_TOKEN}, timeout=10)
        if r.status != 200:
            raise RuntimeError("GET /api/status answered %s" % r.status)
        return json.loads(r.body)["queue"]

    def before_run(self):
        """Called before each measured wrk run: the WAL and disk counters."""
        self.io0 = (wal_frames(self), proc_write_bytes(self.proc.pid))

    def after_run(self, d):
        """Called after each measured wrk run: RSS now and the peak so far,
        WAL and disk bytes per request, the bytes stored per event."""
        d.update(proc_mem(self.proc.pid))
        time.sleep(0.2)  # the last group's commit
        f0, w0 = getattr(self, "io0", (None, None))
        f1, w1 = wal_frames(self), proc_write_bytes(self.proc.pid)
        n = d["requests"] or 1
        if f0 is not None and f1 is not None:
            d["wal_frames"] = (f1 - f0) / n
            ps = page_size(os.path.join(self.tmp, "waybill.db")) if self.name != "waybill-1m" else \
                page_size(WaybillScale.built)
            if ps:
                d["wal_bytes"] = d["wal_frames"] * (ps + 24)
        if w0 is not None and w1 is not None:
            d["disk_bytes"] = (w1 - w0) / n
        if self.name != "waybill-1m":
            st = stored_bytes(os.path.join(self.tmp, "waybill.db"))
            if st:
                d["stored_bytes"] = st


class WaybillDash(Waybill):
    """Issue 17: the ingest config at c64 while three dashboard tabs are
    open on Overview, each signed in with its own session and asking what
    the page asks: status and endpoints every 1.5 s, the series every 10 s."""

    name = "waybill-dash"
    conns = (64,)
    PAGE = ("/api/status", "/api/series", "/api/endpoints")

    idle = []  # (ms of CPU per s without tabs, with three tabs), measured in round 1

    def start(self):
        super().start()
        measure = not WaybillDash.idle
        if measure:
            base = self.cpu_per_s(10.5)
        self.stop_tabs = threading.Event()
        self.tabs, self.polls, self.poll_errors = [], [0], [0]
        origin = {"Origin": "http://127.0.0.1:%d" % self.admin_port, "Content-Type": "application/json"}
        for _ in range(3):
            r = wb.http_request(self.admin_port, "POST", "/login", json.dumps({"token": ADMIN_TOKEN}), origin)
            if r.status != 204:
                raise RuntimeError("dashboard sign-in answered %s" % r.status)
            cookie = {"Cookie": r.headers["Set-Cookie"].split(";")[0]}
            t = threading.Thread(target=self.tab, args=(cookie,), daemon=True)
            t.start()
            self.tabs.append(t)
        if measure:
            WaybillDash.idle.append((base, self.cpu_per_s(10.5)))

    def cpu_per_s(self, seconds):
        """The server's CPU time per second of wall time (ms) over seconds."""
        t0, c0 = time.monotonic(), cpu_ticks(self.proc.pid)
        time.sleep(seconds)
        t1, c1 = time.monotonic(), cpu_ticks(self.proc.pid)
        return (c1 - c0) * 1000.0 / os.sysconf("SC_CLK_TCK") / (t1 - t0)

    def tab(self, cookie):
        n = 0
        while not self.stop_tabs.wait(1.5):
            n += 1
            for path in self.PAGE if n % 7 == 1 else ("/api/status", "/api/endpoints"):
                try:
                    ok = wb.http_request(self.admin_port, "GET", path, headers=cookie, timeout=10).status == 200
                except Exception:  # noqa: BLE001 - counted
                    ok = False
                self.polls[0] += 1
                self.poll_errors[0] += 0 if ok else 1

    def stop(self):
        if getattr(self, "stop_tabs", None):
            self.stop_tabs.set()
            for t in self.tabs:
                t.join(15)
        super().stop()


class WaybillScale(Waybill):
    """Part 5: the ingest config on a store already holding --scale-rows
    pending deliveries (endpoint "parked", due in 2100), built once before
    the rounds by scale_store.py and kept across rounds (ingest adds held
    deliveries to "sink"; the pending million stays). 64 connections only."""

    name = "waybill-1m"
    conns = (64,)
    built = None  # path of the built store, shared by every round

    def available(self):
        if not self.args.scale_rows:
            return "--scale-rows 0"
        os.makedirs(self.args.scale_dir, exist_ok=True)
        st = os.statvfs(self.args.scale_dir)
        need = self.args.scale_rows * 2600 + (1 << 30)  # ~2.4 KB a row, and room to ingest
        if st.f_bavail * st.f_frsize < need:
            return "%s has less than %.1f GiB free" % (self.args.scale_dir, need / 2.0 ** 30)
        return Waybill.available(self)

    def store_setting(self):
        return "sqlite:" + WaybillScale.built

    def start(self):
        Waybill.start(self)
        q = self.queue()
        self.pending_at_start = q["pending"]
        if q["pending"] < self.args.scale_rows:
            raise RuntimeError("waybill sees %d pending deliveries, not %d" % (q["pending"], self.args.scale_rows))

    @classmethod
    def build(cls, args):
        """Lets waybill create the schema, stops it, bulk-inserts the rows.
        Returns (seconds, path)."""
        d = tempfile.mkdtemp(prefix="wb-bench-scale-", dir=args.scale_dir)
        _DIRS.append(d)
        path = os.path.join(d, "waybill.db")
        cls.built = path
        t0 = time.monotonic()
        s = Waybill(args)
        s.store_setting = lambda: "sqlite:" + path
        try:
            s.start()
        finally:
            s.stop()
        sys.path.insert(0, HERE)
        import scale_store  # noqa: E402
        scale_store.build(path, args.scale_rows, "parked")
        return time.monotonic() - t0, path


class WaybillOld(Waybill):
    """--old-bin: another waybill binary (e.g. main before a change) with the
    same config, in the same rounds, for before/after ratios."""

    name = "waybill-old"

    def available(self):
        if not self.args.old_bin:
            return "no --old-bin"
        return None if os.access(self.args.old_bin, os.X_OK) else "%s not built" % self.args.old_bin

    def command(self):
        return [self.args.old_bin, "serve", "-c", os.path.join(self.tmp, "waybill.lua")]

    def env(self):
        e = dict(os.environ)
        # the old binary reads its rules library from the tree it was built in
        e.setdefault("WAYBILL_LUA_DIR", os.path.join(os.path.dirname(self.args.old_bin), "lua"))
        return e


# Part 6: phases, as perf's inclusive shares of the process's CPU. A
# phase's functions and the functions inside them that belong to another
# phase (subtracted). HTTP is the connection's reading and parsing (on_read
# without the handler) and the answers (their formatting and send()).
PHASES = (
    ("HTTP", ("on_read", "on_bev_read", "httpd_conn_answered"), ("on_inbound",)),
    ("verify", ("verify_check",), ()),
    ("parse", ("rules_adapt_keep", "headers_to_json"), ()),
    ("rules", ("route_plan",), ()),
    ("store", ("store_event_put", "group_commit", "start_thread", "store_group_durable"),
     ("callbacks_run",)),
)


def bench_phases(args, duration):
    """Part 6: waybill (the ingest config) under the c64 load with `perf
    record --call-graph dwarf` on it for most of the run; returns
    {"cpu_us": per request, "phases": [(name, us)], "other": us} or None."""
    if not shutil.which("perf"):
        return None
    s = Waybill(args)
    data = os.path.join(HERE, "out", "perf.data")
    try:
        s.start()
        if args.warmup:
            run_wrk(args, s, 64, args.warmup)
        secs = max(2, duration - 2)
        rec = subprocess.Popen(["perf", "record", "-q", "-F", "499", "--call-graph", "dwarf,16384",
                                "-p", str(s.proc.pid), "-o", data, "--", "sleep", str(secs)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        d = run_wrk(args, s, 64, duration)
        rec.wait(duration + 60)
    finally:
        s.stop()
    r = subprocess.run(["perf", "report", "-i", data, "--children", "--stdio", "-g", "none", "--sort", "sym",
                        "--percent-limit", "0"], capture_output=True, text=True, timeout=300)
    share = {}
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+[\d.]+%\s+\[[.k]\]\s+(\S+)", line)
        if m and m.group(2) not in share:
            share[m.group(2)] = float(m.group(1))
    if not share or "cpu_us" not in d:
        return None
    out, total = [], 0.0
    for name, plus, minus in PHASES:
        pct = max(0.0, sum(share.get(f, 0.0) for f in plus) - sum(share.get(f, 0.0) for f in minus))
        out.append((name, d["cpu_us"] * pct / 100.0))
        total += pct
    return {"cpu_us": d["cpu_us"], "phases": out, "other": d["cpu_us"] * max(0.0, 100.0 - total) / 100.0,
            "rps": d["rps"]}


def proc_mem(pid):
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0].lower() + "_kib"] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return out


def wal_frames(server):
    """waybill_store_wal_frames_total from the admin API's /metrics (None
    when the binary has no such counter)."""
    try:
        r = wb.http_request(server.admin_port, "GET", "/metrics",
                            headers={"Authorization": "Bearer " + ADMIN_TOKEN}, timeout=10)
    except Exception:  # noqa: BLE001
        return None
    if r.status != 200:
        return None
    m = re.search(rb"^waybill_store_wal_frames_total (\S+)$", r.body, re.M)
    if m:
        return float(m.group(1))
    return 0.0 if b"# TYPE waybill_store_wal_frames_total" in r.body else None


def proc_write_bytes(pid):
    """write_bytes of /proc/PID/io: what the process sent towards the disk."""
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def page_size(path):
    """The SQLite page size from a database file's header."""
    try:
        with open(path, "rb") as f:
            h = f.read(18)
        v = int.from_bytes(h[16:18], "big")
        return 65536 if v == 1 else v or None
    except OSError:
        return None


def stored_bytes(path):
    """Bytes stored per event in a store: each event row's values, its
    deliveries' and batch items' (what the rows hold, before SQLite's record
    and page overhead)."""
    import sqlite3
    try:
        db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
        ev = db.execute("SELECT count(*), total(8 + length(id) + length(source) + length(source_id) + "
                        "ifnull(length(type), 0) + length(status) + ifnull(length(error), 0) + "
                        "ifnull(length(created_at), 0) + ifnull(length(headers), 0) + "
                        "ifnull(length(data), 0) + ifnull(length(raw), 0)) FROM events").fetchone()
        dl = db.execute("SELECT total(40 + length(id) + length(event_id) + length(endpoint) + "
                        "ifnull(length(event_type), 0) + length(status) + ifnull(length(payload), 0) + "
                        "ifnull(length(content_type), 0) + ifnull(length(headers), 0)) "
                        "FROM deliveries").fetchone()
        bi = db.execute("SELECT total(24 + length(endpoint) + length(event_id) + ifnull(length(payload), 0) "
                        "+ ifnull(length(delivery_id), 0)) FROM batch_items").fetchone()
        db.close()
    except Exception:  # noqa: BLE001
        return None
    return (ev[1] + dl[0] + bi[0]) / ev[0] if ev[0] else None


def run_wrk(args, server, conns, duration):
    env = dict(os.environ)
    env.update({"WB_SECRET": SECRET, "WB_SIG_HEADER": server.sig_header, "WB_PATH": server.path})
    cmd = ["taskset", "-c", args.wrk_cpu, "wrk", "-t1", "-c%d" % conns, "-d%ds" % duration, "--latency",
           "--timeout", "10s", "-s", os.path.join(HERE, "ingest.lua"), "http://127.0.0.1:%d%s" % (server.port, server.path)]
    if hasattr(server, "before_run"):
        server.before_run()
    t0 = cpu_ticks(server.proc.pid)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 60)
    t1 = cpu_ticks(server.proc.pid)
    for line in r.stdout.splitlines():
        if line.startswith("WRKJSON "):
            d = json.loads(line[len("WRKJSON "):])
            d["rps"] = d["requests"] / (d["duration_us"] / 1e6) if d["duration_us"] else 0.0
            d["non2xx"] = d["errors"]["status"]
            d["sockerr"] = sum(v for k, v in d["errors"].items() if k != "status")
            if t0 is not None and t1 is not None and d["requests"]:
                d["cpu_us"] = (t1 - t0) / TICK * 1e6 / d["requests"]
            if hasattr(server, "after_run"):
                server.after_run(d)
            return d
    raise RuntimeError("wrk gave no result (exit %s): %s %s" % (r.returncode, r.stdout[-500:], r.stderr[-500:]))


def bare_count(port):
    return int(wb.http_request(port, "GET", "/_count", timeout=5).body)


# Part 2b: the same sustained load into one endpoint, ordered (issue 20):
# by key over 1,000 keys (the last three digits of the tracking number,
# which the load's events cycle through) and as one FIFO (ordered = true).
ORDER_MODES = [("1,000 keys", 'function(ev) return ev.data.tracking_number:sub(-3) end'),
               ("ordered = true", "true")]


def bench_sustained(args, nendpoints, duration, order=None):
    """Part 2, sustained throughput: wrk -c64 (the ingest load) into a
    waybill delivering every event to `nendpoints` enabled endpoints, all on
    one counting bare server (keep-alive; on the load generator's core, paths
    /e1../eN). After a warm-up, the window is one wrk run: events/s in (wrk),
    deliveries/s out (the sink's count over the window), and the backlog
    (pending deliveries by the admin API) at its start and end; then the
    time until everything accepted has been delivered."""
    sink_port = wb.free_port()
    sink = subprocess.Popen(["taskset", "-c", args.wrk_cpu, args.bare, str(sink_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = Waybill(args)
    s.endpoints = [("e%d" % k, "http://127.0.0.1:%d/e%d" % (sink_port, k)) for k in range(1, nendpoints + 1)]
    s.order = order
    try:
        wb.wait_for(lambda: port_open(sink_port), 5)
        s.start()
        if args.warmup:
            w = run_wrk(args, s, 64, args.warmup)
        q0, c0, t0 = s.queue(), bare_count(sink_port), time.monotonic()
        d = run_wrk(args, s, 64, duration)
        c1, t1 = bare_count(sink_port), time.monotonic()
        q1 = s.queue()
        # everything accepted so far (start-up check, warm-up, window) must arrive
        accepted = 1 + d["requests"] - d["non2xx"] + ((w["requests"] - w["non2xx"]) if args.warmup else 0)
        want = accepted * nendpoints
        deadline = time.monotonic() + args.drain_timeout
        got = c1
        while got < want and time.monotonic() < deadline:
            time.sleep(0.05)
            got = bare_count(sink_port)
        drain = time.monotonic() - t1
        window = t1 - t0
        out = (c1 - c0) / window if window > 0 else 0.0
        grew = q1["pending"] - q0["pending"]
        # flat: grew by less than 2% of the window's deliveries plus what may
        # be in flight (16 per endpoint by default)
        flat = grew <= 0.02 * (c1 - c0) + 16 * nendpoints
        return {"endpoints": nendpoints, "in_rps": d["rps"], "out_rps": out, "p99_us": d["p99_us"],
                "non2xx": d["non2xx"], "pending0": q0["pending"], "pending1": q1["pending"],
                "flat": flat, "drain_s": drain, "complete": got >= want, "delivered": got, "want": want,
                "cpu_us": d.get("cpu_us")}
    finally:
        s.stop()
        sink.terminate()
        sink.wait()


async def send_at_rate(port, reqs, rate, nconns=32):
    """Sends reqs [(order id, raw HTTP request bytes)] to 127.0.0.1:port,
    request i at start + i/rate, each on a free keep-alive connection (one
    request at a time per connection; more are opened up to nconns when all
    are busy). One asyncio loop, no threads: a sender thread waiting for the
    GIL would add its wait to the latency. Returns ({order id: time.time()
    just before the request was written, for 200s}, failures, the most a
    send started after its slot, in s)."""
    sent = {}
    free = []
    state = {"open": 0, "failed": 0, "late": 0.0}
    tasks = set()

    async def one(conn, oid, raw):
        reader, writer = conn
        try:
            t = time.time()
            writer.write(raw)
            status = int((await reader.readline()).split()[1])
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            if length:
                await reader.readexactly(length)
            if status == 200:
                sent[oid] = t
            else:
                state["failed"] += 1
            free.append(conn)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            state["failed"] += 1
            state["open"] -= 1
            writer.close()

    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    for i, (oid, raw) in enumerate(reqs):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            state["late"] = max(state["late"], -delay)
        while not free and state["open"] >= nconns:
            await asyncio.sleep(0.0005)
        if free:
            conn = free.pop()
        else:
            conn = await asyncio.open_connection("127.0.0.1", port)
            state["open"] += 1
        t = asyncio.ensure_future(one(conn, oid, raw))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(list(tasks), timeout=30)
    for _, writer in free:
        writer.close()
    return sent, state["failed"], state["late"]


def bench_latency(args, rate, seconds):
    """Part 3, end-to-end latency ingest -> sink at a steady `rate`
    events/s: each event's time from just before its POST is written to
    the moment the sink has read the whole delivery. The sink is the bare
    server in record mode (C, libevent: it notes receipt time and order id
    per request), or with --latency-sink python the tests' Python sink. The
    sender is one asyncio loop on keep-alive connections, pinned to the load
    generator's core, every request signed beforehand; how late it ran
    against the schedule is reported, so a sender that could not keep up is
    seen, not hidden."""
    py_sink = args.latency_sink == "python"
    if py_sink:
        sink = wb.Sink()
        url = sink.url
    else:
        sink_port = wb.free_port()
        sink = subprocess.Popen(["taskset", "-c", args.wrk_cpu, args.bare, str(sink_port), "record"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = "http://127.0.0.1:%d/lat" % sink_port
        wb.wait_for(lambda: port_open(sink_port), 5)
    s = Waybill(args)
    s.endpoints = [("sink", url)]
    received = {}  # order id -> receipt time (s since the epoch)

    def collect():
        if py_sink:
            for req in sink.requests[len(collect.seen):]:
                collect.seen.append(req)
                try:
                    received.setdefault(req.json()["data"]["order_id"], req.time)
                except (ValueError, KeyError, TypeError):
                    pass
        else:
            body = wb.http_request(sink_port, "GET", "/_dump", timeout=10).body.decode()
            for line in body.splitlines():
                oid, _, us = line.partition(" ")
                received.setdefault(oid, int(us) / 1e6)
        return len(received)
    collect.seen = []

    old_affinity = os.sched_getaffinity(0)
    try:
        s.start()
        wb.wait_for(lambda: collect() >= 1, 10)  # the start-up check's event
        n = int(rate * seconds)
        tag = "order_lat_%x_" % int(time.time())
        # every request built beforehand: the sending loop only writes and reads
        reqs = []
        for i in range(n):
            oid = "%s%06d" % (tag, i)
            body = wb.atoship_event("tracking.in_transit", order_id=oid)
            head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                    "%s: %s\r\nContent-Length: %d\r\n\r\n"
                    % (s.path, s.port, s.sig_header, wb.sign_hex(SECRET, body), len(body)))
            reqs.append((oid, head.encode() + body))
        os.sched_setaffinity(0, {int(args.wrk_cpu)})  # the sender on the load generator's core
        t_start = time.monotonic()
        sent, failed, late_max = asyncio.run(send_at_rate(s.port, reqs, rate))
        t_sent = time.monotonic() - t_start
        os.sched_setaffinity(0, old_affinity)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(k in received for k in sent):
            collect()
            time.sleep(0.1)
        collect()
        lat = sorted((received[k] - t) * 1000 for k, t in sent.items() if k in received)
        missing = sum(1 for k in sent if k not in received)

        def pct(p):
            return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")

        return {"rate": rate, "seconds": seconds, "events": n, "accepted": len(sent), "failed": failed,
                "sent_rate": len(sent) / t_sent if t_sent else 0.0, "sender_late_ms": late_max * 1000,
                "delivered": len(lat), "missing": missing,
                "p50": pct(50), "p95": pct(95), "p99": pct(99), "max": lat[-1] if lat else float("nan"),
                "sink": "Python" if py_sink else "C"}
    finally:
        os.sched_setaffinity(0, old_affinity)
        s.stop()
        if py_sink:
            sink.stop()
        else:
            sink.terminate()
            sink.wait()


def fmt_int(x):
    return "{:,.0f}".format(x)


def med(values):
    return statistics.median(values) if values else None


EXAMPLE_ENV = {
    "WAYBILL_ADMIN_TOKEN": "t", "ATOSHIP_SECRET": "a", "AFTERSHIP_SECRET": "b",
    "SHIPTIFY_SECRET": "c", "SHOP_SECRET": "d",
    "ERP_SECRET": "whsec_ZGV2LWVycC1zZWNyZXQtZm9yLXdheWJpbGw=",
    "CRM_SECRET": "whsec_ZGV2LWNybS1zZWNyZXQtZm9yLXdheWJpbGw=",
    "ALERTS_SECRET": "whsec_ZGV2LWFsZXJ0cy1zZWNyZXQtZm9yLXdheWI=",
    "WAREHOUSE_SECRET": "whsec_ZGV2LXdhcmVob3VzZS1zZWNyZXQtZm9yLXc=",
}
RULE_EVENT_TYPES = ("tracking.delivered", "tracking.in_transit", "shipment.exception",
                    "shipment.created", "order.imported")


def bench_rules(args, rounds=3):
    """Rule execution cost of examples/waybill.lua's rules: `waybill
    bench-rules` times rules_route (sandboxed handlers, JSON encoding of the
    payloads, no store) over a mix of five atoship events. With valgrind
    installed, callgrind's instruction count per event too (difference of two
    round counts, so loading the rules is not counted). Returns a summary
    line or None."""
    cfg = os.path.join(ROOT, "examples", "waybill.lua")
    tmp = tempfile.mkdtemp(prefix="wb-bench-rules-")
    files = []
    for i, t in enumerate(RULE_EVENT_TYPES):
        ev = {"id": "evt_bench_%d" % i, "type": t, "created_at": "2026-01-01T00:00:00Z",
              "data": {"shipment_id": "shp_1", "tracking_number": "9400111899223400000000",
                       "carrier": "USPS", "order_id": "order_%d" % i, "order_reference": "ORD-1",
                       "delivered_at": "2026-01-01T00:00:00Z", "exception_reason": "damaged",
                       "signed_by": "RESIDENT"}}
        f = os.path.join(tmp, "%d.json" % i)
        with open(f, "w") as fh:
            json.dump(ev, fh)
        files.append(f)
    env = dict(os.environ)
    env.update(EXAMPLE_ENV)
    base = [args.bin, "bench-rules", "-c", cfg, "--source", "atoship"]
    us = []
    out = None
    for _ in range(rounds):
        r = subprocess.run(base + ["-n", "4000"] + files, capture_output=True, env=env, text=True)
        if r.returncode != 0:
            log("bench-rules failed: %s" % r.stderr.strip())
            return None
        out = json.loads(r.stdout)
        us.append(out["us_per_event"])
    line = ("rule execution (examples/ rules, %d event types, %.1f sends/event, no store): "
            "%.1f us/event (median of %d)" % (len(files), out["sends_per_event"], med(us), rounds))
    if shutil.which("valgrind"):
        irs = []
        for n in (20, 120):
            cg = os.path.join(tmp, "cg.%d" % n)
            r = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + cg] + base +
                               ["-n", str(n)] + files, capture_output=True, env=env, text=True)
            m = re.search(r"Collected : (\d+)", r.stderr)
            irs.append(int(m.group(1)) if m else None)
        if None not in irs:
            line += ", %s instructions/event (callgrind)" % fmt_int((irs[1] - irs[0]) / (100 * len(files)))
    else:
        line += " (install valgrind for callgrind's instructions/event)"
    shutil.rmtree(tmp, ignore_errors=True)
    bench_rules.us = med(us)
    return line


def mib(kib):
    return "%.1f" % (kib / 1024.0) if kib is not None else "?"


def main():
    ap = argparse.ArgumentParser(description="waybill ingest benchmark")
    ap.add_argument("--bin", default=os.path.join(ROOT, "waybill"))
    ap.add_argument("--bare", default=os.path.join(HERE, "out", "bare_server"))
    ap.add_argument("--servers", default="waybill,waybill-dash,waybill-1m,bare,webhook,node")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of wrk before measuring")
    ap.add_argument("--conns", default="64,8")
    ap.add_argument("--store", default="sqlite:waybill.db", help="waybill's store setting")
    ap.add_argument("--server-cpu", default="0")
    ap.add_argument("--wrk-cpu", default="1")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "results.md"))
    ap.add_argument("--keep", action="store_true", help="keep the servers' temp dirs")
    ap.add_argument("--delivery-rounds", type=int, default=3,
                    help="rounds of sustained throughput (part 2); 0 = none")
    ap.add_argument("--fanout", default="1,4", help="endpoint counts for sustained throughput")
    ap.add_argument("--ordered-rows", type=int, default=1,
                    help="part 2b: one endpoint ordered by 1,000 keys and ordered = true (0 = skip)")
    ap.add_argument("--latency-rounds", type=int, default=1, help="runs of end-to-end latency (part 3); 0 = none")
    ap.add_argument("--latency-rate", type=int, default=1000, help="events/s for the end-to-end latency run")
    ap.add_argument("--latency-seconds", type=int, default=20)
    ap.add_argument("--latency-sink", choices=("c", "python"), default="c")
    ap.add_argument("--scale-rows", type=int, default=1000000,
                    help="pending deliveries in waybill-1m's store (part 5); 0 = skip it")
    ap.add_argument("--scale-dir", default=os.path.join(HERE, "out"),
                    help="where the scale store (~2.3 GiB for 1M rows) is built; removed after the rounds "
                         "unless --keep")
    ap.add_argument("--drain-timeout", type=float, default=60.0)
    ap.add_argument("--old-bin", default=None,
                    help="another waybill binary run beside ./waybill in part 1 (before/after ratios)")
    ap.add_argument("--phases", type=int, default=1, help="part 6, CPU by phase under perf (0 = skip)")
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    args.bare = os.path.abspath(args.bare)
    conns = [int(c) for c in args.conns.split(",")]
    fanout = [int(x) for x in args.fanout.split(",") if x.strip()]
    kinds = {"waybill": Waybill, "waybill-dash": WaybillDash, "waybill-1m": WaybillScale, "bare": Bare,
             "webhook": Webhook, "node": Node, "waybill-old": WaybillOld}
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if args.old_bin:
        args.old_bin = os.path.abspath(args.old_bin)
        if "waybill-old" not in names:
            names.insert(names.index("waybill") + 1 if "waybill" in names else 0, "waybill-old")
    for n in names:
        if n not in kinds:
            ap.error("unknown server %r" % n)

    notes = []
    servers = []
    for n in names:
        why = kinds[n](args).available()
        if why:
            notes.append("%s: skipped (%s)" % (n, why))
            log("bench: %s skipped: %s" % (n, why))
        else:
            servers.append(n)

    results = {}  # (server, conns) -> list of wrk dicts
    broken = {}
    started = time.monotonic()
    load_start = os.getloadavg()
    scale_build = None
    if "waybill-1m" in servers:
        try:
            log("bench: building a store with %s pending deliveries" % fmt_int(args.scale_rows))
            scale_build, path = WaybillScale.build(args)
            log("bench: built %s (%.0f MiB) in %.1f s" % (path, os.path.getsize(path) / 1048576.0, scale_build))
        except Exception as e:  # noqa: BLE001
            broken["waybill-1m"] = str(e)
            notes.append("waybill-1m: building the store failed: %s" % str(e).splitlines()[0][:300])
            log("bench: building the scale store failed: %s" % e)
    scale_pending = []
    for rnd in range(1, args.rounds + 1):
        for n in servers:
            if n in broken:
                continue
            s = kinds[n](args)
            try:
                s.start()
                if isinstance(s, WaybillScale):
                    scale_pending.append(s.pending_at_start)
                if args.warmup:
                    run_wrk(args, s, max(s.conns or conns), args.warmup)
                for c in conns:
                    if s.conns and c not in s.conns:
                        continue
                    d = run_wrk(args, s, c, args.duration)
                    results.setdefault((n, c), []).append(d)
                    log("bench: round %d %-10s c%-3d %9s req/s  p50 %6.2f ms  p99 %7.2f ms  cpu %6s us/req%s%s"
                        % (rnd, n, c, fmt_int(d["rps"]), d["p50_us"] / 1000, d["p99_us"] / 1000,
                           "%.1f" % d["cpu_us"] if "cpu_us" in d else "?",
                           "  RSS %s MiB (peak %s)" % (mib(d["vmrss_kib"]), mib(d["vmhwm_kib"]))
                           if "vmrss_kib" in d else "",
                           "  (%d non-2xx)" % d["non2xx"] if d["non2xx"] else ""))
            except Exception as e:  # noqa: BLE001 - report, go on with the others
                broken[n] = str(e)
                log("bench: %s failed: %s" % (n, e))
                notes.append("%s: failed in round %d: %s" % (n, rnd, str(e).splitlines()[0][:300]))
            finally:
                s.stop()
    if WaybillScale.built and not args.keep:
        shutil.rmtree(os.path.dirname(WaybillScale.built), ignore_errors=True)

    sustained, latencies, ordered = [], [], []
    can_deliver = ("waybill" in servers and "waybill" not in broken and os.access(args.bare, os.X_OK))
    if can_deliver:
        for rnd in range(1, args.delivery_rounds + 1):
            for k in fanout:
                try:
                    d = bench_sustained(args, k, args.duration)
                    d["round"] = rnd
                    sustained.append(d)
                    log("bench: sustained round %d, %d endpoint(s): %s events/s in, %s deliveries/s out, "
                        "backlog %s -> %s (%s), drained %.1f s after%s"
                        % (rnd, k, fmt_int(d["in_rps"]), fmt_int(d["out_rps"]), fmt_int(d["pending0"]),
                           fmt_int(d["pending1"]), "flat" if d["flat"] else "GROWING", d["drain_s"],
                           "" if d["complete"] else " (INCOMPLETE: %s of %s)" % (fmt_int(d["delivered"]),
                                                                               fmt_int(d["want"]))))
                except Exception as e:  # noqa: BLE001
                    notes.append("sustained throughput (%d endpoints): failed: %s" % (k, str(e).splitlines()[0][:300]))
                    log("bench: sustained (%d endpoints) failed: %s" % (k, e))
            for label, order in ORDER_MODES if args.ordered_rows else []:
                try:
                    d = bench_sustained(args, 1, args.duration, order=order)
                    d["round"], d["order"] = rnd, label
                    ordered.append(d)
                    log("bench: sustained round %d, 1 endpoint ordered (%s): %s deliveries/s out, "
                        "backlog %s -> %s" % (rnd, label, fmt_int(d["out_rps"]), fmt_int(d["pending0"]),
                                              fmt_int(d["pending1"])))
                except Exception as e:  # noqa: BLE001
                    notes.append("sustained, ordered (%s): failed: %s" % (label, str(e).splitlines()[0][:300]))
        for rnd in range(1, args.latency_rounds + 1):
            try:
                lt = bench_latency(args, args.latency_rate, args.latency_seconds)
                latencies.append(lt)
                log("bench: latency round %d: %d ev/s for %d s (sent %.0f/s, senders at most %.1f ms late), "
                    "p50 %.1f ms p95 %.1f ms p99 %.1f ms max %.1f ms, %d missing, %d failed"
                    % (rnd, lt["rate"], lt["seconds"], lt["sent_rate"], lt["sender_late_ms"], lt["p50"],
                       lt["p95"], lt["p99"], lt["max"], lt["missing"], lt["failed"]))
            except Exception as e:  # noqa: BLE001
                notes.append("end-to-end latency: failed: %s" % str(e).splitlines()[0][:300])
                log("bench: latency failed: %s" % e)
    elif "waybill" in servers:
        notes.append("parts 2 and 3 skipped (waybill failed or the bare server is not built)")
    phases = None
    if args.phases and "waybill" in servers and "waybill" not in broken:
        try:
            phases = bench_phases(args, args.duration)
            if phases:
                log("bench: phases (perf): %.1f us/req: %s, other %.1f" % (
                    phases["cpu_us"], ", ".join("%s %.1f" % p for p in phases["phases"]), phases["other"]))
            else:
                notes.append("phases: perf not installed or gave no profile")
        except Exception as e:  # noqa: BLE001
            notes.append("phases: failed: %s" % str(e).splitlines()[0][:300])
            log("bench: phases failed: %s" % e)
    load_end = os.getloadavg()

    def stat(n, c, key):
        vals = [d[key] for d in results.get((n, c), []) if key in d]
        return med(vals)

    lines = []
    lines.append("# waybill benchmark")
    lines.append("")
    lines.append("%s; %s; %d round(s) interleaved, wrk -t1 -d%ds --latency (core %s), servers on core %s; "
                 "signed ~606-byte atoship events, a new id per request; waybill store `%s`; medians. "
                 "Load average %.2f at the start, %.2f at the end (2 cores; other work may share them)."
                 % (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), os.uname().nodename, args.rounds,
                    args.duration, args.wrk_cpu, args.server_cpu, args.store, load_start[0], load_end[0]))
    lines.append("")
    lines.append("| ingest | server | req/s | p50 ms | p99 ms | CPU us/req | x bare | non-2xx |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    summary = []
    for c in conns:
        bare = stat("bare", c, "rps")
        for n in servers:
            rps = stat(n, c, "rps")
            if rps is None:
                continue
            p50, p99, cpu = stat(n, c, "p50_us"), stat(n, c, "p99_us"), stat(n, c, "cpu_us")
            non2xx = sum(d["non2xx"] for d in results[(n, c)])
            lines.append("| c%d | %s | %s | %.2f | %.2f | %s | %s | %d |" % (
                c, n, fmt_int(rps), p50 / 1000, p99 / 1000, "%.1f" % cpu if cpu is not None else "?",
                "%.2f" % (rps / bare) if bare else "-", non2xx))
        w, hook, node = stat("waybill", c, "rps"), stat("webhook", c, "rps"), stat("node", c, "rps")
        parts = ["ingest c%d" % c]
        if w is not None:
            parts.append("waybill %s req/s p50 %.1f ms p99 %.1f ms" % (
                fmt_int(w), stat("waybill", c, "p50_us") / 1000, stat("waybill", c, "p99_us") / 1000))
        else:
            parts.append("waybill -")
        if bare:
            parts.append("bare %s" % fmt_int(bare))
            if w is not None:
                parts.append("ratio %.2f" % (w / bare))
        if hook:
            parts.append("webhook %s%s" % (fmt_int(hook), " (waybill/webhook %.2f)" % (w / hook) if w else ""))
        if node:
            parts.append("node %s%s" % (fmt_int(node), " (waybill/node %.2f)" % (w / node) if w else ""))
        summary.append(" | ".join(parts))
    lines.append("")
    lines.extend(summary)

    bare64 = stat("bare", 64, "rps")
    if sustained:
        lines.append("")
        lines.append("Sustained throughput (2.): wrk -c64 %ds after %ds warm-up, every event delivered to each "
                     "endpoint (sign standard) on one counting bare server (keep-alive, core %s); backlog = "
                     "pending deliveries (admin API) at the window's start and end, flat = grew by less than "
                     "2%% of the window's deliveries + 16 per endpoint; x bare = events/s in / bare c64 of "
                     "this run; medians of %d." % (args.duration, args.warmup, args.wrk_cpu, args.delivery_rounds))
        lines.append("")
        lines.append("| sustained | endpoints | events/s in | deliveries/s out | out per endpoint/s | x bare (in) "
                     "| x bare (out per endpoint) | backlog start -> end | flat | drain s | p99 ms |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
        for k in fanout:
            ds = [d for d in sustained if d["endpoints"] == k]
            if not ds:
                continue
            i, o = med([d["in_rps"] for d in ds]), med([d["out_rps"] for d in ds])
            lines.append("| c64 | %d | %s | %s | %s | %s | %s | %s -> %s | %s | %.1f | %.2f |" % (
                k, fmt_int(i), fmt_int(o), fmt_int(o / k),
                "%.2f" % (i / bare64) if bare64 else "-", "%.2f" % (o / k / bare64) if bare64 else "-",
                fmt_int(med([d["pending0"] for d in ds])), fmt_int(med([d["pending1"] for d in ds])),
                "%d/%d rounds" % (sum(1 for d in ds if d["flat"]), len(ds)), med([d["drain_s"] for d in ds]),
                med([d["p99_us"] for d in ds]) / 1000))
            if not all(d["complete"] for d in ds):
                notes.append("sustained, %d endpoint(s): not everything delivered within %gs in %d round(s)"
                             % (k, args.drain_timeout, sum(1 for d in ds if not d["complete"])))
    if ordered:
        plain = med([d["out_rps"] for d in sustained if d["endpoints"] == 1]) if sustained else 0
        lines.append("")
        lines.append("Ordered delivery (2b.): the sustained load of part 2 into one endpoint ordered by key "
                     "(a key function: the tracking number's last three digits, 1,000 keys the events "
                     "cycle through) and with ordered = true (one FIFO); x unordered = deliveries/s out / "
                     "the 1-endpoint row above; medians of %d." % args.delivery_rounds)
        lines.append("")
        lines.append("| ordered | deliveries/s out | x unordered | backlog start -> end | flat |")
        lines.append("|---|---:|---:|---:|---|")
        for label, _ in ORDER_MODES:
            ds = [d for d in ordered if d["order"] == label]
            if not ds:
                continue
            o = med([d["out_rps"] for d in ds])
            lines.append("| %s | %s | %s | %s -> %s | %d/%d rounds |" % (
                label, fmt_int(o), "%.2f" % (o / plain) if plain else "-",
                fmt_int(med([d["pending0"] for d in ds])), fmt_int(med([d["pending1"] for d in ds])),
                sum(1 for d in ds if d["flat"]), len(ds)))
    if latencies:
        lines.append("")
        lines.append("End-to-end latency (3.): POST start -> the sink has read the delivery, at a steady rate "
                     "from one Python asyncio sender on keep-alive connections, requests signed beforehand "
                     "(core %s), %s sink (core %s); one run of the 1-endpoint config; Convoy reports p95 124 "
                     "ms at 200 events/s." % (args.wrk_cpu, latencies[0]["sink"], args.wrk_cpu))
        lines.append("")
        lines.append("| latency | events/s (sent) | seconds | p50 ms | p95 ms | p99 ms | max ms | delivered | missing "
                     "| failed | senders late ms |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for x in latencies:
            lines.append("| %s sink | %d (%.0f) | %d | %.1f | %.1f | %.1f | %.1f | %s | %d | %d | %.1f |" % (
                x["sink"], x["rate"], x["sent_rate"], x["seconds"], x["p50"], x["p95"], x["p99"], x["max"],
                fmt_int(x["delivered"]), x["missing"], x["failed"], x["sender_late_ms"]))
    w64, s64 = stat("waybill", 64, "rps"), stat("waybill-1m", 64, "rps")
    if s64 is not None or w64 is not None:
        lines.append("")
        lines.append("Scale (5.): the ingest load at c64 on an empty store (waybill above) vs a store holding "
                     "%s pending deliveries (waybill-1m, built by tests/bench/scale_store.py in %s, waybill "
                     "saw %s pending at start); RSS from /proc/PID/status after the c64 run: VmRSS (steady, "
                     "end of the run) and VmHWM (peak since start); medians." % (
                         fmt_int(args.scale_rows), "%.0f s" % scale_build if scale_build else "?",
                         fmt_int(med(scale_pending)) if scale_pending else "?"))
        lines.append("")
        lines.append("| scale | store | req/s c64 | x empty | x bare | p99 ms | RSS steady MiB | RSS peak MiB |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for n, label in (("waybill", "empty"), ("waybill-1m", "%s pending" % fmt_int(args.scale_rows))):
            rps = stat(n, 64, "rps")
            if rps is None:
                continue
            lines.append("| c64 | %s | %s | %s | %s | %.2f | %s | %s |" % (
                label, fmt_int(rps), "%.2f" % (rps / w64) if w64 else "-",
                "%.2f" % (rps / bare64) if bare64 else "-", stat(n, 64, "p99_us") / 1000,
                mib(stat(n, 64, "vmrss_kib")), mib(max([d.get("vmhwm_kib", 0) for d in results[(n, 64)]]))))
    old64 = stat("waybill-old", 64, "rps")
    if old64 is not None and w64 is not None:
        lines.append("")
        lines.append("Before/after (--old-bin %s, same config, same rounds): waybill / waybill-old req/s "
                     "%s at c64, %s at c8; CPU us/req %s vs %s at c64." % (
                         args.old_bin, "%.2f" % (w64 / old64),
                         "%.2f" % (stat("waybill", 8, "rps") / stat("waybill-old", 8, "rps"))
                         if stat("waybill-old", 8, "rps") and stat("waybill", 8, "rps") else "-",
                         "%.1f" % stat("waybill", 64, "cpu_us") if stat("waybill", 64, "cpu_us") else "?",
                         "%.1f" % stat("waybill-old", 64, "cpu_us") if stat("waybill-old", 64, "cpu_us") else "?"))
    wal_rows = []
    for n in servers:
        if not n.startswith("waybill"):
            continue
        for c in conns:
            wal, disk, st = stat(n, c, "wal_bytes"), stat(n, c, "disk_bytes"), stat(n, c, "stored_bytes")
            if wal is None and disk is None:
                continue
            wal_rows.append("| c%d | %s | %s | %s | %s | %s | %s |" % (
                c, n, "%.2f" % stat(n, c, "wal_frames") if wal is not None else "?",
                fmt_int(wal) if wal is not None else "?", fmt_int(st) if st else "-",
                "%.2f" % (wal / st) if wal is not None and st else "-", fmt_int(disk) if disk is not None else "?"))
    if wal_rows:
        lines.append("")
        lines.append("WAL bytes per event: pages the group commits appended to the write-ahead log "
                     "(waybill_store_wal_frames_total) x (page size + 24) per request; stored = the bytes "
                     "of the event row, its deliveries and batch items; disk = /proc/PID/io write_bytes per "
                     "request (the WAL and the checkpoints' copies into the database); medians.")
        lines.append("")
        lines.append("| WAL | server | pages/event | WAL bytes/event | stored bytes/event | WAL x stored "
                     "| disk bytes/event |")
        lines.append("|---|---|---:|---:|---:|---:|---:|")
        lines.extend(wal_rows)
    if phases:
        lines.append("")
        lines.append("CPU per request by phase (6.): waybill at c64 under `perf record --call-graph dwarf` "
                     "(-F 499), its CPU us/req split by perf's inclusive shares: HTTP = reading, parsing and "
                     "answering (core/httpd*.c, the kernel's socket work), verify = the signature, parse = "
                     "the adapter (JSON into Lua) and the headers' JSON, rules = routing, store = the event's "
                     "write, the group COMMIT, the sync and checkpoint threads.")
        lines.append("")
        lines.append("| phases | " + " | ".join(p[0] for p in phases["phases"]) + " | other | total |")
        lines.append("|---|" + "---:|" * (len(phases["phases"]) + 2))
        lines.append("| c64 us/req (%s req/s) | " % fmt_int(phases["rps"]) +
                     " | ".join("%.1f" % p[1] for p in phases["phases"]) +
                     " | %.1f | %.1f |" % (phases["other"], phases["cpu_us"]))
    d64 = stat("waybill-dash", 64, "rps")
    if d64 is not None and w64:
        lines.append("")
        lines.append("Dashboard (issue 17): the ingest load at c64 with three dashboard tabs open on Overview "
                     "(each its own session, GET /api/status and /api/endpoints every 1.5 s, /api/series every "
                     "10.5 s, as the page asks) "
                     "vs none; medians; the target is a cost under 2%.")
        lines.append("")
        lines.append("| dashboard | req/s c64 | x no tabs | cost | p99 ms |")
        lines.append("|---|---:|---:|---:|---:|")
        lines.append("| none | %s | 1.00 | - | %.2f |" % (fmt_int(w64), stat("waybill", 64, "p99_us") / 1000))
        lines.append("| 3 tabs | %s | %.3f | %.1f%% | %.2f |" % (
            fmt_int(d64), d64 / w64, 100.0 * (1 - d64 / w64), stat("waybill-dash", 64, "p99_us") / 1000))
        if WaybillDash.idle:
            base, tabs = WaybillDash.idle[0]
            lines.append("")
            lines.append("Without load, the gateway used %.1f ms of CPU per second alone and %.1f with the three "
                         "tabs: they take %.2f%% of its core, the share of a CPU-bound ingest they can cost "
                         "(steadier than the req/s ratio on a shared machine; one clock tick over the 10.5 s is "
                         "%.2f%%)." % (base, tabs, (tabs - base) / 10.0,
                                       100.0 / os.sysconf("SC_CLK_TCK") / 10.5))
    rules_line = bench_rules(args) if os.access(args.bin, os.X_OK) else None
    if rules_line:
        lines.append("")
        lines.append(rules_line)

    # issue 7's targets beside this run's figures (ratios from the same run)
    targets = []

    def target(what, want, got, ok):
        targets.append("| %s | %s | %s | %s |" % (what, want, got, "-" if ok is None else "yes" if ok else "no"))

    w64 = stat("waybill", 64, "rps")
    if w64 is not None and bare64:
        target("ingest c64 x bare", ">= 0.60", "%.2f" % (w64 / bare64), w64 / bare64 >= 0.6)
    for other, want in (("node", 3.0), ("webhook", 1.0)):
        o = stat(other, 64, "rps")
        if w64 is not None and o:
            target("ingest c64 x %s" % other, ">= %.1f" % want, "%.2f" % (w64 / o), w64 / o >= want)
    one = [d for d in sustained if d["endpoints"] == 1]
    if one and bare64:
        o = med([d["out_rps"] for d in one])
        flat = sum(1 for d in one if d["flat"])
        target("sustained, 1 endpoint: deliveries/s out x bare, backlog flat", ">= 0.30, flat",
               "%.2f, flat in %d/%d rounds" % (o / bare64, flat, len(one)),
               o / bare64 >= 0.3 and flat * 2 > len(one))
    if latencies:
        p99 = med([x["p99"] for x in latencies])
        target("end-to-end p99 at %d events/s" % args.latency_rate, "<= 10 ms", "%.1f ms" % p99, p99 <= 10)
    if rules_line and getattr(bench_rules, "us", None) is not None:
        target("rules, us/event (examples/)", "<= 5", "%.1f" % bench_rules.us, bench_rules.us <= 5)
    if s64 is not None and w64:
        target("ingest c64 with %s pending x empty store" % fmt_int(args.scale_rows), ">= 0.90",
               "%.2f" % (s64 / w64), s64 / w64 >= 0.9)
        peak = max([d.get("vmhwm_kib", 0) for d in results[("waybill-1m", 64)]])
        target("RSS peak with %s pending" % fmt_int(args.scale_rows), "<= 64 MiB", "%s MiB" % mib(peak),
               peak <= 64 * 1024)
    wal64, st64 = stat("waybill", 64, "wal_bytes"), stat("waybill", 64, "stored_bytes")
    if wal64 is not None and st64:
        target("WAL bytes per event x stored bytes, c64 (issue 16)", "<= 1.5", "%.2f" % (wal64 / st64),
               wal64 / st64 <= 1.5)
    cpu64 = stat("waybill", 64, "cpu_us")
    if cpu64 is not None:
        target("CPU us per request, c64 (issue 16)", "<= 46", "%.1f" % cpu64, cpu64 <= 46)
    if targets:
        lines.append("")
        lines.append("| target (issues 7, 16) | wanted | this run | met |")
        lines.append("|---|---|---|---|")
        lines.extend(targets)
    if notes:
        lines.append("")
        lines.extend("- " + x for x in notes)
    lines.append("")
    lines.append("## Every round")
    lines.append("")
    lines.append("| server | conns | round | req/s | p50 ms | p99 ms | CPU us/req | RSS MiB (peak) | non-2xx "
                 "| socket errors |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in servers:
        for c in conns:
            for i, d in enumerate(results.get((n, c), []), 1):
                lines.append("| %s | %d | %d | %s | %.2f | %.2f | %s | %s | %d | %d |" % (
                    n, c, i, fmt_int(d["rps"]), d["p50_us"] / 1000, d["p99_us"] / 1000,
                    "%.1f" % d["cpu_us"] if "cpu_us" in d else "?",
                    "%s (%s)" % (mib(d["vmrss_kib"]), mib(d["vmhwm_kib"])) if "vmrss_kib" in d else "-",
                    d["non2xx"], d["sockerr"]))
    if sustained:
        lines.append("")
        lines.append("(delivered may exceed expected by up to 64 per endpoint: requests in flight when wrk "
                     "stops are stored and delivered, but wrk does not count them)")
        lines.append("")
        lines.append("| sustained | endpoints | round | events/s in | deliveries/s out | backlog start -> end | flat "
                     "| drain s | delivered / expected | non-2xx |")
        lines.append("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        for d in sustained:
            lines.append("| c64 | %d | %d | %s | %s | %s -> %s | %s | %.1f | %s / %s | %d |" % (
                d["endpoints"], d["round"], fmt_int(d["in_rps"]), fmt_int(d["out_rps"]), fmt_int(d["pending0"]),
                fmt_int(d["pending1"]), "yes" if d["flat"] else "no", d["drain_s"], fmt_int(d["delivered"]),
                fmt_int(d["want"]), d["non2xx"]))
    lines.append("")
    elapsed = time.monotonic() - started
    lines.append("(%.0f s)" % elapsed)

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    # the tables and the one-line summaries on stdout
    table_end = lines.index("## Every round")
    print("\n".join(lines[2:table_end]).rstrip())
    print("(written to %s; %.0f s)" % (os.path.relpath(args.out, os.getcwd()), elapsed))
    return 0


def _interrupted(*_):
    raise KeyboardInterrupt


def _clean_up():
    """After INT/TERM: stop every server still running and remove the stores
    (the scale store is ~2 GiB) unless --keep."""
    for s in list(_LIVE):
        try:
            s.stop()
        except Exception:  # noqa: BLE001 - go on with the others
            pass
    if "--keep" not in sys.argv:
        for d in _DIRS:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        log("bench: interrupted; stopping the servers and removing their stores")
        _clean_up()
        sys.exit(130)
