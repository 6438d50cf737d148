"""The first hour of a new user (issue 19): the README's commands in order,
offline commands without secrets, help, errors that name their cause, the
tour's receiver."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import wb


def _tree_copy():
    """A copy of the source tree (git's tracked files) with the built binary
    and its objects, timestamps kept, so `make` there has nothing to build."""
    d = wb._mkdtemp("wb-tree-")
    files = subprocess.run(["git", "-C", wb.ROOT, "ls-files", "-z"], check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = os.path.join(wb.ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(d, rel))
    binary = wb._bin()
    build = os.path.join(wb.ROOT, "build-asan" if wb.ASAN else "build")
    shutil.copy2(binary, os.path.join(d, os.path.basename(binary)))
    shutil.copytree(build, os.path.join(d, os.path.basename(build)))
    return d, os.path.basename(binary), os.path.basename(build)


def _files(d):
    out = set()
    for root, dirs, names in os.walk(d):
        for n in names:
            out.add(os.path.relpath(os.path.join(root, n), d))
    return out


@wb.timeout(90)
def test_make_run_leaves_the_source_tree_as_it_was():
    # README: `make run`, then `make test`. The gateway's store goes under the
    # git-ignored .run/, so nothing in the tree changes for the tests.
    d, binary, build = _tree_copy()
    port, admin = wb.free_port(), wb.free_port()
    cfg = os.path.join(d, "examples", "waybill.lua")
    with open(cfg) as f:
        text = f.read()
    with open(cfg, "w") as f:
        f.write(text.replace("127.0.0.1:8080", "127.0.0.1:%d" % port)
                    .replace("127.0.0.1:8081", "127.0.0.1:%d" % admin))
    before = _files(d)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    p = subprocess.Popen(["make", "--no-print-directory", "BIN=" + binary, "BUILD=" + build, "run"],
                         cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        wb.wait_for(lambda: wb.http_request(admin, "GET", "/healthz", timeout=1).status == 200,
                    timeout=wb.START_TIMEOUT * 3, message="make run serving")
        r = wb.http_request(port, "POST", "/hooks/atoship", b"{}", {})
        assert r.status == 401, r             # it serves, and refuses an unsigned post
        with open(os.path.join(d, ".run", "waybill.pid")) as f:
            pid = int(f.read())
        with open("/proc/%d/status" % pid) as f:   # exec'd by make's shell: make's child
            ppid = int([x for x in f if x.startswith("PPid:")][0].split()[1])
        assert ppid == p.pid, "waybill's parent is %d, make is %d" % (ppid, p.pid)
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        out = p.communicate(timeout=30)[0].decode(errors="replace")
    new = sorted(f for f in _files(d) - before if not f.startswith(".run/"))
    assert new == [], "make run wrote into the tree: %s\n%s" % (new, out[-2000:])
    assert os.path.exists(os.path.join(d, ".run", "waybill.db")), out[-2000:]
    with open(os.path.join(d, ".gitignore")) as f:
        assert "/.run/" in f.read().split()


def _script(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + text + "\n")
    os.chmod(path, 0o755)


@wb.timeout(60)
def test_make_j2_installs_packages_before_compiling():
    # make -j2 on a machine missing packages: the apt-get install must end
    # before the first compiler runs (fake dpkg-query, apt-get, id and cc
    # record the order; nothing is installed).
    d, _, _ = _tree_copy()
    fake = wb._mkdtemp("wb-fakebin-")
    marker, log = os.path.join(fake, "installed"), os.path.join(fake, "cc.log")
    _script(fake, "dpkg-query", "exit 1")                    # every package missing
    _script(fake, "id", 'echo 0')                            # "root"
    _script(fake, "apt-get", 'case "$*" in *install*) sleep 1; touch %s;; esac; exit 0' % marker)
    _script(fake, "fakecc", '[ -e %s ] && echo ok >> %s || echo early >> %s; exit 1'
            % (marker, log, log))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env["PATH"] = fake + ":" + env["PATH"]
    r = subprocess.run(["make", "-j2", "--no-print-directory", "CC=" + os.path.join(fake, "fakecc"),
                        "BUILD=build-order", "BIN=waybill-order"], cwd=d, env=env,
                       capture_output=True, timeout=50)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert b"installing:" in r.stdout, out[-2000:]
    with open(log) as f:
        calls = f.read().split()
    assert calls and set(calls) == {"ok"}, "compiler ran before the install ended: %s\n%s" % (
        calls, out[-2000:])


UNSET_CONFIG = '''
listen = "127.0.0.1:1"
admin  = { listen = "127.0.0.1:2", token = env("WB_T_ADMIN_TOKEN") }
store  = "sqlite:waybill.db"
source "atoship" { verify = "atoship", secret = env("WB_T_ATOSHIP") }
endpoint "erp" { url = "http://127.0.0.1:3/", secret = env("WB_T_ERP"), sign = "standard" }
endpoint "wms" { url = "http://127.0.0.1:4/", secret = env("WB_T_WMS", "dev-wms"), sign = "hex" }
rules "rules/"
'''


def _unset_env_dir():
    d = wb._mkdtemp("wb-unset-")
    os.makedirs(os.path.join(d, "rules"))
    with open(os.path.join(d, "waybill.lua"), "w") as f:
        f.write(UNSET_CONFIG)
    with open(os.path.join(d, "rules", "10.lua"), "w") as f:
        f.write('on("shipment.*", { "erp", "wms" })\n')
    with open(os.path.join(d, "ev.json"), "wb") as f:
        f.write(wb.atoship_event("shipment.delivered"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WB_T_")}
    return d, os.path.join(d, "waybill.lua"), env


def _run_clean_env(env, *args):
    return subprocess.run([wb._bin()] + list(args), capture_output=True, env=env, timeout=30)


def test_unset_secrets_are_reported_at_once_and_offline_commands_use_placeholders():
    d, cfg, env = _unset_env_dir()
    r = _run_clean_env(env, "serve", "-c", cfg)          # serve needs them: all named at once
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "3 env variables are not set: WB_T_ADMIN_TOKEN (line 3), WB_T_ATOSHIP (line 5), " \
           "WB_T_ERP (line 6)" in err, err
    assert "WB_T_WMS" not in err and not os.path.exists(os.path.join(d, "waybill.db")), err
    r = _run_clean_env(env, "check", "-c", cfg)          # check needs none
    assert r.returncode == 0, r.stderr
    assert b"ok (1 source" in r.stdout, r.stdout
    assert b"placeholders: WB_T_ADMIN_TOKEN, WB_T_ATOSHIP, WB_T_ERP" in r.stderr, r.stderr
    r = _run_clean_env(env, "route", "-c", cfg, "--source", "atoship", os.path.join(d, "ev.json"))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert [x["endpoint"] for x in got["deliveries"]] == ["erp", "wms"], got
    assert b"placeholders: WB_T_ADMIN_TOKEN" in r.stderr, r.stderr
    r = _run_clean_env(env, "events", "-c", cfg)         # the admin client uses its token
    assert r.returncode == 1, r
    assert b"admin token is env WB_T_ADMIN_TOKEN, which is not set" in r.stderr, r.stderr
    env["WB_T_ADMIN_TOKEN"] = "t"                        # one set: the others still all named
    r = _run_clean_env(env, "serve", "-c", cfg)
    assert r.returncode == 1 and b"2 env variables are not set: WB_T_ATOSHIP (line 5), WB_T_ERP " \
        b"(line 6)" in r.stderr, r.stderr


def test_env_in_a_handler_still_fails_the_handler_not_a_placeholder():
    sink = wb.Sink()
    g = wb.Gateway(wb.config('''
        source "atoship" { verify = "atoship", secret = "s" }
        endpoint "erp" { url = %s, sign = "hex", secret = "k" }
        rules "rules/"
    ''' % wb.lua(sink.url)), files={"rules/10.lua":
        'on("*", function(ev) send("erp", { k = env("WB_T_NEVER_SET") }) end)'})
    body = wb.atoship_event()
    r = g.post_atoship(body, "s")
    assert r.status == 200, r
    ev = g.wait_event(r.json()["id"], lambda e: e["status"] != "received")
    assert ev["status"] == "rule_error" and "env WB_T_NEVER_SET is not set" in ev["error"], ev


def test_example_config_checks_with_no_secret_set():
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_SECRET", "_TOKEN"))}
    r = _run_clean_env(env, "check", "-c", os.path.join(wb.ROOT, "examples", "waybill.lua"))
    assert r.returncode == 0 and b"ok (5 sources, 4 endpoints)" in r.stdout, r
    assert b"placeholder" not in r.stderr, r.stderr      # its env() calls carry dev defaults


def _reload_gateway(extra=None, args=None):
    sink = wb.Sink()
    g = wb.Gateway(wb.config('''
        source "atoship" { verify = "atoship", secret = "s" }
        endpoint "erp" { url = %s, sign = "hex", secret = "k" }
        endpoint "crm" { url = %s, sign = "hex", secret = "k" }
        rules "rules/"
    ''' % (wb.lua(sink.url), wb.lua(sink.url + "?crm")), **(extra or {})),
        files={"rules/10.lua": 'on("*", { "erp" })'}, args=args or [])
    return g, sink


def test_pidfile_holds_the_pid_printed_at_start_and_reload_uses_it():
    g, sink = _reload_gateway({"pidfile": "run/waybill.pid"})
    pidfile = g.path("run/waybill.pid")
    with open(pidfile) as f:
        assert f.read() == "%d\n" % g.pid, "pidfile"
    assert "pid %d" % g.pid in g.log(), g.log()                  # the start line says it
    # a second gateway on the same pidfile refuses, naming the running one
    r = wb.run("serve", "-c", g.config_path, cwd=g.dir, timeout=30)
    assert r.returncode == 1 and b"already running as pid %d" % g.pid in r.stderr, r.stderr
    g.write("rules/10.lua", 'on("*", { "crm" })')
    r = wb.run("reload", "--pidfile", pidfile)                  # SIGHUP through the pidfile
    assert r.returncode == 0 and r.stdout == b"sent SIGHUP to waybill (pid %d)\n" % g.pid, r
    g.wait_for(lambda: g.admin("GET", "/api/status")[1]["reloads"] == 1)
    g.stop()
    assert not os.path.exists(pidfile), "pidfile left after a clean stop"


def test_reload_command_reports_what_the_reload_did():
    g, sink = _reload_gateway(args=["--pidfile", "gw.pid"])
    with open(g.path("gw.pid")) as f:
        assert int(f.read()) == g.pid
    g.write("rules/10.lua", 'on("*", { "crm" })')
    r = g.cli("reload")                                          # through the admin API
    assert r.returncode == 0 and r.stdout.startswith(b"reloaded "), r
    body = wb.atoship_event()
    assert g.post_atoship(body, "s").status == 200
    assert sink.wait_for_count(1)[0].path.endswith("?crm"), "the new rules route it"
    g.write("rules/10.lua", 'on("*", { "erp" }\n')               # a syntax error
    r = g.cli("reload")
    assert r.returncode == 1, r
    assert b"rules/10.lua:2:" in r.stderr and b"the current rules stay" in r.stderr, r.stderr


COMMANDS = ["serve", "check", "migrate", "sign", "route", "init", "test-rules", "bench-rules", "events",
            "event", "retry", "replay", "test", "reload", "trigger", "tail", "listen", "version",
            "help"]


def test_every_command_has_help_and_the_top_usage_lists_them_all():
    r = wb.run("--help")
    top = r.stdout.decode()
    assert r.returncode == 0, r
    for cmd in COMMANDS:
        assert "waybill " + cmd in top, (cmd, top)
    for opt in ("-c waybill.lua", "--url URL", "--token T", "--pidfile FILE", "--json"):
        assert opt in top, (opt, top)
    for cmd in COMMANDS:
        for flag in ("--help", "-h"):
            r = wb.run(cmd, flag)
            out = r.stdout.decode()
            assert r.returncode == 0 and out.startswith("usage: waybill " + cmd), (cmd, flag, r)
            assert r.stderr == b"", (cmd, r.stderr)
    r = wb.run("--version")
    assert r.returncode == 0 and r.stdout.startswith(b"waybill "), r
    r = wb.run("serve", "--bogus")                       # a wrong option: usage on stderr, 2
    assert r.returncode == 2 and b"usage: waybill serve" in r.stderr, r


def test_man_page_describes_every_command():
    with open(os.path.join(wb.ROOT, "examples", "waybill.1")) as f:
        man = f.read()
    assert man.startswith(".TH WAYBILL 1"), man[:80]
    for cmd in COMMANDS:
        assert "\\fBwaybill %s\\fR" % cmd.replace("-", "\\-") in man, cmd
    r = subprocess.run(["make", "-n", "install", "DESTDIR=/nonexistent"], cwd=wb.ROOT,
                       capture_output=True)
    assert b"share/man/man1/waybill.1" in r.stdout, r


def test_route_reads_the_event_from_stdin():
    d, cfg, env = _unset_env_dir()
    with open(os.path.join(d, "ev.json"), "rb") as f:
        body = f.read()
    r = subprocess.run([wb._bin(), "route", "-c", cfg, "--source", "atoship", "-"], input=body,
                       capture_output=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert [x["endpoint"] for x in json.loads(r.stdout)["deliveries"]] == ["erp", "wms"]


def test_a_busy_port_names_the_reason_and_the_line_and_creates_nothing():
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    d = wb._mkdtemp("wb-busy-")
    for admin in (False, True):
        cfg = os.path.join(d, "waybill.lua")
        with open(cfg, "w") as f:
            f.write('environment = "sandbox"\n'
                    'listen = "127.0.0.1:%d"\n' % (wb.free_port() if admin else port) +
                    'admin = { listen = "127.0.0.1:%d", token = "t" }\n'
                    % (port if admin else wb.free_port()) +
                    'store = "sqlite:run/waybill.db"\npidfile = "run/waybill.pid"\n')
        r = wb.run("serve", "-c", cfg, timeout=30)
        err = r.stderr.decode()
        assert r.returncode == 1, err
        want = ("cannot listen on 127.0.0.1:%d: Address already in use (%s:%s)"
                % (port, cfg, "3: admin.listen" if admin else "2: listen"))
        assert want in err, err
        assert os.listdir(d) == ["waybill.lua"], os.listdir(d)   # no store, no pidfile
    busy.close()


def test_cli_event_names_a_refused_connection_and_the_next_retry():
    dead = wb.free_port()
    g = wb.Gateway(wb.config('''
        source "atoship" { verify = "atoship", secret = "s" }
        endpoint "erp" { url = "http://127.0.0.1:%d/hook", sign = "hex", secret = "k",
                         retry = { "0s", "1h" } }
        rules "rules/"
    ''' % dead), files={"rules/10.lua": 'on("*", { "erp" })'})
    r = g.post_atoship(wb.atoship_event(), "s")
    eid = r.json()["id"]
    ev = g.wait_event(eid, lambda e: e["deliveries"] and e["deliveries"][0]["attempts"])
    r = g.cli("event", eid)
    out = r.stdout.decode()
    assert r.returncode == 0, r
    assert "connection refused" in out and "HTTP 0" not in out and "  0  " not in out, out
    assert "next try" in out, out
    assert out.count(" ms") <= 1, out            # curl's "after 0 ms ... in 1 ms" not doubled
    r = g.cli("check")
    assert b"(1 source, 1 endpoint)" in r.stdout, r.stdout


def test_success_rate_prints_rounded():
    sink = wb.Sink([500, 200, 200, 200, 200])
    g = wb.Gateway(wb.config('''
        source "atoship" { verify = "atoship", secret = "s" }
        endpoint "erp" { url = %s, sign = "hex", secret = "k", retry = { "0s", "0s" } }
        rules "rules/"
    ''' % wb.lua(sink.url)), files={"rules/10.lua": 'on("*", { "erp" })'})
    for _ in range(4):
        assert g.post_atoship(wb.atoship_event(), "s").status == 200
    sink.wait_for_count(5)
    g.wait_for(lambda: g.admin("GET", "/api/endpoints")[1]["data"][0]["attempts_ok"] == 4)
    r = wb.http_request(g.admin_port, "GET", "/api/endpoints",
                        headers={"Authorization": "Bearer " + wb.ADMIN_TOKEN})
    assert b'"success_rate":0.8,' in r[2], r[2]


@wb.timeout(90)
def test_interrupted_bench_stops_its_servers_and_removes_its_stores():
    if not shutil.which("wrk") or not shutil.which("taskset"):
        raise AssertionError("wrk and taskset are needed (make bench installs them)")
    d = wb._mkdtemp("wb-benchout-")
    p = subprocess.Popen([sys.executable, os.path.join(wb.ROOT, "tests", "bench", "bench.py"),
                          "--bin", wb._bin(), "--servers", "waybill-1m", "--scale-rows", "2000",
                          "--scale-dir", d, "--rounds", "1", "--duration", "60", "--warmup", "0",
                          "--conns", "8", "--delivery-rounds", "0", "--latency-rounds", "0",
                          "--out", os.path.join(d, "results.md")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def store():
            return [x for x in os.listdir(d) if x.startswith("wb-bench-scale-")]
        wb.wait_for(lambda: store() and os.path.exists(os.path.join(d, store()[0], "waybill.db")),
                    timeout=30, message="the scale store built")
        time.sleep(1.5)                                  # its server up, wrk running
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=40)[0].decode(errors="replace")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, out[-2000:]
    assert os.listdir(d) == [], (os.listdir(d), out[-2000:])   # the store is gone
    left = subprocess.run(["pgrep", "-f", d], capture_output=True).stdout
    assert left == b"", "processes of the run left: %s" % left


def test_bench_installs_peers_only_when_asked():
    fake = wb._mkdtemp("wb-fakebin-")
    calls = os.path.join(fake, "apt.log")
    for tool in ("dirname", "mkdir"):
        os.symlink(shutil.which(tool), os.path.join(fake, tool))
    _script(fake, "id", "echo 0")
    _script(fake, "apt-get", 'echo "$*" >> %s' % calls)
    env = {"PATH": fake, "HOME": fake}
    script = os.path.join(wb.ROOT, "tests", "bench", "run.sh")
    r = subprocess.run(["/bin/bash", script], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30)
    assert r.returncode == 0 and not os.path.exists(calls), r   # not asked: nothing installed
    assert b"BENCH_INSTALL=1" in r.stderr, r.stderr
    env["BENCH_INSTALL"] = "1"
    r = subprocess.run(["/bin/bash", script], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30)
    with open(calls) as f:
        assert "install -y -qq wrk webhook util-linux" in f.read(), r


def test_make_help_lists_every_target():
    r = subprocess.run(["make", "--no-print-directory", "help"], cwd=wb.ROOT, capture_output=True)
    assert r.returncode == 0, r
    lines = r.stdout.decode().splitlines()
    with open(os.path.join(wb.ROOT, "Makefile")) as f:
        phony = " ".join(l.split(":", 1)[1] for l in f.read().replace("\\\n", " ").splitlines()
                         if l.startswith(".PHONY:")).split()
    described = {}
    for l in lines:
        w = l.split()
        if w[:1] == ["make"] and len(w) > 2:
            described[w[1].strip("[]")] = " ".join(w[2:])
    for t in phony:
        assert described.get(t), (t, lines)             # one line each, with what it does


def _readme_tour():
    """The tour's code blocks: [(lang, [(command, [expected lines])])]."""
    with open(os.path.join(wb.ROOT, "README.md")) as f:
        text = f.read()
    tour = text[text.index("## Five-minute tour"):text.index("## Configuration")]
    blocks = []
    for m in re.finditer(r"```(\w*)\n(.*?)```", tour, re.S):
        cmds = []
        for line in m.group(2).splitlines():
            if m.group(1) == "sh" and line.startswith("# "):
                cmds[-1][1].append(line[2:])
            elif m.group(1) == "sh":
                cmds.append((line, []))
            else:
                cmds.append((None, [line]))
        blocks.append((m.group(1), cmds))
    return blocks


def _shown(expected, got_lines):
    """Whether an output line the README shows is among got_lines ('…' is
    any text, a run of spaces any run of spaces)."""
    pat = re.escape(expected).replace(re.escape("…"), ".+?")
    pat = re.sub(r"(\\ ){2,}", r"\\s+", pat)
    return any(re.fullmatch(pat, g.rstrip()) for g in got_lines)


@wb.timeout(120)
def test_readme_tour_copied_line_by_line_shows_what_the_readme_shows():
    d, binary, build = _tree_copy()
    ports = {"8080": str(wb.free_port()), "8081": str(wb.free_port()), "9000": str(wb.free_port())}

    def local(text):
        for k, v in ports.items():
            text = text.replace("127.0.0.1:" + k, "127.0.0.1:" + v)
        return text
    cfg = os.path.join(d, "examples", "waybill.lua")
    with open(cfg) as f:
        text = f.read()
    with open(cfg, "w") as f:
        f.write(local(text))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env.update(RECEIVER_PORT=ports["9000"], WAYBILL_ADMIN_URL="http://127.0.0.1:" + ports["8081"])
    if binary != "waybill":
        os.symlink(binary, os.path.join(d, "waybill"))
    logs, procs, assigns = {}, [], []
    try:
        for lang, cmds in _readme_tour():
            for cmd, expected in cmds:
                if cmd is None:                       # what terminal 1 prints
                    wb.wait_for(lambda: _shown(expected[0], open(logs["receiver"]).read().splitlines()),
                                timeout=10, message="receiver printed %r" % expected[0])
                    continue
                if cmd in ("python3 examples/receiver.py", "make run"):
                    name = "receiver" if cmd.startswith("python3") else "gateway"
                    logs[name] = os.path.join(d, name + ".log")
                    argv = cmd.split() if name == "receiver" else [
                        "make", "--no-print-directory", "BIN=" + binary, "BUILD=" + build, "run"]
                    procs.append(subprocess.Popen(argv, cwd=d, env=env, stdout=open(logs[name], "w"),
                                                  stderr=subprocess.STDOUT, start_new_session=True))
                    for e in expected:
                        wb.wait_for(lambda: _shown(local(e), open(logs[name]).read().splitlines()),
                                    timeout=wb.START_TIMEOUT * 3, message="%s printed %r" % (name, e))
                    if name == "gateway":
                        wb.wait_for(lambda: wb.http_request(int(ports["8081"]), "GET", "/healthz",
                                                            timeout=1).status == 200)
                    continue
                r = subprocess.run(["bash", "-c", "; ".join(assigns + [local(cmd)])], cwd=d, env=env,
                                   capture_output=True, timeout=60)
                if re.match(r"^\w+=\$\(", cmd):
                    assigns.append(local(cmd))
                got = r.stdout.decode().splitlines()
                assert r.returncode == 0, (cmd, r)
                for e in expected:
                    assert _shown(local(e), got), "README shows %r after %r; got %r" % (e, cmd, got)
        def out():
            with open(logs["receiver"]) as f:
                return f.read()
        try:
            wb.wait_for(lambda: "verified /webhooks/subscriber type=tracking.delivered" in out(),
                        timeout=10, message="the subscription's delivery")
        except AssertionError:
            with open(logs["gateway"]) as f:
                raise AssertionError("no subscription delivery:\n%s\n%s" % (out(), f.read()[-3000:]))
        out = out()
        assert "verification POST /webhooks/subscriber: answered 200" in out, out
        assert "BAD SIGNATURE" not in out, out
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)


def test_trigger_posts_a_fresh_signed_event_each_time():
    sink = wb.Sink()
    g = wb.Gateway(wb.config('''
        source "shop" { verify = "generic", secret = "shop-secret" }
        source "stripe" { verify = "stripe", secret = "k" }
        endpoint "erp" { url = %s, sign = "hex", secret = "k" }
        rules "rules/"
    ''' % wb.lua(sink.url)), files={"rules/10.lua": 'on("tracking.*", { "erp" })'})
    ids = []
    for _ in range(2):
        r = g.cli("trigger", "--source", "shop", "tracking.delivered")
        assert r.returncode == 0 and r.stdout.startswith(b"tracking.delivered shop -> 200 "), r
        ids.append(json.loads(r.stdout.split(b" -> 200 ", 1)[1])["id"])
    assert ids[0] != ids[1]                              # a fresh event, not a duplicate
    got = sink.wait_for_count(2)
    assert [x.json()["type"] for x in got] == ["tracking.delivered"] * 2
    r = g.cli("trigger", "--source", "stripe", "tracking.delivered")
    assert r.returncode == 1 and b"use waybill sign" in r.stderr, r


def _handlers_gateway(broken):
    erp, crm = wb.Sink(), wb.Sink()
    files = {"rules/10-erp.lua": 'on("shipment.*", { "erp" })',
             "rules/20-crm.lua": 'on("shipment.delivered", function(ev)\n'
                                 '  send("crm", { order = ev.data.order_id })\nend)'}
    if broken:
        files["rules/15-broken.lua"] = 'on("shipment.*", function(ev)\n' \
                                       '  send("erp", { early = true })\n' \
                                       '  local x = nil\n  return x.y\nend)'
    g = wb.Gateway(wb.config('''
        source "atoship" { verify = "atoship", secret = "s" }
        endpoint "erp" { url = %s, sign = "hex", secret = "k" }
        endpoint "crm" { url = %s, sign = "hex", secret = "k" }
        rules "rules/"
    ''' % (wb.lua(erp.url), wb.lua(crm.url))), files=files)
    return g, erp, crm


def test_one_broken_handler_does_not_stop_the_others_sends():
    g, erp, crm = _handlers_gateway(broken=True)
    r = g.post_atoship(wb.atoship_event("shipment.delivered", order_id="o1"), "s")
    eid = r.json()["id"]
    ev = g.wait_event(eid, lambda e: e["status"] != "received")
    assert ev["status"] == "partial", ev
    assert "rules/15-broken.lua:4: attempt to index a nil value" in ev["error"], ev
    assert erp.wait_for_count(1)[0].json()["id"] == eid          # the event, unchanged
    assert crm.wait_for_count(1)[0].json() == {"order": "o1"}
    time.sleep(0.3)
    assert erp.count == 1, "the broken handler's own send went out"
    st, page = g.admin("GET", "/api/events?status=partial")
    assert st == 200 and [e["id"] for e in page["data"]] == [eid], page
    # every matching handler broken: nothing to send, rule_error
    g.write("rules/10-erp.lua", 'on("shipment.delivered", { "erp" })')
    assert g.cli("reload").returncode == 0
    r = g.post_atoship(wb.atoship_event("shipment.exception"), "s")
    ev = g.wait_event(r.json()["id"], lambda e: e["status"] != "received")
    assert ev["status"] == "rule_error" and ev["deliveries"] == [], ev


def test_replay_under_broken_rules_says_so_and_exits_1():
    g, erp, crm = _handlers_gateway(broken=False)
    r = g.post_atoship(wb.atoship_event("shipment.delivered", order_id="o1"), "s")
    eid = r.json()["id"]
    g.wait_event(eid, lambda e: e["status"] == "routed")
    erp.wait_for_count(1)
    g.write("rules/15-broken.lua", 'on("shipment.*", function(ev) error("broken on purpose") end)')
    assert g.cli("reload").returncode == 0
    r = g.cli("replay", eid)
    assert r.returncode == 1, r
    assert b"a handler failed (" in r.stderr and b"rules/15-broken.lua:1: broken on purpose" in r.stderr
    assert b"the event is now partial, was routed" in r.stderr, r.stderr
    assert b"status    partial" in r.stdout, r.stdout
    assert erp.wait_for_count(2) and crm.wait_for_count(2)      # the others' sends went out again
    r = g.cli("route", "--source", "atoship", "-", input=wb.atoship_event("shipment.delivered"))
    assert r.returncode == 1 and b"partial: " in r.stderr and b'"endpoint": "erp"' in r.stdout, r
