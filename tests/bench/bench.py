#!/usr/bin/env python3
"""bench.py -- waybill's ingest benchmark beside its baselines, in one run.

Run by tests/bench/run.sh (which installs wrk/webhook and builds the bare
server). For each of --rounds rounds, interleaved (A B C D, A B C D, ...),
each server is started pinned to core 0 (`taskset -c 0`), warmed up, then
measured with `wrk -t1 -c64` and `-c8` pinned to core 1 (`taskset -c 1`)
using tests/bench/ingest.lua (a new signed ~600-byte atoship event per
request). Servers:

  waybill   ./waybill serve: atoship source, one endpoint `enabled = false`
            (a bare server on core 1 stands behind it in case deliveries do
            go out), rules sending everything to it, a fresh store per round
  bare      tests/bench/out/bare_server: libevent evhttp answering 200
  webhook   Debian's webhook (adnanh): payload-hmac-sha256 rule on
            X-Atoship-Signature, no command (answers, stores nothing)
  node      the seed-002 Express receiver (tests/integration/sinks/
            xsignature.js, SINK_QUIET=1): raw body, HMAC, timingSafeEqual

Then, with waybill's endpoint enabled (--delivery-rounds, default 1):
delivery throughput (wrk -c64 ingest into a waybill delivering to a counting
bare server, then the time to drain) and end-to-end latency ingest -> sink at
a steady 1,000 events/s (Python senders on keep-alive connections, Python sink; Convoy's published figure is
p95 124 ms at 200 events/s).

Prints a table of medians with ratios to the bare server and writes it, with
every round's numbers, to tests/bench/out/results.md. Exits 0 whatever the
numbers (1 only on a usage error).
"""

import argparse
import json
import re
import os
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import http.client
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import wb  # noqa: E402  (signing helpers, events, free_port)

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
    name = "waybill"
    deliver_to = None  # None: endpoint disabled (ingest bench); else a URL deliveries go to

    def available(self):
        return None if os.access(self.args.bin, os.X_OK) else "%s not built" % self.args.bin

    def prepare(self):
        self.admin_port = wb.free_port()
        # Where deliveries would go if `enabled = false` were not honoured:
        # a bare server on the load generator's core, never measured.
        sink_port = wb.free_port()
        if self.deliver_to:
            url, enabled = self.deliver_to, "true"
        else:
            url, enabled = "http://127.0.0.1:%d/" % sink_port, "false"
        if not self.deliver_to and os.access(self.args.bare, os.X_OK):
            self.extra.append(subprocess.Popen(["taskset", "-c", self.args.wrk_cpu, self.args.bare, str(sink_port)],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        os.makedirs(os.path.join(self.tmp, "rules"))
        with open(os.path.join(self.tmp, "rules", "10-all.lua"), "w") as f:
            f.write('on("*", {"sink"})\n')
        with open(os.path.join(self.tmp, "waybill.lua"), "w") as f:
            f.write('listen = "127.0.0.1:%d"\n' % self.port)
            f.write('admin = { listen = "127.0.0.1:%d", token = "%s" }\n' % (self.admin_port, ADMIN_TOKEN))
            f.write('store = "%s"\n' % self.args.store)
            f.write('allow_private = { "127.0.0.0/8" }\n')
            f.write('source "atoship" { verify = "atoship", secret = "%s" }\n' % SECRET)
            f.write('endpoint "sink" { url = "%s", secret = "whsec_YmVuY2gtc2VjcmV0LWZvci13YXliaWxs", '
                    'sign = "standard", enabled = %s }\n' % (url, enabled))
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


def run_wrk(args, server, conns, duration):
    env = dict(os.environ)
    env.update({"WB_SECRET": SECRET, "WB_SIG_HEADER": server.sig_header, "WB_PATH": server.path})
    cmd = ["taskset", "-c", args.wrk_cpu, "wrk", "-t1", "-c%d" % conns, "-d%ds" % duration, "--latency",
           "--timeout", "10s", "-s", os.path.join(HERE, "ingest.lua"), "http://127.0.0.1:%d%s" % (server.port, server.path)]
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
            return d
    raise RuntimeError("wrk gave no result (exit %s): %s %s" % (r.returncode, r.stdout[-500:], r.stderr[-500:]))


def bare_count(port):
    return int(wb.http_request(port, "GET", "/_count", timeout=5).body)


def bench_delivery(args, duration):
    """Delivery throughput: wrk -c64 ingests for `duration` s into a waybill
    whose endpoint is a counting bare server (on the load generator's core);
    then wait until every accepted event has been delivered."""
    sink_port = wb.free_port()
    sink = subprocess.Popen(["taskset", "-c", args.wrk_cpu, args.bare, str(sink_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = Waybill(args)
    s.deliver_to = "http://127.0.0.1:%d/deliveries" % sink_port
    try:
        wb.wait_for(lambda: port_open(sink_port), 5)
        s.start()
        base = bare_count(sink_port)  # start() sent one event
        t0 = time.monotonic()
        d = run_wrk(args, s, 64, duration)
        t_ingest = time.monotonic() - t0
        accepted = d["requests"] - d["non2xx"]
        deadline = time.monotonic() + args.drain_timeout
        got = 0
        while time.monotonic() < deadline:
            got = bare_count(sink_port) - base
            if got >= accepted:
                break
            time.sleep(0.05)
        t_all = time.monotonic() - t0
        return {"ingest_rps": d["rps"], "accepted": accepted, "delivered": got,
                "drain_s": max(0.0, t_all - t_ingest), "deliver_rps": got / t_all if t_all else 0,
                "complete": got >= accepted}
    finally:
        s.stop()
        sink.terminate()
        sink.wait()


def bench_latency(args, rate, seconds):
    """End-to-end latency ingest -> sink at a steady `rate` events/s: each
    event's time from the start of its POST to its arrival at a Python sink."""
    sink = wb.Sink()
    s = Waybill(args)
    s.deliver_to = sink.url
    try:
        s.start()
        sink.wait_for_count(1, 10)  # the start-up check's event
        skip = sink.count
        sent = {}
        n = int(rate * seconds)
        t_begin = time.monotonic() + 0.2
        lock = threading.Lock()
        nthreads = max(1, min(8, rate // 150))  # each sender keeps one keep-alive connection

        def sender(k):
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
            for i in range(k, n, nthreads):
                delay = t_begin + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                body = wb.atoship_event("tracking.in_transit", order_id="order_lat_%06d" % i)
                t = time.time()
                try:
                    conn.request("POST", s.path, body, {"Content-Type": "application/json",
                                                        s.sig_header: wb.sign_hex(SECRET, body)})
                    r = conn.getresponse()
                    r.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
                    continue
                if r.status == 200:
                    with lock:
                        sent["order_lat_%06d" % i] = t
            conn.close()

        threads = [threading.Thread(target=sender, args=(k,)) for k in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            sink.wait_for_count(skip + len(sent), 30)
        except AssertionError:
            pass
        lat = []
        for req in sink.requests[skip:]:
            try:
                oid = req.json()["data"]["order_id"]
            except (ValueError, KeyError, TypeError):
                continue
            if oid in sent:
                lat.append((req.time - sent.pop(oid)) * 1000)
        lat.sort()

        def pct(p):
            return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")

        return {"rate": rate, "events": n, "delivered": len(lat), "missing": len(sent),
                "p50": pct(50), "p95": pct(95), "p99": pct(99), "max": lat[-1] if lat else float("nan")}
    finally:
        s.stop()
        sink.stop()


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
    return line


def main():
    ap = argparse.ArgumentParser(description="waybill ingest benchmark")
    ap.add_argument("--bin", default=os.path.join(ROOT, "waybill"))
    ap.add_argument("--bare", default=os.path.join(HERE, "out", "bare_server"))
    ap.add_argument("--servers", default="waybill,bare,webhook,node")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of wrk before measuring")
    ap.add_argument("--conns", default="64,8")
    ap.add_argument("--store", default="sqlite:waybill.db", help="waybill's store setting")
    ap.add_argument("--server-cpu", default="0")
    ap.add_argument("--wrk-cpu", default="1")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "results.md"))
    ap.add_argument("--keep", action="store_true", help="keep the servers' temp dirs")
    ap.add_argument("--delivery-rounds", type=int, default=1,
                    help="rounds of the delivery benchmarks (throughput, end-to-end latency); 0 = none")
    ap.add_argument("--latency-rate", type=int, default=1000, help="events/s for the end-to-end latency run")
    ap.add_argument("--latency-seconds", type=int, default=5)
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    args = ap.parse_args()
    args.bin = os.path.abspath(args.bin)
    args.bare = os.path.abspath(args.bare)
    conns = [int(c) for c in args.conns.split(",")]
    kinds = {"waybill": Waybill, "bare": Bare, "webhook": Webhook, "node": Node}
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
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
    for rnd in range(1, args.rounds + 1):
        for n in servers:
            if n in broken:
                continue
            s = kinds[n](args)
            try:
                s.start()
                if args.warmup:
                    run_wrk(args, s, max(conns), args.warmup)
                for c in conns:
                    d = run_wrk(args, s, c, args.duration)
                    results.setdefault((n, c), []).append(d)
                    log("bench: round %d %-8s c%-3d %9s req/s  p50 %6.2f ms  p99 %7.2f ms  cpu %6s us/req%s"
                        % (rnd, n, c, fmt_int(d["rps"]), d["p50_us"] / 1000, d["p99_us"] / 1000,
                           "%.1f" % d["cpu_us"] if "cpu_us" in d else "?",
                           "  (%d non-2xx)" % d["non2xx"] if d["non2xx"] else ""))
            except Exception as e:  # noqa: BLE001 - report, go on with the others
                broken[n] = str(e)
                log("bench: %s failed: %s" % (n, e))
                notes.append("%s: failed in round %d: %s" % (n, rnd, str(e).splitlines()[0][:300]))
            finally:
                s.stop()
    deliveries, latencies = [], []
    if "waybill" in servers and "waybill" not in broken:
        for rnd in range(1, args.delivery_rounds + 1):
            try:
                d = bench_delivery(args, args.duration)
                deliveries.append(d)
                log("bench: delivery round %d: %s accepted at %s req/s, %s delivered, %.1f s to drain%s"
                    % (rnd, fmt_int(d["accepted"]), fmt_int(d["ingest_rps"]), fmt_int(d["delivered"]),
                       d["drain_s"], "" if d["complete"] else " (INCOMPLETE)"))
            except Exception as e:  # noqa: BLE001
                notes.append("delivery throughput: failed: %s" % str(e).splitlines()[0][:300])
                log("bench: delivery failed: %s" % e)
            try:
                lt = bench_latency(args, args.latency_rate, args.latency_seconds)
                latencies.append(lt)
                log("bench: latency round %d: %d ev/s, p50 %.1f ms p95 %.1f ms p99 %.1f ms, %d missing"
                    % (rnd, lt["rate"], lt["p50"], lt["p95"], lt["p99"], lt["missing"]))
            except Exception as e:  # noqa: BLE001
                notes.append("end-to-end latency: failed: %s" % str(e).splitlines()[0][:300])
                log("bench: latency failed: %s" % e)
    elapsed = time.monotonic() - started

    def stat(n, c, key):
        vals = [d[key] for d in results.get((n, c), []) if key in d]
        return med(vals)

    lines = []
    lines.append("# waybill ingest benchmark")
    lines.append("")
    lines.append("%s; %s; %d round(s) interleaved, wrk -t1 -d%ds --latency (core %s), servers on core %s; "
                 "signed ~606-byte atoship events, a new id per request; waybill store `%s`; medians."
                 % (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), os.uname().nodename, args.rounds,
                    args.duration, args.wrk_cpu, args.server_cpu, args.store))
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
    if deliveries:
        lines.append("")
        lines.append("delivery (endpoint enabled, a counting bare server as the sink, sign standard; "
                     "wrk -c64 for %ds, then until drained; medians of %d):" % (args.duration, len(deliveries)))
        lines.append("ingest while delivering %s req/s | delivered %s events/s overall | drain %.1f s after "
                     "ingest ended%s" % (
                         fmt_int(med([d["ingest_rps"] for d in deliveries])),
                         fmt_int(med([d["deliver_rps"] for d in deliveries])),
                         med([d["drain_s"] for d in deliveries]),
                         "" if all(d["complete"] for d in deliveries) else
                         " | INCOMPLETE: %s of %s delivered within %gs" % (
                             fmt_int(deliveries[-1]["delivered"]), fmt_int(deliveries[-1]["accepted"]),
                             args.drain_timeout)))
    if latencies:
        lines.append("end-to-end ingest -> sink at %d events/s for %ds (Python sink): p50 %.1f ms p95 %.1f ms "
                     "p99 %.1f ms max %.1f ms, %d missing (Convoy reports p95 124 ms at 200 events/s)" % (
                         args.latency_rate, args.latency_seconds, med([x["p50"] for x in latencies]),
                         med([x["p95"] for x in latencies]), med([x["p99"] for x in latencies]),
                         med([x["max"] for x in latencies]), sum(x["missing"] for x in latencies)))
    rules_line = bench_rules(args) if os.access(args.bin, os.X_OK) else None
    if rules_line:
        lines.append(rules_line)
    if notes:
        lines.append("")
        lines.extend("- " + x for x in notes)
    lines.append("")
    lines.append("## Every round")
    lines.append("")
    lines.append("| server | conns | round | req/s | p50 ms | p99 ms | CPU us/req | non-2xx | socket errors |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in servers:
        for c in conns:
            for i, d in enumerate(results.get((n, c), []), 1):
                lines.append("| %s | %d | %d | %s | %.2f | %.2f | %s | %d | %d |" % (
                    n, c, i, fmt_int(d["rps"]), d["p50_us"] / 1000, d["p99_us"] / 1000,
                    "%.1f" % d["cpu_us"] if "cpu_us" in d else "?", d["non2xx"], d["sockerr"]))
    lines.append("")
    lines.append("(%.0f s)" % elapsed)

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    # the table and the one-line summaries on stdout
    table_end = lines.index("## Every round")
    print("\n".join(lines[2:table_end]).rstrip())
    print("(written to %s; %.0f s)" % (os.path.relpath(args.out, os.getcwd()), elapsed))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
