"""schedsink.py -- receivers and a sender for the scheduler tests (stdlib only).

The scheduler tests put thousands of deliveries a second on several
receivers at once, some of them slow or hanging. wb.Sink (a thread per
connection, time.sleep for a delay) would itself become the bottleneck the
tests measure, so here every receiver is an asyncio server on ONE event loop
in a background thread: a delay is a timer, a hanging answer is a connection
left alone, and no receiver's delay holds up another's answers.

A request's `mono` is when its bytes reached this host: the kernel's receive
stamp (SO_TIMESTAMPNS, read with recvmsg), not the time the shared loop got
to it. Under load the loop (and the GIL it shares with the test's posting
threads) can stall for tens of milliseconds, and requests that arrived
spread out would be stamped together: rates measured on loop time would
count what a stall bunched up, not what the gateway sent.

    sink = schedsink.Sink(statuses=[500], default=200)        # 500 once, then 200
    slow = schedsink.Sink(delay=0.2)                            # every answer after 200 ms
    hang = schedsink.Sink(behaviour=lambda req: schedsink.HANG) # reads, never answers
    flaky = schedsink.Sink(behaviour=lambda req: 500 if req.n % 10 == 0 else 200)
    ...
    sink.wait_for(lambda s: s.ok_count() >= 600, timeout=10)
    sink.first_successes()   # source ids in the order of their first 2xx answer

A behaviour is called on the loop thread with the Request and returns a
status, (status, delay_seconds), or HANG. Receivers register with wb's
cleanup registry, so wb.cleanup() (the runner, after every test) stops them.

Poster: one carrier client on a keep-alive connection posting signed atoship
events one after the other; like a carrier it sends the same body again when
the gateway is down or answers 503, until it gets 200.
"""

import asyncio
import http.client
import json
import re
import socket
import struct
import threading
import time

import wb

HANG = object()  # a behaviour's answer: read the request, never answer it

_SOURCE_ID = re.compile(rb'"source_id":"([^"]*)"')


class _Loop:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True, name="schedsink-loop")
        self.thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro, timeout=10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn, *args):
        self.loop.call_soon_threadsafe(fn, *args)


_loop = None
_loop_lock = threading.Lock()


def _the_loop():
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = _Loop()
        return _loop


class Request:
    """A request a receiver got. reply: the status answered, None while
    unanswered (hanging, or the client went away first)."""

    __slots__ = ("n", "mono", "time", "method", "path", "headers", "body", "reply", "done", "abandoned")

    def __init__(self, n, mono, method, path, headers, body):
        self.n = n
        self.mono = mono  # when it reached this host (the kernel's stamp), monotonic clock
        self.time = mono + (time.time() - time.monotonic())
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.reply = None
        self.done = None  # monotonic time of the answer
        self.abandoned = False  # the client closed the connection before an answer

    @property
    def attempt(self):
        return int(self.headers.get("x-waybill-attempt", "0") or 0)

    @property
    def delivery(self):
        return self.headers.get("x-waybill-delivery")

    @property
    def source_id(self):
        m = _SOURCE_ID.search(self.body)
        return m.group(1).decode() if m else None

    @property
    def ok(self):
        return self.reply is not None and 200 <= self.reply <= 299

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<Request #%d %s attempt %s -> %s>" % (self.n, self.source_id, self.attempt, self.reply)


# Linux: the kernel stamps each received segment (CLOCK_REALTIME) when it is
# asked to; recvmsg hands the stamp back as SCM_TIMESTAMPNS (== SO_TIMESTAMPNS).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TS_SPACE = socket.CMSG_SPACE(16)  # struct timespec
_READ = 65536


def _arrival(ancdata):
    """The kernel's receive stamp of what recvmsg returned, on the monotonic
    clock (None without one): when the bytes reached this host, however late
    the loop got to them."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return sec + nsec / 1e9 - (time.time() - time.monotonic())
    return None


class _Conn:
    """One accepted connection, read with recvmsg so that each request
    carries the kernel's arrival stamp, not the time the loop parsed it
    (the loop is shared by every receiver of the test and may lag)."""

    def __init__(self, sink, sock):
        self.sink = sink
        self.sock = sock
        self.buf = bytearray()
        self.at = None  # arrival of buf's first byte (monotonic)
        self.out = bytearray()  # answer bytes the socket did not take yet
        self.busy = None  # the request waiting for its answer (HTTP/1.1: one at a time)
        self.open = True
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass
        sink._conns.add(self)
        sink.connections += 1
        sink._loop.loop.add_reader(sock.fileno(), self._readable)

    def _readable(self):
        try:
            data, anc, _, _ = self.sock.recvmsg(_READ, _TS_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, anc = b"", []
        if not data:
            self._close()
            return
        if not self.buf:
            at = _arrival(anc)
            self.at = at if at is not None else time.monotonic()
        self.buf += data
        if self.busy is None:
            self._parse()

    def _parse(self):
        while self.busy is None and self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, path, _ = lines[0].split(" ", 2)
            except ValueError:
                self._close()
                return
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                raise AssertionError("schedsink: chunked request bodies are not supported")
            n = int(headers.get("content-length") or 0)
            if len(self.buf) < end + 4 + n:
                return
            body = bytes(self.buf[end + 4:end + 4 + n])
            del self.buf[:end + 4 + n]
            at = self.at
            self.at = time.monotonic() if self.buf else None  # a pipelined next one: no better stamp
            self.sink._on_request(self, at, method, path, headers, body)

    def respond(self, req, status):
        if self.busy is not req:
            return  # the connection is gone (counted in _close)
        self.busy = None
        req.reply = status
        req.done = time.monotonic()
        self.sink._inflight -= 1
        if self.open:
            self.out += b"HTTP/1.1 %d X\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok" % status
            self._writable()
        self._parse()

    def _writable(self):
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._close()
            return
        del self.out[:n]
        loop = self.sink._loop.loop
        if self.out:
            loop.add_writer(self.sock.fileno(), self._writable)
        else:
            loop.remove_writer(self.sock.fileno())

    def _close(self):
        if not self.open:
            return
        self.open = False
        loop = self.sink._loop.loop
        loop.remove_reader(self.sock.fileno())
        loop.remove_writer(self.sock.fileno())
        self.sock.close()
        self.sink._conns.discard(self)
        if self.busy is not None:
            self.busy.abandoned = True
            self.busy.done = time.monotonic()
            self.busy = None
            self.sink._inflight -= 1


class Sink:
    """An HTTP receiver on 127.0.0.1 (see the module docstring).

    statuses: answers in order, then `default`; delay: seconds before every
    answer; behaviour: function(Request) -> status | (status, delay) | HANG,
    used instead of statuses/default/delay when given."""

    def __init__(self, statuses=None, default=200, delay=0.0, behaviour=None, name="sink", path="/hook"):
        self.name = name
        self.requests = []
        self.connections = 0  # accepted, ever
        self.max_inflight = 0
        self._inflight = 0
        self._conns = set()
        self._path = path
        self.set(statuses, default, delay, behaviour)
        self._loop = _the_loop()
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(1024)
        self._server.setblocking(False)
        self.port = self._server.getsockname()[1]

        async def start():
            self._loop.loop.add_reader(self._server.fileno(), self._accept, self._server)

        self._loop.run(start())
        wb._register(self)

    def set(self, statuses=None, default=200, delay=0.0, behaviour=None):
        """Program the answers from now on (requests already hanging stay so)."""
        self._statuses = list(statuses or [])
        self._default = default
        self._delay = delay
        self._behaviour = behaviour

    def _decide(self, req):
        if self._behaviour is not None:
            return self._behaviour(req)
        status = self._statuses.pop(0) if self._statuses else self._default
        return (status, self._delay) if self._delay else status

    def _accept(self, server):  # on the loop thread
        while self._server is server:
            try:
                sock, _ = server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            _Conn(self, sock)

    def _on_request(self, conn, mono, method, path, headers, body):  # on the loop thread
        req = Request(len(self.requests) + 1, mono, method, path, headers, body)
        self.requests.append(req)
        self._inflight += 1
        if self._inflight > self.max_inflight:
            self.max_inflight = self._inflight
        conn.busy = req
        try:
            spec = self._decide(req)
        except Exception:  # a broken behaviour answers 599, visibly
            spec = 599
        if spec is HANG:
            return
        status, delay = spec if isinstance(spec, tuple) else (spec, 0.0)
        if delay and delay > 0:
            self._loop.loop.call_later(delay, conn.respond, req, status)
        else:
            conn.respond(req, status)

    # -- what the receiver saw (safe to call from the test's thread) --------
    @property
    def url(self):
        return "http://127.0.0.1:%d%s" % (self.port, self._path)

    @property
    def count(self):
        return len(self.requests)

    @property
    def inflight(self):
        return self._inflight

    def snapshot(self):
        return list(self.requests)

    def ok_requests(self):
        return [r for r in list(self.requests) if r.ok]

    def ok_count(self):
        return sum(1 for r in list(self.requests) if r.ok)

    def first_successes(self):
        """Source ids in the order of their first 2xx answer (duplicates dropped)."""
        seen, out = set(), []
        for r in list(self.requests):
            if r.ok:
                sid = r.source_id
                if sid not in seen:
                    seen.add(sid)
                    out.append(sid)
        return out

    def delivered_ids(self):
        return {r.source_id for r in list(self.requests) if r.ok}

    def wait_for(self, predicate, timeout=5.0, message=None):
        """Poll predicate(self) until true; AssertionError on timeout."""
        return wb.wait_for(lambda: predicate(self), timeout, 0.02,
                           message or "%s: condition on %d requests" % (self.name, self.count))

    # -- life ---------------------------------------------------------------
    def stop(self):
        if self._server is None:
            return
        server, self._server = self._server, None

        async def close():
            self._loop.loop.remove_reader(server.fileno())
            server.close()
            for c in list(self._conns):
                c._close()

        try:
            self._loop.run(close(), timeout=5)
        except Exception:  # noqa: BLE001 - cleanup goes on
            pass

    def _cleanup(self):
        self.stop()
        return []

    def _context(self, n):
        return ""

    def __repr__(self):
        return "<schedsink.Sink %s %s: %d requests>" % (self.name, self.url, len(self.requests))


def max_in_window(times, width):
    """The most timestamps in any window [t, t + width)."""
    times = sorted(times)
    best, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] >= width:
            j += 1
        best = max(best, i - j + 1)
    return best


class Poster:
    """A carrier posting signed atoship events one after the other on a
    keep-alive connection. post() returns waybill's event id once the gateway
    answered 200; while the gateway is down (or answers 503) it sends the same
    body again, as a carrier would, for up to `patience` seconds."""

    def __init__(self, gateway, secret, path="/hooks/atoship", patience=None):
        self.g, self.secret, self.path = gateway, secret, path
        self.patience = patience or (90.0 if wb.ASAN else 45.0)
        self.conn = None
        self.retries = 0  # sends repeated after an error or a 503

    def _send(self, body):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.g.port, timeout=wb.HTTP_TIMEOUT)
        self.conn.request("POST", self.path, body, wb.atoship_headers(self.secret, body))
        r = self.conn.getresponse()
        data = r.read()
        if r.getheader("Connection", "").lower() == "close":
            self.close()
        return r.status, data

    def post(self, body):
        deadline = time.monotonic() + self.patience
        while True:
            try:
                status, data = self._send(body)
                if status == 200:
                    return json.loads(data)["id"]
                if status != 503:
                    raise AssertionError("POST %s -> %d %r" % (self.path, status, data[:200]))
            except (OSError, http.client.HTTPException):
                self.close()
            self.retries += 1
            if time.monotonic() > deadline:
                raise AssertionError("the gateway did not accept an event for %gs" % self.patience)
            time.sleep(0.02)

    def post_event(self, type="tracking.in_transit", id=None, **data):
        """Post a fresh atoship event; returns (waybill id, carrier id)."""
        body = wb.atoship_event(type, id=id, **data)
        sid = json.loads(body)["id"]
        return self.post(body), sid

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None
