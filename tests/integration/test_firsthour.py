"""The first hour of a new user (issue 19): the README's commands in order,
offline commands without secrets, help, errors that name their cause, the
tour's receiver."""

import os
import shutil
import signal
import subprocess
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
