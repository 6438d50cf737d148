"""common.py -- what every torture scenario shares (stdlib only).

A scenario is a function `run(short) -> Row` in tests/torture/sc_*.py; it
drives the real ./waybill (through tests/integration/wb.py) with real
receivers on 127.0.0.1 and fills one Row: what it sent, what was
acknowledged (200), what is lost (acknowledged but not stored or not
delivered), what arrived twice, how long recovery took, its verdict, and
notes with its own figures. torture.py runs the scenarios and prints the
table."""

import http.client
import http.server
import json
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import wb  # noqa: E402

SECRET = "torture-secret"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Skip(Exception):
    """A scenario that cannot run here (e.g. not root): the row says why."""


class Row:
    def __init__(self, name):
        self.name = name
        self.sent = None
        self.acked = None
        self.lost = None
        self.dup = None
        self.recovery = None  # seconds, or None
        self.verdict = None  # "pass", "FAIL", "skip"
        self.failures = []  # why it failed (each a line)
        self.notes = []
        self.secs = 0.0

    def check(self, cond, why):
        """A condition of the scenario's verdict; a false one is noted."""
        if not cond:
            self.failures.append(why)
        return cond

    def note(self, text):
        self.notes.append(text)

    def done(self):
        if self.verdict is None:
            if self.lost:
                self.failures.insert(0, "%d acknowledged event(s) lost" % self.lost)
            self.verdict = "FAIL" if self.failures else "pass"
        return self


def _cell(v, fmt="%d"):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return fmt % v


def table(rows):
    """The one table, as Markdown (also readable on a terminal)."""
    head = ["scenario", "sent", "acked", "lost", "duplicated", "recovery", "verdict", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        rec = "-" if r.recovery is None else ("%.2f s" if r.recovery < 1 else "%.1f s") % r.recovery
        notes = "; ".join(r.notes)
        if r.failures:
            notes = "FAILED: " + "; ".join(r.failures) + ("; " + notes if notes else "")
        lines.append("| " + " | ".join([r.name, _cell(r.sent), _cell(r.acked), _cell(r.lost), _cell(r.dup),
                                        rec, r.verdict, notes.replace("|", "/")]) + " |")
    return "\n".join(lines)


def pct(values, p):
    """The p-th percentile (nearest rank) of values, or None."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def ms(x):
    return "-" if x is None else "%.1f ms" % (x * 1000)


# --------------------------------------------------------------------------
# The gateway, configured the torture way
# --------------------------------------------------------------------------

def gateway(endpoints, rules, env=None, store="sqlite:waybill.db", extra="", **settings):
    """A started wb.Gateway with source "atoship" and the given endpoints
    ({name: options text after `url = ...`}, url first) and one rules file."""
    lines = ['source "atoship" { verify = "atoship", secret = %s }' % wb.lua(SECRET)]
    for name, (url, opts) in endpoints.items():
        lines.append('endpoint %s { url = %s%s }' % (wb.lua(name), wb.lua(url), (", " + opts) if opts else ""))
    lines.append('rules "rules/"')
    cfg = wb.config("\n".join(lines) + "\n" + extra, store=store, **settings)
    return wb.Gateway(cfg, env=env, files={"rules/10.lua": rules})


def event():
    """A fresh signed atoship event: (carrier id, body, headers)."""
    body = wb.atoship_event("tracking.in_transit")
    return json.loads(body)["id"], body, wb.atoship_headers(SECRET, body)


def stored_source_ids(g, db=None):
    """source_id of every event in the gateway's store, read with sqlite3
    from a copy of the database and its WAL (the live file is not touched)."""
    d = tempfile.mkdtemp(prefix="wb-torture-copy-")
    try:
        src = db or g.path("waybill.db")
        for suffix in ("", "-wal"):
            if os.path.exists(src + suffix):
                shutil.copyfile(src + suffix, os.path.join(d, "c.db" + suffix))
        db = sqlite3.connect(os.path.join(d, "c.db"))
        try:
            return [r[0] for r in db.execute("SELECT source_id FROM events")]
        finally:
            db.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def dead_letters(g, db=None):
    """source_id of the events with a delivery in status failed (a dead
    letter), read from a copy of the store."""
    d = tempfile.mkdtemp(prefix="wb-torture-copy-")
    try:
        src = db or g.path("waybill.db")
        for suffix in ("", "-wal"):
            if os.path.exists(src + suffix):
                shutil.copyfile(src + suffix, os.path.join(d, "c.db" + suffix))
        conn = sqlite3.connect(os.path.join(d, "c.db"))
        try:
            return [r[0] for r in conn.execute("SELECT e.source_id FROM deliveries d JOIN events e"
                                               " ON e.id = d.event_id WHERE d.status = 'failed'")]
        finally:
            conn.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def proc_stats(pid):
    """(VmRSS KiB, VmHWM KiB, open fds, threads) of a process."""
    rss = hwm = thr = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
            elif line.startswith("Threads:"):
                thr = int(line.split()[1])
    fds = len(os.listdir("/proc/%d/fd" % pid))
    return rss, hwm, fds, thr


# --------------------------------------------------------------------------
# Load: carriers posting signed events
# --------------------------------------------------------------------------

class Load:
    """Threads posting fresh signed events to the gateway on keep-alive
    connections. rate: events/s in all (None: as fast as answered).
    retry: a carrier that retries the same event (same id) until it gets a
    200 (connection errors, 503), as carriers do. Records every answer's
    status, the acknowledged ids and the latency of each 200."""

    def __init__(self, port, threads=2, rate=None, retry=False, path="/hooks/atoship", make=None):
        self.port, self.rate, self.retry, self.path = port, rate, retry, path
        self.make = make or event
        self.sent_ids = []  # distinct events attempted
        self.acked = []  # carrier ids answered 200
        self.lat = []  # (monotonic time of the answer, seconds) of each 200
        self.sent_at = {}  # carrier id -> monotonic time its acknowledged request was sent
        self.wid = {}  # carrier id -> waybill's event id (from the 200's body)
        self.statuses = {}  # status (or "error") -> count
        self.other = []  # (status, body) of answers other than 200 (first 20)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i, threads), daemon=True)
                         for i in range(threads)]
        self.t0 = time.monotonic()
        for t in self._threads:
            t.start()

    def _count(self, key, body=None):
        with self._lock:
            self.statuses[key] = self.statuses.get(key, 0) + 1
            if key != 200 and len(self.other) < 20:
                self.other.append((key, (body or b"")[:200]))

    def _loop(self, i, n):
        conn = None
        k = 0
        while not self._stop.is_set():
            if self.rate:
                due = self.t0 + (k * n + i) / float(self.rate)
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            k += 1
            cid, body, headers = self.make()
            first = True
            while not self._stop.is_set():
                if first:
                    with self._lock:
                        self.sent_ids.append(cid)
                    first = False
                t0 = time.monotonic()
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    conn.request("POST", self.path, body, headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    if resp.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException):
                    if conn is not None:
                        conn.close()
                    conn = None
                    self._count("error")
                    if not self.retry:
                        break
                    time.sleep(0.02)
                    continue
                t1 = time.monotonic()
                self._count(resp.status, data)
                if resp.status == 200:
                    with self._lock:
                        self.acked.append(cid)
                        self.lat.append((t1, t1 - t0))
                        self.sent_at[cid] = t0
                        try:
                            self.wid[cid] = json.loads(data)["id"]
                        except (ValueError, KeyError, TypeError):
                            pass
                    break
                if not self.retry:
                    break
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return self

    def latencies(self, since=None, until=None):
        with self._lock:
            return [d for t, d in self.lat if (since is None or t >= since) and (until is None or t < until)]


# --------------------------------------------------------------------------
# Counting sink: records (source_id, delivery id) of each request, nothing more
# --------------------------------------------------------------------------

class _CountHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def do_POST(self):
        sink = self.server.sink
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        status = sink.answer()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        with sink.lock:
            sink.total += 1
            if status == 200:
                sink.record(doc, self.headers.get("X-Waybill-Delivery"), time.monotonic())
            else:
                sink.refused += 1
        out = b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


class _CountServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        pass


class CountingSink:
    """A receiver keeping only what the counts need: for each 2xx answer,
    the event's source_id (key "source_id" of the payload, or each batch
    item's "id"), the X-Waybill-Delivery id and when it arrived. fail: the
    share of requests answered 500 (every n-th, deterministic)."""

    def __init__(self, fail=0.0, on_doc=None):
        self.lock = threading.Lock()
        self.on_doc = on_doc  # called with each 2xx payload (under the lock)
        self.fail = fail
        self._n = 0
        self.total = 0
        self.refused = 0
        self.ids = {}  # source_id -> times received
        self.deliveries = {}  # X-Waybill-Delivery -> times received
        self.first_seen = {}  # source_id -> monotonic time of its first arrival
        self.batches = []  # batch documents (type "batch")
        self._server = _CountServer(("127.0.0.1", 0), _CountHandler)
        self._server.sink = self
        self.port = self._server.server_address[1]
        self.url = "http://127.0.0.1:%d/hook" % self.port
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        wb._register(self)

    def answer(self):
        with self.lock:
            self._n += 1
            if self.fail and (self._n % int(round(1 / self.fail))) == 0:
                return 500
        return 200

    def record(self, doc, delivery, now):
        if delivery:
            self.deliveries[delivery] = self.deliveries.get(delivery, 0) + 1
        if self.on_doc:
            self.on_doc(doc)
        if isinstance(doc, dict) and doc.get("type") == "batch":
            self.batches.append(doc)
            return
        sid = doc.get("source_id") if isinstance(doc, dict) else None
        if sid:
            self.ids[sid] = self.ids.get(sid, 0) + 1
            self.first_seen.setdefault(sid, now)

    def missing(self, acked):
        with self.lock:
            return [a for a in acked if a not in self.ids]

    def delivery_latencies(self, sent_at, ids):
        """Seconds from each id's request to its first arrival here."""
        with self.lock:
            return [max(0.0, self.first_seen[i] - sent_at[i]) for i in ids if i in self.first_seen and i in sent_at]

    def duplicates(self):
        """Deliveries received (2xx) more than once, by X-Waybill-Delivery."""
        with self.lock:
            return sum(n - 1 for n in self.deliveries.values() if n > 1)

    def wait_all(self, acked, timeout):
        """Wait until every acked id arrived; returns the ones still missing."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.missing(acked)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    def _cleanup(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        return []


def raise_nofile(n=None):
    """Raise this process's RLIMIT_NOFILE (soft to the hard limit or n);
    the gateways it starts inherit it."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if n is None else min(n, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_tcp_listener():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(512)
    return s
