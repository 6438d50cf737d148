"""The tools an operator reaches for (issue 19, second part): log formats,
systemd readiness, the install layout, the OpenAPI document, tail and listen."""

import json
import os
import re
import shutil
import socket
import subprocess
import time

import wb

SOURCE_SECRET = "src-Secret-7fQ2"
ENDPOINT_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HEADER_SECRET = "Bearer hdr-Secret-91xZ"
ADMIN_TOKEN = "adm-Secret-3kLp"


def _gateway(sink, log_format=None, extra="", env=None):
    settings = {"log_format": log_format} if log_format else {}
    return wb.Gateway(wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = {wb.lua(SOURCE_SECRET)} }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, secret = {wb.lua(ENDPOINT_SECRET)},
                          headers = {{ Authorization = {wb.lua(HEADER_SECRET)} }},
                          retry = {{ "0s", "200ms" }}, jitter = false }}
        rules "rules/"
        {extra}
    ''', token=ADMIN_TOKEN, **settings), files={"rules/10-main.lua": 'on("*", {"erp"})'}, env=env)


def _traffic(g, sink):
    """One accepted event delivered on its second attempt, a bad signature,
    an unknown path, a wrong admin token and a good admin call. Returns the
    event id."""
    body = wb.atoship_event()
    r = g.post_atoship(body, SOURCE_SECRET)
    assert r.status == 200, r
    event_id = r.json()["id"]
    assert g.post_atoship(wb.atoship_event(), "not-the-secret").status == 401
    assert g.post("/hooks/nowhere", b"{}").status == 404
    assert g.admin("GET", "/api/status", token="wrong-token")[0] == 401
    sink.wait_for_count(2, timeout=10)
    g.wait_event(event_id, lambda e: e["deliveries"][0]["status"] == "delivered")
    assert g.admin("GET", "/api/events/" + event_id)[0] == 200
    return event_id


def _lines(g):
    return [x for x in g.log().splitlines() if x and not x.startswith("--- wb:")]


def _logfmt(line):
    """A logfmt line into a dict (values bare or double-quoted with \\ escapes)."""
    out, i = {}, 0
    pat = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_.]*)=("(?:[^"\\]|\\.)*"|[^\s"]*)')
    while i < len(line):
        m = pat.match(line, i)
        assert m, "not logfmt at %d: %r" % (i, line)
        v = m.group(2)
        if v.startswith('"'):
            v = re.sub(r'\\(.)', lambda x: {"n": "\n"}.get(x.group(1), x.group(1)), v[1:-1])
        out[m.group(1)] = v
        i = m.end()
    return out


def _check_lines(records, event_id):
    """What every format must carry: one request line per request, one
    attempt line per attempt, with their ids."""
    reqs = [r for r in records if r.get("msg") == "request"]
    ok = [r for r in reqs if r.get("listener") == "inbound" and str(r.get("status")) == "200"]
    assert len(ok) == 1 and ok[0]["event"] == event_id and ok[0]["source"] == "atoship", reqs
    assert ok[0]["path"] == "/hooks/atoship" and ok[0]["method"] == "POST", ok
    # the client's address and port, as accept gave them
    assert re.fullmatch(r"127\.0\.0\.1:\d{2,5}", ok[0]["peer"]), ok
    assert any(r.get("listener") == "inbound" and str(r["status"]) == "401" for r in reqs), reqs
    assert any(r.get("listener") == "inbound" and str(r["status"]) == "404"
               and r["path"] == "/hooks/nowhere" for r in reqs), reqs
    assert any(r.get("listener") == "admin" and str(r["status"]) == "401"
               and r["path"] == "/api/status" for r in reqs), reqs
    assert any(r.get("listener") == "admin" and str(r["status"]) == "200"
               and r["path"] == "/api/events/" + event_id for r in reqs), reqs
    attempts = [r for r in records if r.get("msg") == "attempt"]
    assert [str(a["attempt"]) for a in attempts] == ["1", "2"], attempts
    assert [str(a["status"]) for a in attempts] == ["500", "200"], attempts
    assert [a["outcome"] for a in attempts] == ["pending", "delivered"], attempts
    for a in attempts:
        assert a["event"] == event_id and a["endpoint"] == "erp", a
        assert a["delivery"].startswith("dlv_") and int(a["ms"]) >= 0, a
    assert attempts[0]["delivery"] == attempts[1]["delivery"]
    assert attempts[0]["retry_in"], attempts[0]


def test_log_format_json_lines():
    sink = wb.Sink([500, 200])
    g = _gateway(sink, "json")
    event_id = _traffic(g, sink)
    records = []
    for line in _lines(g):
        rec = json.loads(line)  # every line is one JSON object
        assert isinstance(rec, dict) and {"time", "level", "msg"} <= set(rec), line
        assert rec["level"] in ("debug", "info", "warn", "error"), line
        records.append(rec)
    _check_lines(records, event_id)
    attempts = [r for r in records if r["msg"] == "attempt"]
    assert attempts[0]["status"] == 500 and attempts[0]["attempt"] == 1  # numbers, not strings
    assert any("serving" in r["msg"] for r in records), records[:5]


def test_log_format_logfmt():
    sink = wb.Sink([500, 200])
    g = _gateway(sink, "logfmt")
    event_id = _traffic(g, sink)
    records = []
    for line in _lines(g):
        rec = _logfmt(line)
        assert {"time", "level", "msg"} <= set(rec) and list(rec)[:3] == ["time", "level", "msg"], line
        records.append(rec)
    _check_lines(records, event_id)
    assert any(r["msg"].startswith("waybill ") and "serving" in r["msg"] for r in records)


def test_log_format_text_is_the_default_and_carries_the_same_fields():
    sink = wb.Sink([500, 200])
    g = _gateway(sink)
    event_id = _traffic(g, sink)
    records = []
    for line in _lines(g):
        m = re.match(r"^(\S+) (DEBUG|INFO|WARN|ERROR) +(\S+)(.*)$", line)
        assert m, line
        rec = {"msg": m.group(3)}
        if m.group(3) in ("request", "attempt"):
            rec.update(_logfmt(m.group(4)))
        records.append(rec)
    _check_lines(records, event_id)


def test_log_format_unknown_is_refused_with_its_line():
    g = wb.Gateway(wb.config('log_format = "xml"'), start=False)
    r = g.cli("check")
    err = r.stderr.decode()
    assert r.returncode != 0 and "log_format" in err and '"logfmt"' in err and "xml" in err, err
    assert re.search(r"waybill\.lua:\d+", err), err


def test_a_reload_switches_the_log_format():
    sink = wb.Sink()
    g = _gateway(sink)
    text = open(g.config_path).read()
    g.write("waybill.lua", text.replace("\nrules ", '\nlog_format = "json"\nrules ', 1))
    assert g.admin("POST", "/api/reload")[0] == 200
    assert g.admin("GET", "/api/status")[0] == 200
    last = g.wait_for(lambda: [x for x in _lines(g) if "/api/status" in x], message="status line")
    assert json.loads(last[-1])["path"] == "/api/status", last


def test_no_configured_secret_is_ever_logged():
    # Every kind of secret the config holds, at debug level, through every
    # path that logs: accepted and refused webhooks, wrong and right admin
    # tokens, deliveries that fail and succeed, a reload, and a start that
    # fails on a store URL with a password.
    for fmt in (None, "json"):  # None: the default, text
        sink = wb.Sink([500, 200])
        g = _gateway(sink, fmt, env={"WAYBILL_LOG": "debug"})
        _traffic(g, sink)
        assert g.admin("POST", "/api/reload")[0] == 200
        assert g.admin("GET", "/api/endpoints")[0] == 200
        g.stop()
        log = g.log()
        assert "attempt" in log and "request" in log, log[-2000:]
        for secret in (SOURCE_SECRET, ENDPOINT_SECRET, ENDPOINT_SECRET[6:], HEADER_SECRET,
                       HEADER_SECRET[7:], ADMIN_TOKEN):
            assert secret not in log, "%s in the %s log:\n%s" % (secret, fmt, log)
    g = wb.Gateway(wb.config("", store="postgres://waybill:pg-Secret-55@localhost/waybill"),
                   start=False)
    g.start(wait=False)
    assert g.proc.wait(timeout=wb.START_TIMEOUT) != 0
    log = g.log()
    # refused when the store opens (nothing listens there; and this build cannot serve from one)
    assert "pg-Secret-55" not in log, log
    assert "postgres://waybill:***@localhost/waybill" in log, log


# --------------------------------------------------------------------------
# systemd: Type=notify readiness, the unit file, make install, the Dockerfile
# --------------------------------------------------------------------------

def _notify_socket(abstract=False):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = "@wb-notify-%s" % os.urandom(6).hex()
        s.bind("\0" + name[1:])
    else:
        name = os.path.join(wb._mkdtemp("wb-notify-"), "notify.sock")
        s.bind(name)
    s.settimeout(wb.START_TIMEOUT)
    return s, name


def _recv_state(s):
    msg = s.recv(4096).decode()
    return dict(line.split("=", 1) for line in msg.split("\n") if line)


def _notify_run(abstract):
    s, name = _notify_socket(abstract)
    try:
        g = wb.Gateway(wb.config(""), env={"NOTIFY_SOCKET": name}, start=False)
        g.start(wait=False)
        st = _recv_state(s)
        # READY=1 comes once it serves: the admin listener answers at once
        assert st.get("READY") == "1" and st.get("MAINPID") == str(g.pid), st
        assert wb.http_request(g.admin_port, "GET", "/healthz", timeout=2).status == 200
        g.sighup()
        st = _recv_state(s)
        assert st.get("RELOADING") == "1" and int(st["MONOTONIC_USEC"]) > 0, st
        # CLOCK_MONOTONIC in microseconds, as systemd compares it
        assert abs(int(st["MONOTONIC_USEC"]) - time.monotonic_ns() // 1000) < 10_000_000, st
        assert _recv_state(s).get("READY") == "1"
        g.write("waybill.lua", open(g.config_path).read() + "\nthis is not lua\n")
        assert g.admin("POST", "/api/reload")[0] == 422   # a failed reload: ready again all the same
        assert _recv_state(s).get("RELOADING") == "1"
        st = _recv_state(s)
        assert st.get("READY") == "1" and "failed" in st.get("STATUS", ""), st
        g.send_signal(15)
        assert _recv_state(s).get("STOPPING") == "1"
        assert g.proc.wait(timeout=20) == 0
    finally:
        s.close()


def test_sd_notify_ready_reloading_stopping_on_a_path_socket():
    _notify_run(abstract=False)


def test_sd_notify_on_an_abstract_socket():
    _notify_run(abstract=True)


def test_sd_notify_to_a_missing_socket_is_logged_and_serving_goes_on():
    missing = os.path.join(wb._mkdtemp("wb-notify-"), "absent.sock")
    g = wb.Gateway(wb.config(""), env={"NOTIFY_SOCKET": missing})
    assert g.admin("GET", "/api/status")[0] == 200
    g.wait_for(lambda: "sd_notify to $NOTIFY_SOCKET failed" in g.log(), message="warning")


def _unit(path):
    """A unit file as {section: [(key, value), ...]} (keys may repeat)."""
    out, sect = {}, None
    for raw in open(path):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            sect = line.strip("[]")
            out[sect] = []
        else:
            k, v = line.split("=", 1)
            out[sect].append((k.strip(), v.strip()))
    return out


def _install(prefix):
    from test_firsthour import _tree_copy
    d, binary, build = _tree_copy()
    dest = wb._mkdtemp("wb-destdir-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    r = subprocess.run(["make", "--no-print-directory", "BIN=" + binary, "BUILD=" + build,
                        "install", "DESTDIR=" + dest, "PREFIX=" + prefix],
                       cwd=d, env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    return dest


@wb.timeout(120)
def test_make_install_with_prefix_and_destdir():
    dest = _install("/opt/wb")
    root = dest + "/opt/wb"
    files = sorted(os.path.relpath(os.path.join(a, f), dest) for a, _, fs in os.walk(dest) for f in fs)
    for want in ("opt/wb/bin/waybill", "opt/wb/share/man/man1/waybill.1",
                 "opt/wb/share/waybill/lua/waybill.lua", "opt/wb/share/waybill/lua/sources/atoship.lua",
                 "opt/wb/share/waybill/rules/00-subscribers.lua",
                 "opt/wb/lib/systemd/system/waybill.service"):
        assert want in files, (want, files)
    assert all(f.startswith("opt/wb/") for f in files), files     # nothing outside DESTDIR/PREFIX
    assert os.access(root + "/bin/waybill", os.X_OK)
    assert oct(os.stat(root + "/lib/systemd/system/waybill.service").st_mode & 0o777) == "0o644"
    unit = _unit(root + "/lib/systemd/system/waybill.service")
    exec_start = dict(unit["Service"])["ExecStart"]
    assert exec_start.startswith("/opt/wb/bin/waybill serve -c "), exec_start
    # The installed binary finds its Lua library under PREFIX/share, from anywhere.
    cfg = os.path.join(wb._mkdtemp("wb-cfg-"), "waybill.lua")
    with open(cfg, "w") as f:
        f.write('source "atoship" { verify = "atoship", secret = "s" }\n')
    env = {k: v for k, v in os.environ.items() if k != "WAYBILL_LUA_DIR"}
    r = subprocess.run([root + "/bin/waybill", "check", "-c", cfg], cwd="/", env=env,
                       capture_output=True, timeout=30)
    assert r.returncode == 0 and b"ok" in r.stdout, (r.stdout, r.stderr)


HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
             "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
             "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
             "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
             "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "CapabilityBoundingSet": "",
             "SystemCallArchitectures": "native", "StateDirectory": "waybill"}


@wb.timeout(120)
def test_the_unit_file_is_type_notify_hardened_and_verifies():
    unit = _unit(os.path.join(wb.ROOT, "examples", "waybill.service"))
    svc = dict(unit["Service"])
    assert svc["Type"] == "notify" and svc["ExecReload"] == "/bin/kill -HUP $MAINPID", svc
    assert svc["ExecStart"] == "/usr/bin/waybill serve -c /etc/waybill/waybill.lua", svc
    for k, v in HARDENING.items():
        assert svc.get(k) == v, (k, svc.get(k))
    assert dict(unit["Install"])["WantedBy"] == "multi-user.target"
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        return  # the checks above still ran; systemd's own below when it is there
    # systemd's verdict on the installed unit, its ExecStart pointing into DESTDIR
    dest = _install("/usr")
    d = wb._mkdtemp("wb-unit-")
    text = open(dest + "/usr/lib/systemd/system/waybill.service").read()
    with open(os.path.join(d, "waybill.service"), "w") as f:
        f.write(text.replace("ExecStart=/usr/bin/waybill", "ExecStart=%s/usr/bin/waybill" % dest))
    r = subprocess.run([analyze, "verify", "--man=no", os.path.join(d, "waybill.service")],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    r = subprocess.run([analyze, "security", "--offline=true", os.path.join(d, "waybill.service")],
                       capture_output=True, timeout=60)
    m = re.search(rb"Overall exposure level for waybill.service: ([0-9.]+)", r.stdout)
    assert m and float(m.group(1)) <= 2.0, r.stdout.decode()[-1500:]


def _dockerfile():
    """examples/Dockerfile as [(INSTRUCTION, argument text)], continuations joined."""
    out, cur = [], ""
    for raw in open(os.path.join(wb.ROOT, "examples", "Dockerfile")):
        line = raw.rstrip("\n")
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        ins, _, arg = cur.strip().partition(" ")
        out.append((ins.upper(), arg.strip()))
        cur = ""
    assert not cur, "a continuation runs off the end"
    return out


def _apt_packages(run_arg):
    m = re.search(r"apt-get install ([^&]*)", run_arg)
    return {w for w in m.group(1).split() if not w.startswith("-")}


def test_the_dockerfile_builds_from_debian_12_slim_with_what_the_binary_needs():
    ins = _dockerfile()
    known = {"FROM", "RUN", "COPY", "WORKDIR", "USER", "VOLUME", "EXPOSE", "STOPSIGNAL",
             "ENTRYPOINT", "CMD", "ENV", "ARG", "LABEL", "HEALTHCHECK"}
    assert all(i in known for i, _ in ins), [i for i, _ in ins if i not in known]
    froms = [a for i, a in ins if i == "FROM"]
    assert froms == ["debian:12-slim AS build", "debian:12-slim"], froms
    stage = [i for i, (k, _) in enumerate(ins) if k == "FROM"]
    build, runtime = ins[stage[0]:stage[1]], ins[stage[1]:]
    # every COPY from the context names a path of the repository
    for k, a in ins:
        if k == "COPY" and not a.startswith("--from"):
            for src in a.split()[:-1]:
                assert os.path.exists(os.path.join(wb.ROOT, src)), src
    # the build stage installs the Makefile's build packages
    debs = re.search(r"^DEBS\s*:=((?:.*\\\n)*.*)$", open(os.path.join(wb.ROOT, "Makefile")).read(), re.M)
    want = set(debs.group(1).replace("\\", " ").split())
    got = set().union(*[_apt_packages(a) for k, a in build if k == "RUN" and "apt-get install" in a])
    assert want <= got, want - got
    # the runtime stage installs the package of every library the binary links
    runtime_pkgs = set().union(*[_apt_packages(a) for k, a in runtime if k == "RUN" and "apt-get install" in a])
    needed = set()
    direct = subprocess.run(["readelf", "-d", wb._bin()], capture_output=True, text=True).stdout
    for line in subprocess.run(["ldd", wb._bin()], capture_output=True, text=True).stdout.splitlines():
        m = re.match(r"\s*(\S+) => (\S+)", line)
        if not m or "[%s]" % m.group(1) not in direct or "asan" in m.group(1) or "ubsan" in m.group(1):
            continue
        p = subprocess.run(["dpkg", "-S", os.path.realpath(m.group(2))], capture_output=True, text=True)
        if p.returncode != 0:
            p = subprocess.run(["dpkg", "-S", m.group(2)], capture_output=True, text=True)
        assert p.returncode == 0, (m.group(2), p.stderr)
        needed.add(p.stdout.split(":")[0])
    assert "libsqlite3-0" in needed and "libcurl4" in needed, needed
    assert needed - {"libc6"} <= runtime_pkgs, (needed - {"libc6"}) - runtime_pkgs
    # what it runs: the installed binary, on the config the image copies in
    cmd = json.loads([a for k, a in runtime if k == "CMD"][0])
    entry = json.loads([a for k, a in runtime if k == "ENTRYPOINT"][0])
    assert entry == ["/usr/bin/waybill"] and cmd[:2] == ["serve", "-c"], (entry, cmd)
    copies = {a.split()[-1]: a.split()[0] for k, a in runtime if k == "COPY" and not a.startswith("--")}
    assert copies[cmd[2]] == "examples/docker.lua", copies
    # which passes `waybill check` with its rules beside it and its env set
    d = wb._mkdtemp("wb-docker-")
    with open(os.path.join(d, "waybill.lua"), "w") as f:
        f.write(open(os.path.join(wb.ROOT, "examples", "docker.lua")).read())
    os.makedirs(os.path.join(d, "rules"))
    rules_dest = [a for k, a in runtime if k == "COPY" and a.split()[-1].startswith("/etc/waybill/rules")]
    assert rules_dest, runtime
    for n in os.listdir(os.path.join(wb.ROOT, "rules")):
        with open(os.path.join(d, "rules", n), "w") as f:
            f.write(open(os.path.join(wb.ROOT, "rules", n)).read())
    r = wb.run("check", "-c", os.path.join(d, "waybill.lua"),
               env={"WAYBILL_ADMIN_TOKEN": "t", "ATOSHIP_SECRET": "s"})
    assert r.returncode == 0, r.stderr.decode()


# --------------------------------------------------------------------------
# The OpenAPI document against the real answers
# --------------------------------------------------------------------------

# 503s the document lists that no test provokes: a store that fails a read
# (a WAL reader is not stopped by a writer's lock, the way writes are
# provoked below), a retry's write (it needs a failed delivery, and the
# one this test has is delivered by then), and a store or loop that stops
# answering /healthz.
NOT_PROVOKED = {
    ("/api/status", "get", "503"), ("/api/events", "get", "503"), ("/api/events/{id}", "get", "503"),
    ("/api/deliveries", "get", "503"),
    ("/api/deliveries/{id}/retry", "post", "503"), ("/api/endpoints", "get", "503"),
    ("/api/endpoints/{name}", "get", "503"),
    ("/metrics", "get", "503"), ("/healthz", "get", "503"),
}


def _openapi_gateway():
    sink = wb.Sink([500])
    g = wb.Gateway(wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = "s" }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, sign = "hex", secret = "k", retry = {{ "0s" }} }}
        endpoint "off" {{ url = {wb.lua(sink.url)}, sign = "hex", secret = "k", enabled = false }}
        endpoint "wh" {{ url = {wb.lua(sink.url)}, sign = "hex", secret = "k", window = "1h" }}
        endpoint "keyed" {{ url = "http://127.0.0.1:9/refused", sign = "none", retry = {{ "0s" }},
                            ordered = "data.order_id" }}
        rules "rules/"
    ''', environment="sandbox"), files={
        "rules/10.lua": 'on("shipment.*", {"erp"})\non("shipment.*", {"keyed"})\n'
                        'on("tracking.*", function(ev) batch("wh", ev) end)'})
    return g, sink


class _Locked:
    """The store refusing writes (g.store_down(): on SQLite another writer's
    BEGIN IMMEDIATE, on PostgreSQL the database taking no connections):
    writes answer 503."""

    def __init__(self, g):
        self.down = g.store_down()

    def __enter__(self):
        self.down.__enter__()

    def __exit__(self, *exc):
        self.down.__exit__(*exc)
        # the gateway ends the group that failed on its next loop turn; a
        # request in that instant is still answered 503 (a carrier retries)
        time.sleep(0.1)


def _raw(g, method, path, body=None, token=True):
    h = {}
    if token:
        h["Authorization"] = "Bearer " + (token if isinstance(token, str) else g.token)
    if body is not None:
        body = json.dumps(body) if not isinstance(body, str) else body
        h["Content-Type"] = "application/json"
    return wb.http_request(g.admin_port, method.upper(), path, body, h)


def _page(g, path, body, origin=None):
    """A POST as the dashboard's page makes it: JSON, from its own origin."""
    return wb.http_request(g.admin_port, "POST", path, body,
                           {"Content-Type": "application/json",
                            "Origin": origin or "http://127.0.0.1:%d" % g.admin_port})


def _stream_head(g):
    """GET /api/stream: its status, headers and first line (it never ends)."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", g.admin_port, timeout=10)
    try:
        conn.request("GET", "/api/stream", headers={"Authorization": "Bearer " + g.token})
        r = conn.getresponse()
        return wb.Response(r.status, wb.Headers((k.lower(), v) for k, v in r.getheaders()),
                           r.readline())
    finally:
        conn.close()


def _cases(g, sink):
    """(template, method, status, thunk) for every answer the test provokes;
    each thunk makes the request and returns the Response."""
    ev = g.post_atoship(wb.atoship_event(), "s").json()["id"]
    sink.wait_for_count(1)
    g.wait_event(ev, lambda e: e["deliveries"] and e["deliveries"][0]["status"] == "failed")
    batched = g.post_atoship(wb.atoship_event(type="tracking.in_transit"), "s").json()["id"]
    dlv = g.event(ev)["deliveries"][0]["id"]
    g.wait_event(ev, lambda e: [d for d in e["deliveries"] if d["endpoint"] == "keyed"][0]["status"]
                 == "failed")
    keyed = [d for d in g.event(ev)["deliveries"] if d["endpoint"] == "keyed"][0]["id"]
    sink.set_responses([], default=200)
    hook = {}

    def create_hook():
        r = _raw(g, "post", "/v1/environment/webhooks", {"url": sink.url, "event": "track"})
        hook["id"] = json.loads(r.body)["webhook_id"]
        return r

    def locked(fn):
        def run():
            with _Locked(g):
                return fn()
        return run

    refused = "http://127.0.0.1:%d/x" % wb.free_port()
    W = "/v1/environment/webhooks"
    WI = W + "/{webhook_id}"
    S = "/api/subscriptions"
    return [
        ("/healthz", "get", "200", lambda: _raw(g, "get", "/healthz", token=None)),
        ("/api/status", "get", "200", lambda: _raw(g, "get", "/api/status")),
        ("/api/status", "get", "401", lambda: _raw(g, "get", "/api/status", token="wrong")),
        ("/api/openapi.json", "get", "200", lambda: _raw(g, "get", "/api/openapi.json")),
        ("/api/openapi.json", "get", "401", lambda: _raw(g, "get", "/api/openapi.json", token=None)),
        ("/api/events", "get", "200", lambda: _raw(g, "get", "/api/events?limit=1")),
        ("/api/events", "get", "400", lambda: _raw(g, "get", "/api/events?status=bogus")),
        ("/api/events", "get", "200",
         lambda: _raw(g, "get", "/api/events?since=2020-01-01T00:00:00Z&until=%d" % (time.time() * 1000 + 1))),
        ("/api/events", "get", "400", lambda: _raw(g, "get", "/api/events?since=yesterday")),
        ("/api/events", "get", "401", lambda: _raw(g, "get", "/api/events", token=None)),
        ("/api/events/{id}", "get", "200", lambda: _raw(g, "get", "/api/events/" + ev)),
        ("/api/events/{id}", "get", "200", lambda: _raw(g, "get", "/api/events/" + batched)),
        ("/api/events/{id}", "get", "401", lambda: _raw(g, "get", "/api/events/" + ev, token=None)),
        ("/api/events/{id}", "get", "404", lambda: _raw(g, "get", "/api/events/evt_nope")),
        ("/api/deliveries", "get", "200", lambda: _raw(g, "get", "/api/deliveries")),
        ("/api/deliveries", "get", "400", lambda: _raw(g, "get", "/api/deliveries?limit=0")),
        ("/api/deliveries", "get", "401", lambda: _raw(g, "get", "/api/deliveries", token=None)),
        ("/api/deliveries/{id}/retry", "post", "200", lambda: _raw(g, "post", "/api/deliveries/%s/retry" % dlv)),
        ("/api/deliveries/{id}/retry", "post", "401", lambda: _raw(g, "post", "/api/deliveries/%s/retry" % dlv, token=None)),
        ("/api/deliveries/{id}/retry", "post", "404", lambda: _raw(g, "post", "/api/deliveries/dlv_nope/retry")),
        ("/api/deliveries/{id}/skip", "post", "401", lambda: _raw(g, "post", "/api/deliveries/%s/skip" % keyed, token=None)),
        ("/api/deliveries/{id}/skip", "post", "404", lambda: _raw(g, "post", "/api/deliveries/dlv_nope/skip")),
        ("/api/deliveries/{id}/skip", "post", "409", lambda: _raw(g, "post", "/api/deliveries/%s/skip" % dlv)),
        ("/api/deliveries/{id}/skip", "post", "503", locked(lambda: _raw(g, "post", "/api/deliveries/%s/skip" % keyed))),
        ("/api/deliveries/{id}/skip", "post", "200", lambda: _raw(g, "post", "/api/deliveries/%s/skip" % keyed)),
        ("/api/endpoints/{name}", "get", "200", lambda: _raw(g, "get", "/api/endpoints/keyed")),
        ("/api/endpoints/{name}", "get", "200", lambda: _raw(g, "get", "/api/endpoints/erp")),
        ("/api/endpoints/{name}", "get", "401", lambda: _raw(g, "get", "/api/endpoints/erp", token=None)),
        ("/api/endpoints/{name}", "get", "404", lambda: _raw(g, "get", "/api/endpoints/nope")),
        # the dashboard's routes (admin_web.c)
        ("/index.html", "get", "200", lambda: _raw(g, "get", "/index.html", token=None)),
        ("/session", "get", "200", lambda: _raw(g, "get", "/session", token=None)),
        ("/login", "post", "204", lambda: _page(g, "/login", json.dumps({"token": g.token}))),
        ("/login", "post", "400", lambda: _page(g, "/login", "{oops")),
        ("/login", "post", "401", lambda: _page(g, "/login", json.dumps({"token": "wrong"}))),
        ("/login", "post", "403", lambda: _page(g, "/login", json.dumps({"token": g.token}),
                                                origin="http://elsewhere.example")),
        ("/logout", "post", "204", lambda: _page(g, "/logout", "")),
        ("/api/series", "get", "200", lambda: _raw(g, "get", "/api/series")),
        ("/api/series", "get", "401", lambda: _raw(g, "get", "/api/series", token=None)),
        ("/api/rules", "get", "200", lambda: _raw(g, "get", "/api/rules")),
        ("/api/rules", "get", "401", lambda: _raw(g, "get", "/api/rules", token=None)),
        ("/api/batches", "get", "200", lambda: _raw(g, "get", "/api/batches")),
        ("/api/batches", "get", "401", lambda: _raw(g, "get", "/api/batches", token=None)),
        ("/api/find", "get", "200", lambda: _raw(g, "get", "/api/find?q=" + ev)),
        ("/api/find", "get", "400", lambda: _raw(g, "get", "/api/find?q=ab")),
        ("/api/find", "get", "401", lambda: _raw(g, "get", "/api/find?q=abc", token=None)),
        ("/api/dryrun", "post", "200", lambda: _raw(g, "post", "/api/dryrun", {"event_id": ev})),
        ("/api/dryrun", "post", "400", lambda: _raw(g, "post", "/api/dryrun", "{oops")),
        ("/api/dryrun", "post", "401", lambda: _raw(g, "post", "/api/dryrun", {"event_id": ev}, token=None)),
        ("/api/dryrun", "post", "404", lambda: _raw(g, "post", "/api/dryrun", {"event_id": "evt_nope"})),
        ("/api/deliveries/{id}/retry", "post", "409",
         lambda: (sink.wait_for_count(2), g.wait_for(lambda: g.event(ev)["deliveries"][0]["status"] == "delivered"),
                  _raw(g, "post", "/api/deliveries/%s/retry" % dlv))[-1]),
        ("/api/events/{id}/replay", "post", "200", lambda: _raw(g, "post", "/api/events/%s/replay" % ev)),
        ("/api/events/{id}/replay", "post", "401", lambda: _raw(g, "post", "/api/events/%s/replay" % ev, token=None)),
        ("/api/events/{id}/replay", "post", "503", locked(lambda: _raw(g, "post", "/api/events/%s/replay" % ev))),
        ("/api/events/{id}/replay", "post", "404", lambda: _raw(g, "post", "/api/events/evt_nope/replay")),
        ("/api/endpoints", "get", "200", lambda: _raw(g, "get", "/api/endpoints")),
        ("/api/endpoints", "get", "401", lambda: _raw(g, "get", "/api/endpoints", token=None)),
        ("/api/endpoints/{name}/disable", "post", "503", locked(lambda: _raw(g, "post", "/api/endpoints/erp/disable"))),
        ("/api/endpoints/{name}/disable", "post", "200", lambda: _raw(g, "post", "/api/endpoints/erp/disable")),
        ("/api/endpoints/{name}/disable", "post", "401", lambda: _raw(g, "post", "/api/endpoints/erp/disable", token=None)),
        ("/api/endpoints/{name}/disable", "post", "404", lambda: _raw(g, "post", "/api/endpoints/nope/disable")),
        ("/api/endpoints/{name}/enable", "post", "503", locked(lambda: _raw(g, "post", "/api/endpoints/erp/enable"))),
        ("/api/endpoints/{name}/enable", "post", "200", lambda: _raw(g, "post", "/api/endpoints/erp/enable")),
        ("/api/endpoints/{name}/enable", "post", "401", lambda: _raw(g, "post", "/api/endpoints/erp/enable", token=None)),
        ("/api/endpoints/{name}/enable", "post", "404", lambda: _raw(g, "post", "/api/endpoints/nope/enable")),
        ("/api/endpoints/{name}/enable", "post", "409", lambda: _raw(g, "post", "/api/endpoints/off/enable")),
        ("/api/endpoints/{name}/test", "post", "202", lambda: _raw(g, "post", "/api/endpoints/erp/test", {"type": "tracking.delivered"})),
        ("/api/endpoints/{name}/test", "post", "400", lambda: _raw(g, "post", "/api/endpoints/erp/test", {"type": "nope"})),
        ("/api/endpoints/{name}/test", "post", "401", lambda: _raw(g, "post", "/api/endpoints/erp/test", {"type": "tracking.delivered"}, token=None)),
        ("/api/endpoints/{name}/test", "post", "404", lambda: _raw(g, "post", "/api/endpoints/nope/test", {"type": "tracking.delivered"})),
        ("/api/endpoints/{name}/test", "post", "503", locked(lambda: _raw(g, "post", "/api/endpoints/erp/test", {"type": "tracking.delivered"}))),
        ("/api/reload", "post", "200", lambda: _raw(g, "post", "/api/reload")),
        ("/api/reload", "post", "401", lambda: _raw(g, "post", "/api/reload", token=None)),
        ("/api/reload", "post", "422", lambda: (g.write("rules/20.lua", "on(("), _raw(g, "post", "/api/reload"),
                                                 g.remove("rules/20.lua"))[1]),
        (W, "get", "200", lambda: _raw(g, "get", W)),
        (W, "get", "401", lambda: _raw(g, "get", W, token=None)),
        (W, "post", "200", create_hook),
        (W, "post", "400", lambda: _raw(g, "post", W, "nope")),
        (W, "post", "401", lambda: _raw(g, "post", W, {"url": sink.url, "event": "track"}, token=None)),
        (W, "post", "409", lambda: _raw(g, "post", W, {"url": sink.url, "event": "track"})),
        (W, "post", "422", lambda: _raw(g, "post", W, {"url": refused, "event": "batch"})),
        (W, "post", "503", locked(lambda: _raw(g, "post", W, {"url": sink.url, "event": "rate"}))),
        (WI, "get", "200", lambda: _raw(g, "get", W + "/" + hook["id"])),
        (WI, "get", "401", lambda: _raw(g, "get", W + "/" + hook["id"], token=None)),
        (WI, "get", "404", lambda: _raw(g, "get", W + "/se-nope")),
        (WI, "put", "204", lambda: _raw(g, "put", W + "/" + hook["id"], {"url": sink.url + "?v=2"})),
        (WI, "put", "400", lambda: _raw(g, "put", W + "/" + hook["id"], {"url": "ftp://x"})),
        (WI, "put", "401", lambda: _raw(g, "put", W + "/" + hook["id"], {"url": sink.url}, token=None)),
        (WI, "put", "404", lambda: _raw(g, "put", W + "/se-nope", {"url": sink.url})),
        (WI, "put", "503", locked(lambda: _raw(g, "put", W + "/" + hook["id"], {"url": sink.url + "?v=3"}))),
        (WI, "put", "422", lambda: _raw(g, "put", W + "/" + hook["id"], {"url": refused})),
        (S, "get", "200", lambda: _raw(g, "get", S)),
        (S, "get", "400", lambda: _raw(g, "get", S + "?limit=0")),
        (S, "get", "401", lambda: _raw(g, "get", S, token=None)),
        (S + "/{id}", "get", "200", lambda: _raw(g, "get", S + "/" + hook["id"])),
        (S + "/{id}", "get", "401", lambda: _raw(g, "get", S + "/" + hook["id"], token=None)),
        (S + "/{id}", "get", "404", lambda: _raw(g, "get", S + "/se-nope")),
        (S + "/{id}/rotate", "post", "503", locked(lambda: _raw(g, "post", S + "/%s/rotate" % hook["id"]))),
        (S + "/{id}/rotate", "post", "200", lambda: _raw(g, "post", S + "/%s/rotate" % hook["id"])),
        (S + "/{id}/rotate", "post", "401", lambda: _raw(g, "post", S + "/%s/rotate" % hook["id"], token=None)),
        (S + "/{id}/rotate", "post", "404", lambda: _raw(g, "post", S + "/se-nope/rotate")),
        (WI, "delete", "503", locked(lambda: _raw(g, "delete", W + "/" + hook["id"]))),
        (WI, "delete", "204", lambda: _raw(g, "delete", W + "/" + hook["id"])),
        (WI, "delete", "401", lambda: _raw(g, "delete", W + "/" + hook["id"], token=None)),
        (WI, "delete", "404", lambda: _raw(g, "delete", W + "/" + hook["id"])),
        ("/api/stream", "get", "200", lambda: _stream_head(g)),
        ("/api/stream", "get", "400", lambda: _raw(g, "get", "/api/stream?kind=nope")),
        ("/api/stream", "get", "401", lambda: _raw(g, "get", "/api/stream", token=None)),
        ("/metrics", "get", "200", lambda: _raw(g, "get", "/metrics")),
        ("/metrics", "get", "401", lambda: _raw(g, "get", "/metrics", token=None)),
        ("/api/stream", "get", "503", lambda: _stopping(g, sink)),   # the last: it stops the gateway
    ]


def _stopping(g, sink):
    """SIGTERM with a delivery in flight (the gateway finishing it), then a
    new stream: 503."""
    sink.set_responses([wb.Reply(200, delay=2.0)])
    g.post_atoship(wb.atoship_event(), "s")
    g.wait_for(lambda: sink.inflight >= 1, message="a delivery in flight")
    g.send_signal(15)
    time.sleep(0.2)
    return _raw(g, "get", "/api/stream")


def _doc_statuses(doc):
    out = set()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch", "head", "options"):
                out |= {(path, method, code) for code in op["responses"]}
    return out


def _validate(doc, answers):
    r = subprocess.run(["node", os.path.join(wb.HERE, "openapi_check.js")],
                       input=json.dumps({"doc": doc, "answers": answers}).encode(),
                       capture_output=True, timeout=60, env=dict(os.environ, NODE_PATH=wb.NODE_MODULES))
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def _refs_resolve(doc):
    def walk(o):
        if isinstance(o, dict):
            if "$ref" in o:
                cur = doc
                for part in o["$ref"][2:].split("/"):
                    cur = cur[part.replace("~1", "/").replace("~0", "~")]
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(doc)


@wb.timeout(120)
def test_openapi_document_matches_every_route_and_status_of_the_real_api():
    g, sink = _openapi_gateway()
    r = _raw(g, "get", "/api/openapi.json")
    assert r.status == 200 and r.headers["content-type"] == "application/json", r
    doc = json.loads(r.body)
    with open(os.path.join(wb.ROOT, "core", "web", "openapi.json"), "rb") as f:
        assert f.read() == r.body                      # the source file, as built in
    assert doc["openapi"] == "3.1.0", doc.get("openapi")
    _refs_resolve(doc)
    ids = [op["operationId"] for item in doc["paths"].values() for m, op in item.items() if m != "parameters"]
    assert len(ids) == len(set(ids)), ids
    # every route piece the admin module matches ("/api/events/", "/replay")
    # is part of a documented path
    src = "".join(open(os.path.join(wb.ROOT, "core", n)).read()
                  for n in os.listdir(os.path.join(wb.ROOT, "core")) if n.startswith("admin") and n.endswith(".c"))
    pieces = {p for p in re.findall(r'"(/[a-z][a-zA-Z0-9_./-]*)"', src)}
    assert {"/api/events/", "/replay", "/healthz"} <= pieces, pieces   # the scan sees them
    for piece in pieces:
        assert any(piece in path for path in doc["paths"]), "%s is served, not documented" % piece
    # a method a webhook path does not list: 405 in ShipEngine's error shape
    r = _raw(g, "patch", "/v1/environment/webhooks")
    assert r.status == 405 and set(json.loads(r.body)) == {"request_id", "errors"}, r
    # a path the document does not list: 404
    r = _raw(g, "get", "/api/nope")
    assert r.status == 404 and set(json.loads(r.body)) == {"error"}, r
    cases = _cases(g, sink)
    provoked = {(p, m, s) for p, m, s, _ in cases}
    documented = _doc_statuses(doc)
    assert provoked - documented == set(), "answers the document lacks: %s" % sorted(provoked - documented)
    assert documented - provoked == NOT_PROVOKED, "documented, never provoked: %s" % sorted(
        (documented - provoked) - NOT_PROVOKED)
    answers = []
    for path, method, status, thunk in cases:
        resp = thunk()
        assert str(resp.status) == status, (path, method, status, resp)
        answers.append({"path": path, "method": method, "status": resp.status,
                        "content_type": resp.headers.get("content-type", ""),
                        "body": resp.body.decode("utf-8", "replace")})
    verdicts = _validate(doc, answers)
    bad = ["%s %s %s: %s" % (a["method"], a["path"], a["status"], v) for a, v in zip(answers, verdicts) if v]
    assert not bad, "\n".join(bad)

def test_openapi_validation_catches_a_wrong_answer():
    # The checker is not a rubber stamp: a field too many, a wrong type, an
    # undocumented status each fail.
    with open(os.path.join(wb.ROOT, "core", "web", "openapi.json")) as f:
        doc = json.load(f)
    good = {"path": "/api/endpoints/{name}/disable", "method": "post", "status": 200,
            "content_type": "application/json", "body": '{"name":"erp","disabled":true}'}
    extra = dict(good, body='{"name":"erp","disabled":true,"secret":"x"}')
    typed = dict(good, body='{"name":"erp","disabled":"yes"}')
    status = dict(good, status=418)
    v = _validate(doc, [good, extra, typed, status])
    assert v[0] is None and all(v[1:]), v


# --------------------------------------------------------------------------
# The live feed: GET /api/stream, waybill tail, waybill listen
# --------------------------------------------------------------------------

class _Proc:
    """A waybill client command running beside the gateway; its stdout read
    line by line on a thread."""

    def __init__(self, *args):
        import threading
        self.lines, self.err = [], b""
        self.p = subprocess.Popen([wb._bin()] + list(args), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        wb._register(self)

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.decode().rstrip("\n"))

    def wait_lines(self, pred, n=1, timeout=10):
        wb.wait_for(lambda: len([x for x in self.lines if pred(x)]) >= n, timeout,
                    message="%d lines; got %s" % (n, self.lines))
        return [x for x in self.lines if pred(x)]

    def wait_ready(self, text, timeout=10):
        """stderr's or stdout's ready line (printed once the stream answered)."""
        import select
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in x for x in self.lines):
                return
            r, _, _ = select.select([self.p.stderr], [], [], 0.05)
            if r:
                chunk = os.read(self.p.stderr.fileno(), 4096)
                self.err += chunk
                if text.encode() in self.err:
                    return
                if not chunk:
                    break
        raise AssertionError("not ready: %r %r %s" % (self.err, self.lines, self.p.poll()))

    def finish(self, timeout=10):
        rc = self.p.wait(timeout)
        self.err += self.p.stderr.read()
        self._t.join(5)
        return rc

    def _cleanup(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        return []


def _feed_gateway(sink, **kw):
    return wb.Gateway(wb.config(f'''
        source "atoship" {{ verify = "atoship", secret = "s" }}
        endpoint "erp" {{ url = {wb.lua(sink.url)}, sign = "hex", secret = "k",
                          retry = {{ "0s", "200ms" }}, jitter = false }}
        rules "rules/"
    ''', **kw), files={"rules/10.lua": 'on("shipment.*", {"erp"})'})


def test_stream_is_server_sent_events_of_events_and_attempts():
    sink = wb.Sink([500, 200])
    g = _feed_gateway(sink)
    conn = __import__("http.client").client.HTTPConnection("127.0.0.1", g.admin_port, timeout=10)
    conn.request("GET", "/api/stream", headers={"Authorization": "Bearer " + g.token})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream", r.status
    assert r.getheader("Cache-Control") == "no-store"
    assert r.readline() == b"retry: 2000\n"     # the stream is open before anything happens
    evt = g.post_atoship(wb.atoship_event(), "s").json()["id"]
    msgs, cur = [], {}
    while len([m for m in msgs if m.get("event") == "attempt"]) < 2:
        line = r.readline().decode().rstrip("\n")
        if line == "":
            if "data" in cur:
                msgs.append(cur)
            cur = {}
        elif not line.startswith(":"):
            k, _, v = line.partition(": ")
            cur[k] = v
    conn.close()
    kinds = [m["event"] for m in msgs]
    assert kinds[0] == "event", kinds
    ids = [int(m["id"]) for m in msgs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    ev = json.loads(msgs[0]["data"])
    assert ev["id"] == evt and ev["source"] == "atoship" and ev["type"] == "shipment.delivered", ev
    assert ev["status"] == "routed" and ev["data"]["tracking_number"], ev
    with open(os.path.join(wb.ROOT, "core", "web", "openapi.json")) as f:
        shapes = json.load(f)["paths"]["/api/stream"]["get"]["responses"]["200"]["x-messages"]
    verdicts = _validate(json.load(open(os.path.join(wb.ROOT, "core", "web", "openapi.json"))),
                         [{"schema": shapes[m["event"]], "body": m["data"]} for m in msgs])
    assert verdicts == [None] * len(msgs), list(zip(verdicts, msgs))
    att = [json.loads(m["data"]) for m in msgs if m["event"] == "attempt"]
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in att] == [(1, 500, "pending"), (2, 200, "delivered")], att
    assert att[0]["event"] == evt and att[0]["endpoint"] == "erp" and att[0]["next_at"], att
    assert att[1]["next_at"] is None and att[0]["delivery"] == att[1]["delivery"], att
    # a client gone without a word is forgotten; the gateway serves on
    g.post_atoship(wb.atoship_event(), "s")
    sink.wait_for_count(3)
    assert g.admin("GET", "/api/status")[0] == 200
    # filters are checked
    st, body = g.admin("GET", "/api/stream?status=bogus")
    assert st == 400 and "status must be" in body["error"], body
    st, body = g.admin("GET", "/api/stream?colour=red")
    assert st == 400 and "unknown parameter" in body["error"], body
    assert g.admin("GET", "/api/stream", token="wrong")[0] == 401


def test_tail_prints_each_event_and_attempt_and_filters():
    sink = wb.Sink([500, 200])
    g = _feed_gateway(sink)
    every = _Proc("tail", "-c", g.config_path)
    erp = _Proc("tail", "-c", g.config_path, "--json", "--endpoint", "erp")
    events = _Proc("tail", "-c", g.config_path, "--json", "--source", "atoship", "--type", "shipment.*")
    failed = _Proc("tail", "-c", g.config_path, "--json", "--status", "delivered", "--kind", "attempt")
    for p in (every, erp, events, failed):
        p.wait_ready("following")
    evt = g.post_atoship(wb.atoship_event(), "s").json()["id"]
    g.post_atoship(wb.atoship_event(type="tracking.in_transit"), "s")  # routed nowhere
    lines = every.wait_lines(lambda x: " attempt " in x, 2)
    assert re.search(r"^\d\d:\d\d:\d\d\.\d{3}  attempt  dlv_\S+  erp  #1  500  \d+ms  pending, next \d\d:\d\d:\d\d\.\d{3}  " + evt + "$", lines[0]), lines
    assert re.search(r"  #2  200  \d+ms  delivered  " + evt + "$", lines[1]), lines
    ev_lines = every.wait_lines(lambda x: " event " in x, 2)
    assert re.search(r"^\d\d:\d\d:\d\d\.\d{3}  event    %s  atoship  shipment.delivered  routed$" % evt, ev_lines[0]), ev_lines
    assert ev_lines[1].endswith("tracking.in_transit  unrouted"), ev_lines
    got = [json.loads(x) for x in erp.wait_lines(lambda x: True, 2)]
    assert [(m["kind"], m["endpoint"], m["attempt"]) for m in got] == [("attempt", "erp", 1), ("attempt", "erp", 2)], got
    got = [json.loads(x) for x in events.wait_lines(lambda x: True, 1)]
    assert [(m["kind"], m["id"]) for m in got] == [("event", evt)], got
    got = [json.loads(x) for x in failed.wait_lines(lambda x: True, 1)]
    assert [(m["kind"], m["outcome"], m["attempt"]) for m in got] == [("attempt", "delivered", 2)], got
    time.sleep(0.3)  # nothing else comes through the filters
    assert len(erp.lines) == 2 and len(events.lines) == 1 and len(failed.lines) == 1, (erp.lines, events.lines)
    # the gateway stops (cleanly, streams open): tail says so and exits 1
    assert g.stop() == 0
    assert every.finish() == 1 and b"the gateway closed the stream" in every.err, every.err


def test_tail_refusals_name_their_cause():
    sink = wb.Sink()
    g = _feed_gateway(sink)
    p = _Proc("tail", "-c", g.config_path, "--status", "bogus")
    assert p.finish() == 1 and b"HTTP 400: status must be" in p.err, p.err
    p = _Proc("tail", "--url", "http://127.0.0.1:%d" % g.admin_port, "--token", "wrong")
    assert p.finish() == 1 and b"HTTP 401" in p.err, p.err
    p = _Proc("tail", "--url", "http://127.0.0.1:%d" % wb.free_port(), "--token", "t")
    assert p.finish() == 1 and b"connect" in p.err.lower(), p.err
    r = wb.run("tail", "-c", g.config_path, "extra")
    assert r.returncode == 2 and b"usage" in r.stderr, r
    r = wb.run("listen", "-c", g.config_path)                      # --forward-to is required
    assert r.returncode == 2 and b"usage" in r.stderr, r
    r = wb.run("listen", "-c", g.config_path, "--forward-to", "ftp://x")
    assert r.returncode == 2 and b"--forward-to must be" in r.stderr, r
    r = wb.run("listen", "-c", g.config_path, "--forward-to", "http://127.0.0.1:1/", "--secret", "nope")
    assert r.returncode == 2 and b"--secret must be whsec_" in r.stderr, r


def test_listen_forwards_each_event_signed_to_a_local_receiver():
    sink = wb.Sink()
    local = wb.Sink([200, 500])
    g = _feed_gateway(sink)
    p = _Proc("listen", "-c", g.config_path, "--forward-to", local.url, "--type", "shipment.*")
    p.wait_ready("Ready!")
    secret = re.search(r"(whsec_\S+)", "\n".join(p.lines)).group(1)
    evts = [g.post_atoship(wb.atoship_event(), "s").json()["id"] for _ in range(2)]
    g.post_atoship(wb.atoship_event(type="tracking.in_transit"), "s")   # filtered out
    reqs = local.wait_for_count(2, timeout=10)
    for req, evt in zip(reqs, evts):
        assert wb.verify_standard(secret, req.headers, req.body), req.headers
        assert req.headers["webhook-id"] == evt and req.headers["content-type"] == "application/json"
        body = req.json()
        assert body["id"] == evt and body["type"] == "shipment.delivered" and "status" not in body, body
        # what a subscription gets: the event as stored
        stored = g.event(evt)
        for k in ("source", "source_id", "type", "created_at", "received_at", "data", "shipment"):
            assert body[k] == stored[k], (k, body[k], stored[k])
    lines = p.wait_lines(lambda x: "<--" in x, 2)
    assert lines[0].endswith("<-- [200] POST %s [%s]" % (local.url, evts[0])), lines
    assert lines[1].endswith("<-- [500] POST %s [%s]" % (local.url, evts[1])), lines
    assert [x for x in p.lines if "-->" in x][0].endswith("--> shipment.delivered [%s]" % evts[0])
    time.sleep(0.3)
    assert local.count == 2


def test_listen_with_a_given_secret_is_accepted_by_the_standardwebhooks_package():
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    node = wb.NodeSink("standard", secret)
    sink = wb.Sink()
    g = _feed_gateway(sink)
    p = _Proc("listen", "-c", g.config_path, "--forward-to", node.url, "--secret", secret)
    p.wait_ready("Ready!")
    assert any(secret in x for x in p.lines), p.lines
    evt = g.post_atoship(wb.atoship_event(), "s").json()["id"]
    got = node.wait_for_count(1, timeout=10)[0]
    assert got.valid and got.json()["id"] == evt, got
    p.wait_lines(lambda x: "<-- [200]" in x, 1)


def test_sigterm_ends_open_streams_cleanly_and_refuses_new_ones():
    import http.client
    sink = wb.Sink(delay=1.0)   # a delivery in flight keeps the gateway up a moment after SIGTERM
    g = _feed_gateway(sink, shutdown_grace="5s")
    conn = http.client.HTTPConnection("127.0.0.1", g.admin_port, timeout=10)
    conn.request("GET", "/api/stream", headers={"Authorization": "Bearer " + g.token})
    r = conn.getresponse()
    assert r.readline() == b"retry: 2000\n"
    g.post_atoship(wb.atoship_event(), "s")
    sink.wait_for_count(1)
    g.send_signal(15)
    rest = r.read()            # the last chunk comes: no IncompleteRead
    assert b"event: event" in rest, rest
    st, body = g.admin("GET", "/api/stream")
    assert st == 503 and body["error"] == "shutting down", (st, body)
    assert g.proc.wait(20) == 0
