"""4. Many clients: thousands of concurrent keep-alive connections, each
sending a signed event, then a second one on the same connection. All are
served (every answer a 200, no connection dropped); the gateway's RSS with
all of them open is reported. The runner raises its RLIMIT_NOFILE, which the
gateway inherits (its connection cap is RLIMIT_NOFILE - 256, at most
16,384)."""
import selectors
import socket
import time

import common

NAME = "4 concurrent keep-alive connections"


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.out = b""
        self.buf = b""
        self.answers = []  # statuses
        self.cids = []
        self.closed = False


def _request(cid_body_headers):
    cid, body, headers = cid_body_headers
    head = ("POST /hooks/atoship HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
            "".join("%s: %s\r\n" % kv for kv in headers.items()) +
            "Content-Length: %d\r\n\r\n" % len(body)).encode()
    return cid, head + body


def _parse(c):
    """Takes complete answers off c.buf."""
    while b"\r\n\r\n" in c.buf:
        head, rest = c.buf.split(b"\r\n\r\n", 1)
        n = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                n = int(v.strip())
        if len(rest) < n:
            return
        c.answers.append(int(head.split(b" ", 2)[1]))
        c.buf = rest[n:]


def _round(conns, sel, acked, deadline):
    """Every connection sends one request; waits for every answer."""
    want = {}
    for c in conns:
        if c.closed:
            continue
        cid, data = _request(common.event())
        c.cids.append(cid)
        c.out += data
        want[c] = len(c.answers) + 1
        sel.modify(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    while want and time.monotonic() < deadline:
        for key, ev in sel.select(timeout=0.5):
            c = key.data
            if ev & selectors.EVENT_WRITE and c.out:
                try:
                    n = c.sock.send(c.out)
                    c.out = c.out[n:]
                except BlockingIOError:
                    pass
                except OSError:
                    c.closed = True
                if not c.out and not c.closed:
                    sel.modify(c.sock, selectors.EVENT_READ, c)
            if ev & selectors.EVENT_READ:
                try:
                    data = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    c.closed = True
                c.buf += data
                _parse(c)
            if c in want and (len(c.answers) >= want[c] or c.closed):
                if len(c.answers) >= want[c] and c.answers[-1] == 200:
                    acked.append(c.cids[-1])
                del want[c]
                if c.closed:
                    sel.unregister(c.sock)
    return len(want)


def run(short, row):
    n = 1000 if short else 10000
    limit = common.raise_nofile()
    if limit < n + 512:
        raise common.Skip("RLIMIT_NOFILE hard limit %d < %d" % (limit, n + 512))
    sink = common.CountingSink()
    g = common.gateway({"erp": (sink.url, 'sign = "none", enabled = false')}, 'on("*", {"erp"})')
    rss0 = common.proc_stats(g.pid)[0]
    sel = selectors.DefaultSelector()
    conns = []
    t0 = time.monotonic()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        c = Conn(s)
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    t_open = time.monotonic() - t0
    acked = []
    t1 = time.monotonic()
    left1 = _round(conns, sel, acked, time.monotonic() + (60 if short else 150))
    t_r1 = time.monotonic() - t1
    rss, hwm, fds, thr = common.proc_stats(g.pid)
    t2 = time.monotonic()
    left2 = _round(conns, sel, acked, time.monotonic() + (60 if short else 150))
    t_r2 = time.monotonic() - t2
    closed = sum(1 for c in conns if c.closed)
    statuses = {}
    for c in conns:
        for a in c.answers:
            statuses[a] = statuses.get(a, 0) + 1
    for c in conns:
        c.sock.close()
    stored = set(common.stored_source_ids(g))
    sent = sum(len(c.cids) for c in conns)
    row.check(not left1 and not left2, "answers missing: %d in round 1, %d in round 2" % (left1, left2))
    row.check(closed == 0, "%d connections closed by the gateway" % closed)
    row.check(set(statuses) == {200}, "answers: %s" % statuses)
    row.check(fds >= n, "the gateway held %d fds with %d connections open" % (fds, n))
    row.sent = sent
    row.acked = len(acked)
    row.lost = sum(1 for a in acked if a not in stored)
    row.dup = None
    row.note("%d connections open in %.1f s (fd limit %d); round 1 %.1f s, round 2 (same connections) %.1f s; "
             "gateway RSS %d MiB with all open (%d MiB idle before, peak %d MiB), %d fds" % (
                 n, t_open, limit, t_r1, t_r2, rss >> 10, rss0 >> 10, hwm >> 10, fds))
    return row
