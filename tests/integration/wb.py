"""wb.py -- what waybill's integration tests drive the gateway with (stdlib only).

A test is a plain function `test_*` in tests/integration/test_*.py. It starts
its own gateway, sinks and receivers; everything it starts is registered here
and killed by `cleanup()`, which tests/run.py calls after every test, passed or
failed. Nothing needs a `with`, though every object is also a context manager.

    sink = wb.Sink([500, 200])
    g = wb.Gateway(wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = "s3cret" }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, sign = "hex", secret = "k" }}
        rules "rules/"
    '''), files={"rules/10-main.lua": 'on("*", {"erp"})'})
    body = wb.atoship_event()
    r = g.post("/hooks/atoship", body, wb.atoship_headers("s3cret", body))
    assert r.status == 200 and r.json()["id"].startswith("evt_"), r  # r is also (status, headers, body)
    req = sink.wait_for_count(2, timeout=5)[1]   # 500, then the retry
    assert wb.verify_hex("k", req.headers["X-Signature"], req.body)

Environment (set by tests/run.py): WB_BIN (absolute path of the binary),
WB_ASAN=1 (a sanitizer report in a gateway's stderr fails the test),
WB_WORKER (0/1: which port range this worker process picks listeners from),
WB_STORE (sqlite, the default, or postgresql: `run.py --store postgresql`).

The store: header() names `sqlite:waybill.db` (in the gateway's dir), or
under WB_STORE=postgresql a fresh database of the worker's PostgreSQL
(pg.py), unless the test names its own (store=...). A test about SQLite
itself says so with @wb.sqlite_only("why") (a module: SQLITE_ONLY = "why")
and is skipped on PostgreSQL. What a test reads from the store it reads
through the admin API or g.db_rows(sql) / g.delivery_rows() (both
backends), and g.store_down() makes the store refuse writes on either.
"""

import base64
import fcntl
import hashlib
import hmac
import http.client
import http.server
import json
import os
import random
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SINKS_DIR = os.path.join(HERE, "sinks")
NODE_MODULES = os.path.join(ROOT, "tests", "node_modules")


def _bin():
    b = os.environ.get("WB_BIN") or os.path.join(ROOT, "waybill")
    return b if os.path.isabs(b) else os.path.abspath(b)


ASAN = os.environ.get("WB_ASAN") == "1"
HTTP_TIMEOUT = float(os.environ.get("WB_HTTP_TIMEOUT", "30" if ASAN else "15"))
START_TIMEOUT = float(os.environ.get("WB_START_TIMEOUT", "30" if ASAN else "10"))
SANITIZER_PATTERNS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")

# --------------------------------------------------------------------------
# Cleanup registry: every Gateway / Sink / NodeSink registers itself here.
# --------------------------------------------------------------------------

_registry = []  # objects with _cleanup() -> list of problem strings
_started_this_test = []  # Gateways/NodeSinks, for failure context
_reg_lock = threading.Lock()


def _register(obj):
    with _reg_lock:
        _registry.append(obj)
        if isinstance(obj, (Gateway, NodeSink)):
            _started_this_test.append(obj)


def _unregister(obj):
    with _reg_lock:
        if obj in _registry:
            _registry.remove(obj)


def cleanup():
    """Stop everything started since the last cleanup, newest first.

    Returns a list of problems found on the way (sanitizer reports in a
    gateway's log when WB_ASAN=1); the runner fails the test on any."""
    problems = []
    while True:
        with _reg_lock:
            if not _registry:
                break
            obj = _registry.pop()
        try:
            problems.extend(obj._cleanup() or [])
        except Exception as e:  # cleanup must go on
            problems.append("cleanup of %r failed: %s" % (obj, e))
    return problems


_temp_dirs = []  # made by this test's objects; removed after it passes


def _mkdtemp(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    _temp_dirs.append(d)
    return d


def remove_temp_dirs():
    """Remove the temp dirs of the test that just passed (the runner calls
    this; a failed test's dirs are kept for the logs, see WB_KEEP=1)."""
    if os.environ.get("WB_KEEP") != "1":
        for d in _temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
    del _temp_dirs[:]


def failure_context(lines=40):
    """Log tails of the gateways and Node sinks the current test started."""
    return "\n".join(failure_contexts(lines))


def failure_contexts(lines=40):
    """The same, one string per gateway / Node sink."""
    out = []
    for obj in list(_started_this_test):
        try:
            out.append(obj._context(lines))
        except Exception as e:
            out.append("(no context for %r: %s)" % (obj, e))
    return [x for x in out if x]


def _reset_test_context():
    del _started_this_test[:]
    _pg_dbs.clear()


STORE = os.environ.get("WB_STORE") or "sqlite"
PG = STORE == "postgresql"


def sqlite_only(reason):
    """Decorator: this test is about SQLite itself (its files, its lock, its
    reclaim...); under WB_STORE=postgresql it is skipped with reason."""

    def deco(fn):
        fn.wb_sqlite_only = reason
        return fn

    return deco


def not_yet_on_postgresql(reason):
    """Decorator: what this test asks is not built on the PostgreSQL store
    yet (issue 15; the README's "Not done yet on PostgreSQL" lists each):
    skipped there with reason until it is, never on SQLite."""
    return sqlite_only("not yet on PostgreSQL (issue 15): " + reason)


def sqlite_only_reason(module, fn):
    """Why fn (of module) runs on SQLite only, or None (the runner asks)."""
    return getattr(fn, "wb_sqlite_only", None) or getattr(module, "SQLITE_ONLY", None)


_pg_dbs = {}  # URL -> pg.Database, the databases header() made this test


def default_store():
    """The store a config gets when its test names none (see the top)."""
    if not PG:
        return "sqlite:waybill.db"
    import pg  # pg imports this module: not at the top
    db = pg.database()
    _pg_dbs[db.url] = db
    return db.url


def timeout(seconds):
    """Decorator: this test's time limit (the runner's default is 60 s)."""

    def deco(fn):
        fn.wb_timeout = seconds
        return fn

    return deco


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

_handed_out = set()
_port_locks = {}  # port -> fd holding its reservation for this process's life
PORT_LOCK_DIR = os.path.join(tempfile.gettempdir(), "waybill-test-ports")


def _reserve_port(port):
    """True when this process now holds port's machine-wide reservation: an
    exclusive flock on PORT_LOCK_DIR/PORT.lock, kept until the process ends
    (the kernel drops it however it ends, so nothing goes stale). False when
    another live process holds it. Every test process on the machine (each
    worktree's suites, bench, torture) reserves through here, so a port one
    of them handed out and has not bound yet is never handed to another."""
    try:
        os.makedirs(PORT_LOCK_DIR, exist_ok=True)
        fd = os.open(os.path.join(PORT_LOCK_DIR, "%d.lock" % port),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        return True  # no shared folder to lock in: the bind check below alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _port_locks[port] = fd
    return True


def _release_port(port):
    fd = _port_locks.pop(port, None)
    if fd is not None:
        os.close(fd)


def free_port():
    """A free TCP port on 127.0.0.1 for a listener the test's process will bind.

    Picked outside the kernel's ephemeral range (32768-60999), so outbound
    connections never take it, and from a range of its own per runner worker
    (WB_WORKER). The bind check alone cannot keep two processes apart: a
    gateway binds its ports only once it has started, and until then another
    process with the same WB_WORKER (a second suite or a bench on the same
    machine) passes the same check for the same port. One of the two gateways
    then stops with "cannot listen", and its test fails at start or, when the
    other gateway answered its /healthz, later with the other's answers or a
    reset once that one stops. So a port is also reserved machine-wide
    (_reserve_port) for as long as this process lives. A port is handed out
    once per process, so restart() can rebind it safely."""
    worker = int(os.environ.get("WB_WORKER", "0")) % 4
    lo = 20000 + worker * 3000
    hi = lo + 2999
    for _ in range(500):
        port = random.randint(lo, hi)
        if port in _handed_out or not _reserve_port(port):
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        except OSError:
            _release_port(port)
            continue
        finally:
            s.close()
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port in %d-%d" % (lo, hi))


def wait_for(predicate, timeout=5.0, interval=0.02, message=None):
    """Poll predicate() until it returns something truthy; return that.

    Exceptions inside predicate (e.g. a connection refused) count as "not
    yet"; on timeout, AssertionError with message and the last exception."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = predicate()
            if v:
                return v
            last_exc = None
        except _GatewayDied as e:
            raise AssertionError("%s: %s" % (message or getattr(predicate, "__name__", "condition"), e))
        except Exception as e:  # noqa: BLE001 - polled
            last_exc = e
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", "condition")
            extra = (" (last error: %s: %s)" % (type(last_exc).__name__, last_exc)) if last_exc else ""
            raise AssertionError("%s: not met within %gs%s" % (what, timeout, extra))
        time.sleep(interval)


def lua(value):
    """A Python value as a Lua literal: str, int/float, bool, None, list, dict."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid Lua escapes for these
    if isinstance(value, (list, tuple)):
        return "{ " + ", ".join(lua(v) for v in value) + " }"
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            key = k if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k) else "[%s]" % json.dumps(k)
            items.append("%s = %s" % (key, lua(v)))
        return "{ " + ", ".join(items) + " }"
    raise TypeError("no Lua literal for %r" % (value,))


ADMIN_TOKEN = "test-token"


def header(port=None, admin_port=None, token=ADMIN_TOKEN, store=None,
           allow_private=("127.0.0.0/8",), **settings):
    """The standard top lines of a test config (fresh ports unless given;
    store: default_store() unless given).

    Extra keyword settings become top-level `key = value` lines, e.g.
    header(max_body="1KiB", shutdown_grace="2s", environment="sandbox")."""
    port = port or free_port()
    admin_port = admin_port or free_port()
    store = store or default_store()
    lines = [
        'listen = "127.0.0.1:%d"' % port,
        'admin = { listen = "127.0.0.1:%d", token = %s }' % (admin_port, lua(token)),
        "store = %s" % lua(store),
    ]
    if allow_private is not None:
        lines.append("allow_private = %s" % lua(list(allow_private)))
    for k, v in settings.items():
        lines.append("%s = %s" % (k, lua(v)))
    return "\n".join(lines) + "\n"


def config(body="", **kw):
    """header(**kw) followed by body (dedented)."""
    return header(**kw) + textwrap.dedent(body).strip("\n") + "\n"


class Headers(dict):
    """A case-insensitive header dict (keys stored lower-case)."""

    def __init__(self, items=()):
        super().__init__()
        if hasattr(items, "items"):
            items = items.items()
        for k, v in items:
            self[k] = v

    def __setitem__(self, k, v):
        super().__setitem__(k.lower(), v)

    def __getitem__(self, k):
        return super().__getitem__(k.lower())

    def __contains__(self, k):
        return super().__contains__(k.lower())

    def get(self, k, default=None):
        return super().get(k.lower(), default)


class Response(tuple):
    """(status, headers, body) that also has .status .headers .body .json()."""

    def __new__(cls, status, headers, body):
        return super().__new__(cls, (status, headers, body))

    status = property(lambda self: self[0])
    headers = property(lambda self: self[1])
    body = property(lambda self: self[2])

    def json(self):
        return json.loads(self[2].decode("utf-8"))

    def text(self):
        return self[2].decode("utf-8", "replace")


def http_request(port, method, path, body=None, headers=None, content_length=None,
                 timeout=None, host="127.0.0.1"):
    """One HTTP/1.1 request on a fresh connection; returns Response.

    content_length overrides the Content-Length header (e.g. to announce more
    than max_body). The body goes out in 64 KiB pieces, and sending stops as
    soon as the server answers (as with a 413 before the body is read), so
    the answer is read rather than lost to a connection reset."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout or HTTP_TIMEOUT)
    try:
        if isinstance(body, str):
            body = body.encode()
        body = body or b""
        hdrs = dict(headers or {})
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in hdrs.items():
            if k.lower() != "content-length":
                conn.putheader(k, v)
        n = len(body) if content_length is None else content_length
        if body or content_length is not None or method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(n))
        conn.endheaders()
        sock = conn.sock
        try:
            for i in range(0, len(body), 65536):
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered (or closed): stop sending
                sock.sendall(body[i:i + 65536])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed; read that answer
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, Headers(resp.getheaders()), data)
    finally:
        conn.close()


def raw_request(port, data, timeout=None, host="127.0.0.1"):
    """Send raw bytes (e.g. malformed HTTP) and return everything the server
    sends back until it closes the connection or goes quiet for timeout."""
    with socket.create_connection((host, port), timeout=timeout or 5) as s:
        s.sendall(_b(data))
        chunks = []
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                chunks.append(c)
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(chunks)


# --------------------------------------------------------------------------
# Signing (what carriers attach; what waybill's deliveries must carry)
# --------------------------------------------------------------------------

def _b(x):
    return x.encode() if isinstance(x, str) else bytes(x)


def hmac_sha256(secret, data):
    return hmac.new(_b(secret), _b(data), hashlib.sha256).digest()


def sign_hex(secret, body):
    """hex HMAC-SHA256 of body (atoship, X-Signature, easypost's value)."""
    return hmac_sha256(secret, body).hex()


def sign_b64(secret, body):
    """base64 HMAC-SHA256 of body (AfterShip)."""
    return base64.b64encode(hmac_sha256(secret, body)).decode()


def standard_key(secret):
    """Standard Webhooks key bytes: base64 of the part after `whsec_`."""
    s = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    return base64.b64decode(s)


def sign_standard(secret, msg_id, ts, body):
    """Standard Webhooks v1 signature entry: `v1,<base64>` over id.ts.body."""
    content = b"%s.%d.%s" % (_b(msg_id), int(ts), _b(body))
    mac = hmac.new(standard_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def standard_headers(secret, body, msg_id=None, ts=None):
    """webhook-id / webhook-timestamp / webhook-signature for body.

    secret may be a list (several `v1,` entries, as during rotation)."""
    msg_id = msg_id or "msg_" + secrets.token_hex(12)
    ts = int(time.time()) if ts is None else int(ts)
    secs = secret if isinstance(secret, (list, tuple)) else [secret]
    sig = " ".join(sign_standard(s, msg_id, ts, body) for s in secs)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def verify_standard(secret, headers, body, tolerance=300):
    """True when headers (case-insensitive) carry a valid Standard Webhooks
    signature of body for secret, within tolerance seconds."""
    h = Headers(headers)
    msg_id, ts, sig = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
    if not (msg_id and ts and sig):
        return False
    try:
        if abs(time.time() - int(ts)) > tolerance:
            return False
    except ValueError:
        return False
    want = sign_standard(secret, msg_id, int(ts), body).split(",", 1)[1]
    for entry in sig.split(" "):
        ver, _, val = entry.partition(",")
        if ver == "v1" and hmac.compare_digest(val, want):
            return True
    return False


def verify_hex(secret, signature, body):
    return signature is not None and hmac.compare_digest(signature, sign_hex(secret, body))


def sign_stripe(secret, body, ts=None):
    """Stripe-style header value `t=<unix>,v1=<hex HMAC of "t.body">`."""
    ts = int(time.time()) if ts is None else int(ts)
    return "t=%d,v1=%s" % (ts, sign_hex(secret, b"%d." % ts + _b(body)))


def sign_shiptify(secret, timestamp, token):
    """hex HMAC-SHA256 of the timestamp's decimal text followed by the token."""
    return sign_hex(secret, "%s%s" % (timestamp, token))


def shiptify_body(secret, payload, timestamp=None, token=None):
    """payload (dict) with Shiptify's timestamp/token/signature fields added,
    as compact JSON bytes."""
    p = dict(payload)
    p["timestamp"] = int(time.time()) if timestamp is None else timestamp
    p["token"] = token or secrets.token_hex(16)
    p["signature"] = sign_shiptify(secret, p["timestamp"], p["token"])
    return json.dumps(p, separators=(",", ":")).encode()


def atoship_headers(secret, body):
    return {"Content-Type": "application/json", "X-Atoship-Signature": sign_hex(secret, body)}


def signed_headers(scheme, secret, body, **kw):
    """Headers a sender using verify preset `scheme` attaches to body.

    Schemes: atoship, generic, aftership, easypost, stripe, shippo, standard
    (kw: msg_id, ts), hmac-sha256 (kw: header, encoding="hex", prefix="")."""
    h = {"Content-Type": "application/json"}
    if scheme == "atoship":
        h["X-Atoship-Signature"] = sign_hex(secret, body)
    elif scheme in ("generic", "hex"):
        h["X-Signature"] = sign_hex(secret, body)
    elif scheme == "aftership":
        h["aftership-hmac-sha256"] = sign_b64(secret, body)
    elif scheme == "easypost":
        h["X-Hmac-Signature"] = "hmac-sha256-hex=" + sign_hex(secret, body)
    elif scheme in ("stripe", "shippo"):
        name = kw.get("header") or ("Stripe-Signature" if scheme == "stripe" else "Shippo-Auth-Signature")
        h[name] = sign_stripe(secret, body, kw.get("ts"))
    elif scheme == "standard":
        h.update(standard_headers(secret, body, kw.get("msg_id"), kw.get("ts")))
    elif scheme == "hmac-sha256":
        enc = kw.get("encoding", "hex")
        val = sign_hex(secret, body) if enc == "hex" else sign_b64(secret, body)
        h[kw["header"]] = kw.get("prefix", "") + val
    else:
        raise ValueError("unknown scheme %r" % scheme)
    return h


class RsaKey:
    """An RSA key pair (made with the openssl CLI) for ShipEngine-style tests.

        key = wb.RsaKey("kid-1"); open(path, "w").write(json.dumps(key.jwks()))
        headers = key.shipengine_headers(body)"""

    def __init__(self, kid="test-key-1", bits=2048):
        self.kid = kid
        self._dir = _mkdtemp("wb-rsa-")
        self.pem = os.path.join(self._dir, "key.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:%d" % bits, "-out", self.pem],
                       check=True, capture_output=True)
        out = subprocess.run(["openssl", "rsa", "-in", self.pem, "-noout", "-modulus"],
                             check=True, capture_output=True, text=True).stdout
        self.n = int(out.strip().split("=", 1)[1], 16)
        self.e = 65537

    def jwk(self):
        def b64u(i):
            raw = i.to_bytes((i.bit_length() + 7) // 8, "big")
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                "n": b64u(self.n), "e": b64u(self.e)}

    def jwks(self):
        return {"keys": [self.jwk()]}

    def sign(self, data):
        """base64 RSA-SHA256 (PKCS#1 v1.5) signature of data."""
        r = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.pem],
                           input=_b(data), check=True, capture_output=True)
        return base64.b64encode(r.stdout).decode()

    def shipengine_headers(self, body, ts=None):
        ts = ts or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return {"Content-Type": "application/json",
                "x-shipengine-rsa-sha256-signature": self.sign(_b(ts) + b"." + _b(body)),
                "x-shipengine-rsa-sha256-key-id": self.kid,
                "x-shipengine-timestamp": ts}


# --------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------

def _iso(t=None):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t if t is not None else time.time()))


def new_id(prefix="evt_"):
    return prefix + secrets.token_hex(8)


def atoship_event_dict(type="shipment.delivered", id=None, **data):
    """An atoship event (seed 000's envelope) as a dict; data fields override."""
    now = time.time()
    d = {
        "shipment_id": "shp_" + secrets.token_hex(6),
        "tracking_number": "94001118992234%08d" % random.randint(0, 99999999),
        "carrier": "USPS",
        "service": "Priority Mail",
        "order_id": "order_" + secrets.token_hex(5),
        "order_reference": "ORD-%05d" % random.randint(0, 99999),
        "delivered_at": _iso(now - 120),
        "delivery_location": "Front door, left of the porch next to the blue planter by the mailbox",
        "signed_by": "RESIDENT",
    }
    d.update(data)
    return {
        "id": id or new_id(),
        "type": type,
        "created_at": _iso(now),
        "data": d,
        "metadata": {
            "organization_id": "org_" + secrets.token_hex(6),
            "webhook_endpoint_id": "we_" + secrets.token_hex(6),
            "api_version": "2024-01-15",
            "environment": "production",
            "livemode": True,
            "attempt": 1,
        },
    }


def compact(obj):
    """Compact JSON bytes (no whitespace), as waybill sends and atoship signs."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def atoship_event(type="shipment.delivered", id=None, **data):
    """A ~600-byte atoship event as compact JSON bytes, fresh id each call."""
    return compact(atoship_event_dict(type, id, **data))


# --------------------------------------------------------------------------
# The gateway under test
# --------------------------------------------------------------------------

class Gateway:
    """`waybill serve -c DIR/waybill.lua` in a temp dir of its own.

    files: {relative path: text or bytes} written beside the config.
    port/admin_port/token are read from the config (see header()) unless
    given. The gateway is started and healthy when the constructor returns;
    start=False leaves it to start()."""

    def __init__(self, config_text, env=None, files=None, port=None, admin_port=None,
                 token=None, start=True, args=()):
        self.dir = _mkdtemp("wb-gw-")
        self.config_path = os.path.join(self.dir, "waybill.lua")
        self.log_path = os.path.join(self.dir, "gateway.log")
        self.env = dict(env or {})
        self.args = list(args)
        self.proc = None
        self.starts = 0
        self._log_offset = 0  # where the current process's log begins
        self._asan_reported = False
        self.write("waybill.lua", config_text)
        for rel, content in (files or {}).items():
            self.write(rel, content)
        m = re.search(r'^\s*listen\s*=\s*"[^"]*:(\d+)"', config_text, re.M)
        self.port = port or (int(m.group(1)) if m else None)
        m = re.search(r'admin\s*=\s*\{[^}]*?listen\s*=\s*"[^"]*:(\d+)"', config_text, re.S)
        self.admin_port = admin_port or (int(m.group(1)) if m else None)
        m = re.search(r'admin\s*=\s*\{[^}]*?token\s*=\s*"([^"]*)"', config_text, re.S)
        self.token = token or (m.group(1) if m else ADMIN_TOKEN)
        _register(self)
        if start:
            self.start()

    def __repr__(self):
        return "<Gateway %s port=%s admin=%s>" % (self.dir, self.port, self.admin_port)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        problems = self._cleanup()
        _unregister(self)
        if problems and exc[0] is None:
            raise AssertionError("\n".join(problems))

    # -- files ------------------------------------------------------------
    def path(self, rel):
        return os.path.join(self.dir, rel)

    def write(self, rel, content):
        """Write a file under the gateway's dir (e.g. new rules before reload)."""
        p = self.path(rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if isinstance(content, str):
            content = textwrap.dedent(content).lstrip("\n")
        with open(p, "wb") as f:
            f.write(_b(content))

    def remove(self, rel):
        os.unlink(self.path(rel))

    # -- process ----------------------------------------------------------
    def _environ(self):
        e = dict(os.environ)
        e.update({k: str(v) for k, v in self.env.items()})
        return e

    def start(self, wait=True):
        """Start the process (again) and wait until /healthz answers 200."""
        if self.running():
            raise AssertionError("gateway already running (pid %d)" % self.proc.pid)
        b = _bin()
        if not os.access(b, os.X_OK):
            raise AssertionError("waybill binary not found or not executable: %s" % b)
        self.starts += 1
        with open(self.log_path, "ab") as logf:
            self._log_offset = logf.tell()
            logf.write(b"--- wb: start #%d ---\n" % self.starts)
            logf.flush()
            self.proc = subprocess.Popen(
                [b, "serve", "-c", self.config_path] + self.args,
                cwd=self.dir, env=self._environ(), stdin=subprocess.DEVNULL,
                stdout=logf, stderr=logf)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout=None):
        timeout = timeout or START_TIMEOUT
        if not self.admin_port:
            raise AssertionError("no admin port known (config has no admin listen?)")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("waybill exited with code %s during start-up\n%s"
                                     % (self.proc.returncode, self._tail(30)))
            try:
                r = http_request(self.admin_port, "GET", "/healthz", timeout=1)
                if r.status == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() >= deadline:
                raise AssertionError("waybill not healthy within %gs\n%s" % (timeout, self._tail(30)))
            time.sleep(0.02)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def kill9(self):
        """SIGKILL, as a crash would; returns once the process is gone."""
        if self.running():
            self.proc.kill()
        if self.proc:
            self.proc.wait()

    def sighup(self):
        self.proc.send_signal(signal.SIGHUP)

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=20, sig=signal.SIGTERM):
        """SIGTERM (or sig) and wait; returns the exit code.

        Fails (AssertionError) when it does not exit in time (then it is
        killed) or, under WB_ASAN=1, when its log shows a sanitizer report."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("waybill did not exit within %gs of %s\n%s"
                                     % (timeout, signal.Signals(sig).name, self._tail(30)))
        problems = self._sanitizer_problems()
        if problems:
            raise AssertionError(problems[0])
        return self.proc.returncode

    def restart(self, wait=True):
        """Start again in the same dir with the same store (stops it first
        with SIGTERM if still running)."""
        if self.running():
            self.stop()
        return self.start(wait)

    # -- logs -------------------------------------------------------------
    def log(self, current=False):
        """The gateway's stderr/stdout (all runs; current=True: this run)."""
        try:
            with open(self.log_path, "rb") as f:
                if current:
                    f.seek(self._log_offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _tail(self, n=40):
        lines = self.log().splitlines()
        return "--- gateway log (%s), last %d lines ---\n%s" % (
            self.log_path, min(n, len(lines)), "\n".join(lines[-n:]))

    def _context(self, n=40):
        return self._tail(n)

    def _sanitizer_problems(self):
        if not ASAN or self._asan_reported:
            return []
        text = self.log()
        for pat in SANITIZER_PATTERNS:
            i = text.find(pat)
            if i >= 0:
                self._asan_reported = True
                start = text.rfind("\n", 0, max(0, i - 200)) + 1
                return ["sanitizer report in %s:\n%s" % (self.log_path, text[start:start + 4000])]
        return []

    def _cleanup(self):
        if self.running():
            # SIGTERM first so a sanitizer build can report leaks; then SIGKILL.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self._sanitizer_problems()

    # -- HTTP -------------------------------------------------------------
    def url(self, path="/"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def post(self, path, body=b"", headers=None, content_length=None, method="POST", timeout=None):
        """A request to the inbound listener; returns Response (status, headers, body)."""
        return http_request(self.port, method, path, body, headers, content_length, timeout)

    def post_atoship(self, body, secret, path="/hooks/atoship"):
        """POST body signed for the atoship preset."""
        return self.post(path, body, atoship_headers(secret, body))

    def admin(self, method, path, json_body=None, token=True, headers=None, timeout=None):
        """A request to the admin API; returns (status, parsed JSON or text).

        token: True = the config's token, None = no Authorization header,
        or a string. json_body: dict/list (encoded), or str/bytes sent as is."""
        h = dict(headers or {})
        if token is True:
            token = self.token
        if token is not None:
            h["Authorization"] = "Bearer " + token
        body = None
        if json_body is not None:
            body = json_body if isinstance(json_body, (bytes, str)) else json.dumps(json_body)
            h.setdefault("Content-Type", "application/json")
        r = http_request(self.admin_port, method, path, body, h, timeout=timeout)
        text = r.body.decode("utf-8", "replace")
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError:
            data = text
        return r.status, data

    def event(self, event_id):
        """GET /api/events/{id} -> the event dict (AssertionError unless 200)."""
        st, data = self.admin("GET", "/api/events/" + event_id)
        if st != 200:
            raise AssertionError("GET /api/events/%s -> %s %s" % (event_id, st, data))
        return data

    def wait_event(self, event_id, predicate, timeout=5.0, message=None):
        """Poll event(id) until predicate(event) is true; returns the event."""
        last = {}

        def check():
            try:
                last["ev"] = self.event(event_id)
            except Exception:
                self._check_alive()
                raise
            return predicate(last["ev"])

        try:
            wait_for(check, timeout, 0.05, message or "event %s" % event_id)
        except AssertionError as e:
            raise AssertionError("%s; last seen: %s" % (e, json.dumps(last.get("ev"))[:2000]))
        return last["ev"]

    def metrics(self):
        st, text = self.admin("GET", "/metrics")
        assert st == 200, "GET /metrics -> %s" % st
        return text

    def _check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise _GatewayDied("waybill exited with code %s" % self.proc.returncode)

    def wait_for(self, predicate, timeout=5.0, message=None):
        """wait_for() that fails at once if the gateway has died meanwhile."""

        def p():
            try:
                v = predicate()
            except Exception:
                self._check_alive()
                raise
            if not v:
                self._check_alive()
            return v

        p.__name__ = getattr(predicate, "__name__", "condition")
        return wait_for(p, timeout, 0.02, message)

    # -- the store, from outside (both backends) --------------------------
    def store(self):
        """The config's `store = "..."` as written (the literal)."""
        with open(self.config_path, encoding="utf-8") as f:
            m = re.search(r'^\s*store\s*=\s*"([^"]*)"', f.read(), re.M)
        if not m:
            raise AssertionError("the config names no literal store")
        return m.group(1)

    def _pg_db(self):
        url = self.store()
        if url.startswith(("postgres://", "postgresql://")):
            db = _pg_dbs.get(url)
            if db is None:
                raise AssertionError("not a database this test made: %s" % url.split("@")[-1])
            return db
        return None

    def _sqlite_path(self):
        url = self.store()
        path = url[len("sqlite:"):] if url.startswith("sqlite:") else url
        return path if os.path.isabs(path) else self.path(path)

    def db_rows(self, sql, params=()):
        """Committed rows of the store, read by a separate connection, as
        tuples: sqlite3 on SQLite; on PostgreSQL psql as the superuser, each
        row through row_to_json (numbers as int, booleans as bool, bytea as
        bytes). `?` placeholders take params on both."""
        db = self._pg_db()
        if db is None:
            import sqlite3
            c = sqlite3.connect(self._sqlite_path(), timeout=10)
            try:
                return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                        for row in c.execute(sql, params).fetchall()]
            finally:
                c.close()
        parts = sql.split("?")
        if len(parts) != len(params) + 1:
            raise ValueError("%d placeholders, %d params" % (len(parts) - 1, len(params)))
        text = parts[0]
        for v, rest in zip(params, parts[1:]):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                text += repr(v)
            else:
                text += "'" + str(v).replace("'", "''") + "'"
            text += rest
        rows = db.sql("SELECT json_build_array(VARIADIC ARRAY(SELECT v FROM json_each(row_to_json(t)) AS j(k, v)))"
                      " FROM (%s) AS t" % text)

        def val(v):
            if isinstance(v, str) and re.fullmatch(r"\\x(?:[0-9a-f]{2})*", v):
                return bytes.fromhex(v[2:])
            return v

        return [tuple(val(v) for v in json.loads(r[0])) for r in rows]

    def delivery_rows(self):
        """[(delivery id, status, attempts)] in the order stored, committed
        (SQLite keeps them in deliveries; PostgreSQL in delivery_queue while
        pending or held, then delivery_outcomes)."""
        if self._pg_db() is None:
            return self.db_rows("SELECT id, status, attempts FROM deliveries ORDER BY seq")
        return self.db_rows("SELECT d.id, coalesce(q.status, o.status), coalesce(q.attempts, o.attempts)"
                            " FROM deliveries d LEFT JOIN delivery_queue q ON q.delivery_seq = d.seq"
                            " LEFT JOIN delivery_outcomes o ON o.delivery_seq = d.seq ORDER BY d.seq")

    def store_opened(self):
        """Whether anything opened the store: SQLite, its file exists;
        PostgreSQL, its database has a table."""
        db = self._pg_db()
        if db is None:
            return os.path.exists(self._sqlite_path())
        return db.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") != [["0"]]

    def store_down(self):
        """A context manager: while in it the store refuses writes. SQLite:
        another connection holds the write lock (BEGIN IMMEDIATE). PostgreSQL:
        the database takes no connections and the gateway's are ended
        (ALLOW_CONNECTIONS false, pg_terminate_backend); on leaving, it takes
        them again and this waits until /healthz answers 200 (the gateway
        reconnected by itself)."""
        return _StoreDown(self)

    def cli(self, *args, input=None, timeout=30):
        """Run `waybill ARGS -c DIR/waybill.lua` (e.g. g.cli("check"))."""
        return run(args[0], "-c", self.config_path, *args[1:], input=input, cwd=self.dir,
                   env=self.env, timeout=timeout)


class _GatewayDied(Exception):
    pass


class _StoreDown:
    """Gateway.store_down()'s context manager."""

    def __init__(self, g):
        self.g = g
        self.db = g._pg_db()
        self.lock = None

    def __enter__(self):
        if self.db is None:
            import sqlite3
            self.lock = sqlite3.connect(self.g._sqlite_path(), timeout=10, isolation_level=None)
            self.lock.execute("BEGIN IMMEDIATE")
        else:
            name = self.db.name
            self.db.cluster.sql("ALTER DATABASE %s ALLOW_CONNECTIONS false" % name)
            self.db.cluster.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                " WHERE datname = '%s' AND pid <> pg_backend_pid()" % name)
            # pg_terminate_backend signals; returns once the sessions are gone
            wait_for(lambda: self.db.cluster.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = '%s'"
                                                 % name) == [["0"]], timeout=10,
                     message="the gateway's sessions of %s ended" % name)
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.execute("ROLLBACK")
            self.lock.close()
            return
        self.db.cluster.sql("ALTER DATABASE %s ALLOW_CONNECTIONS true" % self.db.name)
        if exc[0] is None and self.g.running():
            self.g.wait_for(lambda: http_request(self.g.admin_port, "GET", "/healthz", timeout=2).status
                            == 200, timeout=15, message="healthy again once the database is back")


def run(*args, input=None, cwd=None, env=None, timeout=30):
    """Run the waybill binary with args; returns CompletedProcess (bytes out/err).

    e.g. wb.run("sign", "--scheme", "hex", "--secret", "k", input=body)."""
    e = dict(os.environ)
    e.update({k: str(v) for k, v in (env or {}).items()})
    b = _bin()
    if not os.access(b, os.X_OK):
        raise AssertionError("waybill binary not found or not executable: %s" % b)
    r = subprocess.run([b] + [str(a) for a in args], input=_b(input) if input is not None else None,
                       capture_output=True, cwd=cwd, env=e, timeout=timeout)
    if ASAN:
        err = r.stderr.decode("utf-8", "replace")
        for pat in SANITIZER_PATTERNS:
            if pat in err:
                raise AssertionError("sanitizer report from waybill %s:\n%s" % (" ".join(map(str, args)), err[-4000:]))
    return r


# --------------------------------------------------------------------------
# Python sink: records every request, answers as programmed
# --------------------------------------------------------------------------

class Reply:
    """One programmed answer. drop=True closes the connection without one."""

    def __init__(self, status=200, headers=None, body=b"ok", delay=0.0, drop=False):
        self.status, self.headers, self.body = status, dict(headers or {}), _b(body)
        self.delay, self.drop = delay, drop

    def __repr__(self):
        return "Reply(%s)" % self.status


def _as_reply(x, req):
    if callable(x) and not isinstance(x, Reply):
        x = x(req)
    if isinstance(x, Reply):
        return x
    if isinstance(x, int):
        return Reply(x)
    if isinstance(x, tuple):
        status = x[0]
        headers = x[1] if len(x) > 1 else None
        body = x[2] if len(x) > 2 else b"ok"
        return Reply(status, headers, body)
    raise TypeError("bad sink response %r" % (x,))


class Request:
    """A request a sink received."""

    def __init__(self, method, path, headers, body, n):
        self.time = time.time()
        self.mono = time.monotonic()
        self.method, self.path, self.headers, self.body, self.n = method, path, headers, body, n
        self.reply = None  # the status answered (None when dropped)

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return "<Request #%d %s %s %d bytes>" % (self.n, self.method, self.path, len(self.body))


class _SinkHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is visible
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls

    def log_message(self, *a):
        pass

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self):
        sink = self.server.sink
        body = self._read_body()
        hdrs = Headers(self.headers.items())
        with sink._lock:
            sink._inflight += 1
            sink.max_concurrency = max(sink.max_concurrency, sink._inflight)
            req = Request(self.command, self.path, hdrs, body, len(sink.requests) + 1)
            sink.requests.append(req)
            spec = sink._next_spec()
        # A request stops counting as in flight just before its answer leaves:
        # the sender may start its next request the moment it reads the answer,
        # before this thread would get back to a decrement placed after the write.
        done = [False]

        def leave():
            if not done[0]:
                done[0] = True
                with sink._lock:
                    sink._inflight -= 1
                    sink._cond.notify_all()

        try:
            reply = _as_reply(spec, req)
            if reply.delay:
                time.sleep(reply.delay)
            elif sink.delay:
                time.sleep(sink.delay)
            if reply.drop:
                leave()
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            req.reply = reply.status
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            if not any(k.lower() == "content-type" for k in reply.headers):
                self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(reply.body)))
            leave()
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        finally:
            leave()

    do_POST = do_PUT = do_GET = do_DELETE = do_PATCH = do_HEAD = _handle


class _SinkServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        pass  # a client (waybill) hanging up mid-request is not a sink failure


class Sink:
    """A real HTTP server on 127.0.0.1 recording every request.

    responses: a list answered in order (int status, (status, headers, body),
    Reply, or a function(req) returning one of those), then `default`; or a
    single function(req) used for every request. delay: seconds before every
    answer (a slow sink)."""

    def __init__(self, responses=None, default=200, delay=0.0, path="/hook"):
        self.requests = []
        self.max_concurrency = 0
        self.delay = delay
        self.default = default
        self._inflight = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._path = path
        self.set_responses(responses)
        self._server = _SinkServer(("127.0.0.1", 0), _SinkHandler)
        self._server.sink = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="sink-%d" % self.port)
        self._thread.start()
        _register(self)

    def set_responses(self, responses, default=None):
        """Replace the programmed answers (e.g. make a failing sink healthy)."""
        with self._lock:
            if default is not None:
                self.default = default
            self._func = responses if callable(responses) else None
            self._queue = list(responses) if isinstance(responses, (list, tuple)) else []

    def _next_spec(self):  # under _lock
        if self._func:
            return self._func
        if self._queue:
            return self._queue.pop(0)
        return self.default

    @property
    def url(self):
        return "http://127.0.0.1:%d%s" % (self.port, self._path)

    @property
    def count(self):
        return len(self.requests)

    @property
    def inflight(self):
        return self._inflight

    def wait_for_count(self, n, timeout=5.0):
        """Block until at least n requests arrived; returns the request list."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("sink %s got %d request(s), wanted %d within %gs"
                                         % (self.url, len(self.requests), n, timeout))
                self._cond.wait(min(left, 0.05))
            return list(self.requests)

    def bodies(self):
        return [r.body for r in self.requests]

    def json_bodies(self):
        return [r.json() for r in self.requests]

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _cleanup(self):
        self.stop()
        return []

    def _context(self, n):
        return ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        _unregister(self)

    def __repr__(self):
        return "<Sink %s %d requests>" % (self.url, len(self.requests))


# --------------------------------------------------------------------------
# Node receivers (tests/integration/sinks/*.js), as merchants write them
# --------------------------------------------------------------------------

NODE_KINDS = ("standard", "xsignature", "atoship-json")


def _json_loads_deep(text):
    """json.loads, also for a record of a body nested thousands deep (the
    JSON tests send such bodies; Python's default recursion limit is 1000)."""
    try:
        return json.loads(text)
    except RecursionError:
        import sys
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
        return json.loads(text)


class NodeRequest:
    """A request a Node receiver got: verdict is "valid", "invalid" or
    "error: <message>" (the receiver threw, e.g. timingSafeEqual on
    signatures of different lengths); status is what it answered."""

    def __init__(self, rec):
        self.n = rec.get("n")
        self.time = rec.get("time")
        self.method = rec.get("method")
        self.path = rec.get("path")
        self.headers = Headers(rec.get("headers") or {})
        self.body = base64.b64decode(rec.get("body_b64") or "")
        self.verdict = rec.get("verdict")
        self.status = rec.get("status")
        self.reason = rec.get("reason")  # why the receiver rejected it
        self.parsed = rec.get("parsed")  # what the receiver's own verify()/json parser produced

    @property
    def valid(self):
        return self.verdict == "valid"

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "<NodeRequest #%s %s %s -> %s>" % (self.n, self.path, self.verdict, self.status)


class NodeSink:
    """A Node receiver from tests/integration/sinks/<kind>.js.

    kind: "standard" (standardwebhooks' Webhook.verify; 200 / 401),
    "xsignature" (seed 002's Express receiver; 200 / 403),
    "atoship-json" (seed 000's express.json() receiver; 200 / 401).
    statuses: answers for verified requests, in order (then 200); invalid
    ones always get the receiver's own rejection. limit: the body parser's
    limit (default: the parser's own, 100kb, as the docs' receivers run)."""

    def __init__(self, kind, secret, statuses=None, port=0, limit=None):
        if kind not in NODE_KINDS:
            raise ValueError("kind must be one of %s" % (NODE_KINDS,))
        self.kind, self.secret = kind, secret
        self.requests = []
        self._cond = threading.Condition()
        self._dir = _mkdtemp("wb-node-")
        self.log_path = os.path.join(self._dir, "node.log")
        env = dict(os.environ)
        env.update({"SINK_SECRET": secret, "SINK_PORT": str(port),
                    "SINK_STATUSES": ",".join(str(s) for s in (statuses or [])),
                    "NODE_PATH": NODE_MODULES})
        if limit:
            env["SINK_LIMIT"] = str(limit)
        script = os.path.join(SINKS_DIR, kind + ".js")
        self._logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["node", script], cwd=os.path.join(ROOT, "tests"), env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._logf)
        _register(self)
        first = self._read_first_line(10.0)
        try:
            self.port = json.loads(first)["port"]
        except (ValueError, KeyError, TypeError):
            raise AssertionError("node sink %s did not start: %r\n%s" % (kind, first, self._context(20)))
        self._reader = threading.Thread(target=self._read_loop, daemon=True, name="node-" + kind)
        self._reader.start()

    def _read_first_line(self, timeout):
        box = {}

        def rd():
            box["line"] = self.proc.stdout.readline()

        t = threading.Thread(target=rd, daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            self.proc.kill()
            t.join(2)
            raise AssertionError("node sink %s printed no port within %gs\n%s"
                                 % (self.kind, timeout, self._context(20)))
        return box.get("line", b"").decode("utf-8", "replace")

    def _read_loop(self):
        for line in self.proc.stdout:
            try:
                rec = _json_loads_deep(line)
            except ValueError:
                continue
            with self._cond:
                self.requests.append(NodeRequest(rec))
                self._cond.notify_all()

    @property
    def url(self):
        return "http://127.0.0.1:%d/webhook" % self.port

    @property
    def verdicts(self):
        return [r.verdict for r in self.requests]

    def wait_for_count(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("node sink %s got %d request(s), wanted %d within %gs\n%s"
                                         % (self.kind, len(self.requests), n, timeout, self._context(10)))
                self._cond.wait(min(left, 0.05))
            return list(self.requests)

    def set_statuses(self, statuses):
        """Replace the programmed answers for verified requests."""
        r = http_request(self.port, "POST", "/_sink/statuses", json.dumps(list(statuses)),
                         {"Content-Type": "text/plain"})
        assert r.status == 200, r

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._logf.closed:
            self._logf.close()

    def _cleanup(self):
        self.stop()
        return []

    def _context(self, n=20):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            lines = []
        if not lines:
            return ""
        return "--- node sink %s stderr (%s) ---\n%s" % (self.kind, self.log_path, "\n".join(lines[-n:]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        _unregister(self)

    def __repr__(self):
        return "<NodeSink %s %s %d requests>" % (self.kind, getattr(self, "port", "?"), len(self.requests))


def format_exc_short(exc, test_file=None):
    """The failing line(s) of a test: frames from test files, then the error."""
    runner = os.path.join(ROOT, "tests", "run.py")
    tb = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != runner]
    frames = [f for f in tb if test_file is None or f.filename == test_file] or tb[-1:]
    lines = ["  %s:%d: %s" % (os.path.relpath(f.filename, ROOT), f.lineno, (f.line or "").strip()) for f in frames]
    return "\n".join(lines)
