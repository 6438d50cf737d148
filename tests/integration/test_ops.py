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
    assert "unsupported url" in log and "pg-Secret-55" not in log, log
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
