"""6. Malformed inbound HTTP: a corpus of broken requests, most carrying a
correctly signed event somewhere a lenient parser would take it from. Each
gets a 4xx, the process lives, and nothing is stored."""
import socket
import time

import common
from common import wb

NAME = "6 malformed inbound corpus"
PATH = b"/hooks/atoship"


def _signed():
    _, body, headers = common.event()
    return body, headers["X-Atoship-Signature"].encode()


def _req(body, sig, head=b"", cl=True, line=None):
    h = b"Host: 127.0.0.1\r\nContent-Type: application/json\r\nX-Atoship-Signature: " + sig + b"\r\n"
    if cl:
        h += b"Content-Length: %d\r\n" % len(body)
    return (line or b"POST " + PATH + b" HTTP/1.1") + b"\r\n" + h + head + b"\r\n"


def corpus():
    """(name, bytes to send, bytes of body to stream after them or 0); each
    case with an event of its own, so that whatever is stored says which."""
    return [_cases()[i] for i in range(len(_cases()))]  # _cases() signs a new event each call


def _cases():
    b, s = _signed()
    inner = _req(b, s) + b
    out = [
        ("empty request line", b"\r\n\r\n" * 3 + b"GARBAGE\r\n\r\n", 0),
        ("no version", b"POST " + PATH + b"\r\n\r\n", 0),
        ("bad version", _req(b, s, line=b"POST " + PATH + b" HTTP/7.3") + b, 0),
        ("bad method token", _req(b, s, line=b"P{ST " + PATH + b" HTTP/1.1") + b, 0),
        ("binary request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 0),
        ("NUL in the target", _req(b, s, line=b"POST /hooks/ato\x00ship HTTP/1.1") + b, 0),
        ("space in the target", _req(b, s, line=b"POST /hooks/ato ship HTTP/1.1") + b, 0),
        ("100 KiB target", _req(b, s, line=b"POST /" + b"a" * 100000 + b" HTTP/1.1") + b, 0),
        ("80 KiB of headers", _req(b, s, head=b"".join(b"X-P%d: %s\r\n" % (i, b"y" * 1000) for i in range(80))) + b, 0),
        ("9000 tiny headers (> 64 KiB)", _req(b, s, head=b"".join(b"X-%d: y\r\n" % i for i in range(9000))) + b, 0),
        ("header without a colon", _req(b, s, head=b"X-Broken header line\r\n") + b, 0),
        ("space before the colon", _req(b, s, cl=False, head=b"Content-Length : %d\r\n" % len(b)) + b, 0),
        ("NUL in a header value", _req(b, s, head=b"X-Note: a\x00b\r\n") + b, 0),
        ("NUL in a header name", _req(b, s, head=b"X-No\x00te: ab\r\n") + b, 0),
        ("CR alone in a header", _req(b, s, head=b"X-Note: a\rb\r\n") + b, 0),
        ("conflicting Content-Length (smuggling)",
         _req(inner, s, cl=False, head=b"Content-Length: 0\r\nContent-Length: %d\r\n" % len(inner)) + inner, 0),
        ("Content-Length list", _req(b, s, cl=False, head=b"Content-Length: %d, %d\r\n" % (len(b), len(b))) + b, 0),
        ("negative Content-Length", _req(b, s, cl=False, head=b"Content-Length: -1\r\n") + b, 0),
        ("non-numeric Content-Length", _req(b, s, cl=False, head=b"Content-Length: 12a\r\n") + b, 0),
        ("Content-Length beyond 2^64", _req(b, s, cl=False, head=b"Content-Length: 99999999999999999999999\r\n") + b, 0),
        ("chunked plus Content-Length",
         _req(b, s, head=b"Transfer-Encoding: chunked\r\n") + b"%x\r\n%s\r\n0\r\n\r\n" % (len(b), b), 0),
        ("invalid chunk size", _req(b, s, cl=False, head=b"Transfer-Encoding: chunked\r\n") + b"zz\r\n" + b + b"\r\n0\r\n\r\n", 0),
        ("chunk size overflow", _req(b, s, cl=False, head=b"Transfer-Encoding: chunked\r\n")
         + b"fffffffffffffffffffff\r\n" + b + b"\r\n0\r\n\r\n", 0),
        ("chunk longer than its size", _req(b, s, cl=False, head=b"Transfer-Encoding: chunked\r\n")
         + b"%x\r\n%sXX\r\n0\r\n\r\n" % (len(b), b), 0),
        ("unknown transfer coding", _req(b, s, cl=False, head=b"Transfer-Encoding: gzip, chunked\r\n")
         + b"%x\r\n%s\r\n0\r\n\r\n" % (len(b), b), 0),
        ("100 MiB body by Content-Length", _req(b"", s, cl=False, head=b"Content-Length: %d\r\n" % (100 << 20)), 100 << 20),
        ("100 MiB body chunked", _req(b"", s, cl=False, head=b"Transfer-Encoding: chunked\r\n"), -(100 << 20)),
    ]
    return out


def send(port, data, stream):
    """Send data (then stream bytes of body, chunked when negative); return
    the status of the first answer, 0 when there was none."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    got = b""
    try:
        sock.sendall(data)
        n = abs(stream)
        piece = b"x" * 65536
        if stream < 0:
            piece = b"10000\r\n" + piece + b"\r\n"
        sent = 0
        sock.setblocking(False)
        while sent < n:
            try:
                got += sock.recv(65536)
                break  # answered (or closed) before the end of the body
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                sock.sendall(piece)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            except OSError:
                break
            sent += 65536
        sock.setblocking(True)
        sock.settimeout(10)
        try:
            while b"\r\n" not in got:
                c = sock.recv(65536)
                if not c:
                    break
                got += c
        except OSError:
            pass
    finally:
        sock.close()
    try:
        return int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.") else 0
    except (IndexError, ValueError):
        return 0


def run(short, row):
    sink = common.CountingSink()
    g = common.gateway({"erp": (sink.url, 'sign = "none"')}, 'on("*", {"erp"})')
    cases = corpus()
    bad = []
    answers = {}
    for name, data, stream in cases:
        st = send(g.port, data, stream)
        answers[st] = answers.get(st, 0) + 1
        if not 400 <= st < 500:
            bad.append("%s: %s" % (name, st or "no answer"))
        g._check_alive()
    row.check(not bad, "not a 4xx: " + ", ".join(bad))
    row.check(g.admin("GET", "/healthz", token=None)[0] == 200, "/healthz not 200 after the corpus")
    # a good one still goes through: the process lives and serves
    cid, body, headers = common.event()
    ok = g.post("/hooks/atoship", body, headers)
    row.check(ok.status == 200, "a good request after the corpus: %s" % ok.status)
    stored = common.stored_source_ids(g)
    row.check(stored == [cid], "stored besides the good request: %d event(s)" % (len(stored) - (cid in stored)))
    row.sent = len(cases)
    row.acked = answers.get(200, 0)
    row.lost = 0 if ok.status != 200 or sink.wait_all([cid], 10) == [] else 1
    row.dup = sink.duplicates()
    row.note("%d requests; answers %s; %s" % (len(cases), ", ".join(
        "%s x%d" % (k, v) for k, v in sorted(answers.items())), "then a good one: %d" % ok.status))
    return row
