#!/usr/bin/env python3
"""run.py -- waybill's one test runner (stdlib only).

    python3 tests/run.py --bin ./waybill --unit "build/tests/test_a build/tests/test_b"
    python3 tests/run.py --bin ./waybill-asan --asan --unit "..."
    python3 tests/run.py --bin ./waybill -k smoke            # only names matching
    python3 tests/run.py --bin ./waybill tests/integration/test_smoke.py
    python3 tests/run.py --bin ./waybill --store postgresql   # the same suite on PostgreSQL

In order:
1. unit binaries (--unit, space-separated): each prints `N passed, N failed`
   as its last stdout line; a crash or non-zero exit without one is 1 failure.
2. rule tests: `<bin> test-rules FILE` for each tests/rules/*.test (skipped
   when there are none), parsed the same way.
3. integration tests: every top-level `test_*` function of
   tests/integration/test_*.py, in file order, no arguments. Files run in
   --jobs (2) worker processes, each test under a time limit (60 s; a
   module's `TIMEOUT = n` or @wb.timeout(n) changes it; doubled under
   --asan), and after each test, passed or not, wb.cleanup() stops every
   gateway, sink and receiver it started. A worker is its own process group:
   whatever is left when it ends (or is killed on a hard timeout) is killed.

4. with --torture: tests/torture/torture.py --short, parsed as in 1 (one
   count per scenario row).

--store postgresql (or WB_STORE=postgresql): the integration tests run on
PostgreSQL. run.py starts one PostgreSQL 15 per worker slot before the
first file (tests/integration/pg.py: one `initdb` per slot, not per file or
test) and every gateway whose config does not name its own store gets a
fresh database on its slot's cluster (wb.header()). A test about SQLite
itself is marked @wb.sqlite_only("why") (or its module's SQLITE_ONLY =
"why") and is skipped there, printed as `SKIP name: why` and counted in the
`N skipped` line before the last. Default: sqlite, as always.

The last line printed is `N passed, N failed` (unit checks + rule tests +
integration tests + torture rows); the exit status is 1 if any failed.
"""

import argparse
import contextlib
import fnmatch
import glob
import importlib.util
import inspect
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTEGRATION = os.path.join(ROOT, "tests", "integration")
RULES = os.path.join(ROOT, "tests", "rules")
SANITIZER_PATTERNS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
COUNT_RE = re.compile(r"^\s*(\d+) passed, (\d+) failed\s*$")
DEFAULT_TIMEOUT = 60.0
CLEANUP_MARGIN = float(os.environ.get("WB_CLEANUP_MARGIN", "60"))  # a worker gets this long past a test's limit before it is killed
IMPORT_LIMIT = 120.0  # time allowed for importing a test file

_print_lock = threading.Lock()
_workers = set()  # live worker processes (each its own process group)


def say(*lines):
    with _print_lock:
        for line in lines:
            print(line)
        sys.stdout.flush()


def indent(text, prefix="    "):
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def tail(text, n):
    lines = text.rstrip("\n").splitlines()
    if len(lines) > n:
        return "\n".join(["... (%d lines before)" % (len(lines) - n)] + lines[-n:])
    return "\n".join(lines)


def matches(name, patterns):
    if not patterns:
        return True
    for p in patterns:
        if any(c in p for c in "*?[") and fnmatch.fnmatchcase(name, p):
            return True
        if p in name:
            return True
    return False


def parse_counts(text):
    """The last `N passed, N failed` line of text, as (passed, failed), or None."""
    for line in reversed(text.splitlines()):
        m = COUNT_RE.match(line)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def sanitizer_report(text):
    for pat in SANITIZER_PATTERNS:
        i = text.find(pat)
        if i >= 0:
            return text[max(0, i - 200):i + 3000]
    return None


class Totals:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.failed_names = []
        self.skipped = 0
        self.lock = threading.Lock()

    def add(self, passed, failed, name=None):
        with self.lock:
            self.passed += passed
            self.failed += failed
            if failed and name:
                self.failed_names.append(name)


# --------------------------------------------------------------------------
# Unit binaries and rule tests: programs that print `N passed, N failed`
# --------------------------------------------------------------------------

def run_counting(label, argv, totals, asan, timeout=600, env=None):
    t0 = time.monotonic()
    try:
        r = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=os.getcwd(), env=env)
        out = r.stdout.decode("utf-8", "replace")
        err = r.stderr.decode("utf-8", "replace")
        code = r.returncode
    except FileNotFoundError:
        totals.add(0, 1, label)
        say("FAIL %s: not found (%s)" % (label, argv[0]))
        return
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace")
        err = (e.stderr or b"").decode("utf-8", "replace")
        totals.add(0, 1, label)
        say("FAIL %s: timed out after %ds" % (label, timeout), indent(tail(out + err, 60)))
        return
    secs = time.monotonic() - t0
    counts = parse_counts(out) or parse_counts(err)
    problems = []
    if counts is None:
        how = ("killed by %s" % signal.Signals(-code).name) if code < 0 else "exit code %d" % code
        problems.append("no `N passed, N failed` line (%s)" % how)
        passed, failed = 0, 1
    else:
        passed, failed = counts
        if code != 0 and failed == 0:
            problems.append("exit code %d after reporting no failures" % code)
            failed = 1
    rep = sanitizer_report(err) if asan else None
    if rep and not any("sanitizer" in p for p in problems):
        problems.append("sanitizer report")
        if failed == 0:
            failed = 1
    totals.add(passed, failed, label)
    if failed:
        msg = "; ".join(problems) or "%d of %d checks failed" % (failed, passed + failed)
        say("FAIL %s: %s (%.1fs)" % (label, msg, secs), indent(tail((out + "\n" + err).strip(), 80)))
    else:
        say("PASS %s: %d checks (%.1fs)" % (label, passed, secs))
        if label.startswith("torture"):  # its table
            say(indent(out[out.find("\nwaybill torture"):].strip()))


# --------------------------------------------------------------------------
# Integration tests: the worker (one test file, in its own process)
# --------------------------------------------------------------------------

def format_error(e):
    """A traceback without the runner's own frames."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == os.path.abspath(__file__):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb)).rstrip()


class TestTimeout(BaseException):
    """Raised in the test by SIGALRM; BaseException so `except Exception` in
    a test or in wb.wait_for does not swallow it."""


def _on_alarm(signum, frame):
    raise TestTimeout()


def worker_main(path, patterns, default_timeout, scale, store="sqlite"):
    """Run one test file; one JSON line per event on the original stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray writes to fd 1 (e.g. a child's) go to stderr, not the protocol
    sys.stdout = sys.stderr

    def emit(**kw):
        proto.write(json.dumps(kw) + "\n")
        proto.flush()

    rel = os.path.relpath(path, ROOT)
    base = os.path.basename(path)
    sys.path.insert(0, INTEGRATION)
    sys.dont_write_bytecode = True
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        modname = "wbtest_" + re.sub(r"\W", "_", os.path.splitext(base)[0])
        spec = importlib.util.spec_from_file_location(modname, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
    except BaseException:  # noqa: BLE001 - reported as a failure
        emit(tests=[base + "::import"])
        emit(start=base + "::import", timeout=0)
        emit(name=base + "::import", ok=False, secs=0, message="import of %s failed" % rel,
             details=traceback.format_exc())
        return 0
    import wb  # noqa: E402 - after sys.path is set

    tests = [(n, f) for n, f in vars(mod).items()
             if n.startswith("test_") and inspect.isfunction(f) and f.__module__ == modname]
    tests = [(n, f) for n, f in tests if matches(base + "::" + n, patterns)]
    emit(tests=[base + "::" + n for n, _ in tests])
    mod_timeout = getattr(mod, "TIMEOUT", None)
    for n, fn in tests:
        name = base + "::" + n
        why = wb.sqlite_only_reason(mod, fn) if store != "sqlite" else None
        if why:
            emit(start=name, timeout=0)
            emit(name=name, ok=True, secs=0, skipped=why)
            continue
        limit = float(getattr(fn, "wb_timeout", None) or mod_timeout or default_timeout) * scale
        emit(start=name, timeout=limit)
        wb._reset_test_context()
        captured = io.StringIO()
        ok, message, details = True, "", []
        t0 = time.monotonic()
        try:
            signal.setitimer(signal.ITIMER_REAL, limit)
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                fn()
        except TestTimeout as e:
            ok, message = False, "timed out after %gs" % limit
            details.append("where it was:\n" + wb.format_exc_short(e))
        except AssertionError as e:
            ok = False
            message = str(e).split("\n", 1)[0] or "assertion failed"
            rest = str(e).split("\n", 1)[1] if "\n" in str(e) else ""
            details.append(wb.format_exc_short(e, path))
            if rest:
                details.append(rest)
        except BaseException as e:  # noqa: BLE001 - a test's error is its failure
            ok = False
            message = "%s: %s" % (type(e).__name__, str(e).split("\n", 1)[0])
            details.append(format_error(e))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        secs = time.monotonic() - t0
        try:
            problems = wb.cleanup()
        except BaseException as e:  # noqa: BLE001
            problems = ["cleanup failed: %r" % e]
        if problems:
            if ok:
                ok, message = False, problems[0].split("\n", 1)[0]
                problems[0] = problems[0].split("\n", 1)[1] if "\n" in problems[0] else ""
            details.extend(p for p in problems if p)
        if not ok:
            out = captured.getvalue()
            if out.strip():
                details.append("--- test output ---\n" + tail(out, 40))
            shown = message + "\n".join(details)
            try:
                ctx = wb.failure_contexts(40)
            except BaseException as e:  # noqa: BLE001
                ctx = ["(no failure context: %r)" % e]
            for c in ctx:
                if c not in shown:  # e.g. a start-up failure already quoted the log tail
                    details.append(c)
        if ok:
            wb.remove_temp_dirs()
        else:
            wb._temp_dirs.clear()  # kept: the failure report points into them
        emit(name=name, ok=ok, secs=round(secs, 2), message=message, details="\n".join(details))
    return 0


# --------------------------------------------------------------------------
# Integration tests: the parent (dispatches files to workers)
# --------------------------------------------------------------------------

def report_test(res, totals):
    name = res["name"]
    if res.get("skipped"):
        with totals.lock:
            totals.skipped += 1
        say("SKIP %s: %s" % (name, res["skipped"]))
    elif res["ok"]:
        totals.add(1, 0)
        say("PASS %s (%.1fs)" % (name, res.get("secs", 0)))
    else:
        totals.add(0, 1, name)
        lines = ["FAIL %s: %s" % (name, res.get("message", ""))]
        if res.get("details"):
            lines.append(indent(res["details"]))
        say(*lines)


def run_file(path, slot, args, totals, env):
    rel = os.path.relpath(path, ROOT)
    errf = tempfile.TemporaryFile()
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", path,
           "--timeout", str(args.timeout), "--scale", str(args.scale), "--store", args.store]
    for p in args.k or []:
        cmd += ["-k", p]
    wenv = dict(env)
    wenv["WB_WORKER"] = str(slot)
    if slot in _pg_clusters:
        wenv["WB_PG_CLUSTER"] = _pg_clusters[slot][1]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, stdin=subprocess.DEVNULL,
                            env=wenv, start_new_session=True, cwd=os.getcwd())
    _workers.add(proc)
    lines = queue.Queue()

    def reader():
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    expected, done = [], set()
    current, deadline = None, time.monotonic() + IMPORT_LIMIT
    killed = False
    while True:
        try:
            raw = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            if time.monotonic() < deadline:
                continue
            killed = True
            break
        if raw is None:
            break
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        if "tests" in msg:
            expected = msg["tests"]
            deadline = time.monotonic() + IMPORT_LIMIT
        elif "start" in msg:
            current = msg["start"]
            deadline = time.monotonic() + float(msg.get("timeout") or 0) + CLEANUP_MARGIN
        elif "name" in msg:
            done.add(msg["name"])
            report_test(msg, totals)
            current = None
            deadline = time.monotonic() + IMPORT_LIMIT
    # The worker has closed its output: let it exit, then kill what is left
    # of its process group (anything a test left running; or all of it, on a
    # hard timeout).
    if not killed:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    _workers.discard(proc)
    errf.seek(0)
    err = errf.read().decode("utf-8", "replace")
    errf.close()
    missing = [t for t in expected if t not in done]
    if killed and current:
        report_test({"name": current, "ok": False,
                     "message": "hard timeout: worker did not finish the test or its cleanup; killed",
                     "details": tail(err, 40)}, totals)
        missing = [t for t in missing if t != current]
    if not expected and not done:
        if proc.returncode != 0 or killed:
            report_test({"name": rel, "ok": False,
                         "message": "worker failed (exit %s)" % proc.returncode,
                         "details": tail(err, 40)}, totals)
        return
    for t in missing:
        report_test({"name": t, "ok": False,
                     "message": "not run: worker ended early (exit %s)" % proc.returncode,
                     "details": tail(err, 20) if t == missing[0] else ""}, totals)


_pg_clusters = {}  # slot -> (pg.Cluster, "DIR:PORT"), under --store postgresql


def start_pg_clusters(n, env):
    """One PostgreSQL per worker slot (--store postgresql), started here, in
    the parent, so the slot's files share it; stopped by stop_pg_clusters()."""
    sys.path.insert(0, INTEGRATION)
    saved = os.environ.get("WB_WORKER")
    os.environ["WB_PG_PASSWORD"] = env["WB_PG_PASSWORD"]
    import pg  # noqa: E402 - after sys.path is set
    try:
        for slot in range(n):
            os.environ["WB_WORKER"] = str(slot)  # the slot's port range (wb.free_port)
            t0 = time.monotonic()
            _pg_clusters[slot] = pg.serve()
            say("postgresql for worker %d: port %d (%.1fs)" % (slot, _pg_clusters[slot][0].port,
                                                             time.monotonic() - t0))
    finally:
        if saved is None:
            os.environ.pop("WB_WORKER", None)
        else:
            os.environ["WB_WORKER"] = saved


def stop_pg_clusters():
    for c, _ in list(_pg_clusters.values()):
        try:
            c.close()
        except Exception:  # noqa: BLE001 - the rest still stop
            pass
    _pg_clusters.clear()


def run_integration(files, args, totals, env):
    q = queue.Queue()
    for f in files:
        q.put(f)

    def slot_loop(slot):
        while True:
            try:
                f = q.get_nowait()
            except queue.Empty:
                return
            run_file(f, slot, args, totals, env)

    threads = [threading.Thread(target=slot_loop, args=(i,)) for i in range(max(1, min(args.jobs, len(files))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="./waybill", help="the waybill binary (default ./waybill)")
    ap.add_argument("--unit", default="", help="space-separated unit test binaries")
    ap.add_argument("--asan", action="store_true", help="sanitizer build: reports in stderr fail tests")
    ap.add_argument("--unit-only", action="store_true", help="the unit binaries alone (no rule tests, no integration)")
    ap.add_argument("-k", action="append", help="only tests whose name contains PATTERN (or matches the glob); repeatable")
    ap.add_argument("--torture", action="store_true", help="then the torture suite's short form (tests/torture/)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="parallel integration workers (default 2)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="default per-test limit, seconds")
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default=os.environ.get("WB_STORE") or "sqlite",
                    help="the integration tests' store: sqlite (default) or postgresql (env WB_STORE)")
    ap.add_argument("--scale", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("files", nargs="*", help="integration test files (default: all)")
    args = ap.parse_args()
    if args.scale is None:
        args.scale = 2.0 if args.asan else 1.0

    if args.worker:
        return worker_main(args.worker, args.k, args.timeout, args.scale, args.store)

    totals = Totals()
    binary = os.path.abspath(args.bin)
    env = dict(os.environ)
    env["WB_BIN"] = binary
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["WB_STORE"] = args.store
    if args.asan:
        env["WB_ASAN"] = "1"
    else:
        env.pop("WB_ASAN", None)
    t0 = time.monotonic()

    if not args.files:
        for u in args.unit.split():
            if matches(os.path.basename(u), args.k):
                run_counting(u, [os.path.abspath(u) if os.sep in u else u], totals, args.asan)

        for f in [] if args.unit_only else sorted(glob.glob(os.path.join(RULES, "*.test"))):
            rel = os.path.relpath(f, os.getcwd())
            if matches(os.path.basename(f), args.k):
                run_counting("rules " + rel, [binary, "test-rules", f], totals, args.asan)

    files = [] if args.unit_only else (args.files or sorted(glob.glob(os.path.join(INTEGRATION, "test_*.py"))))
    files = [os.path.abspath(f) for f in files]
    if files:
        if args.store == "postgresql":
            import secrets
            env["WB_PG_PASSWORD"] = "pw-" + secrets.token_hex(12)
            try:
                start_pg_clusters(max(1, min(args.jobs, len(files))), env)
            except Exception as e:  # noqa: BLE001 - reported as one failure
                totals.add(0, 1, "postgresql")
                say("FAIL postgresql: the slots' clusters did not start: %s" % e)
                files = []
        run_integration(files, args, totals, env)
        stop_pg_clusters()

    # 4. the torture suite's short form (tests/torture/), after the rest, on
    # its own: each of its rows is one pass or failure
    if args.torture and not args.files and not args.unit_only and matches("torture", args.k):
        run_counting("torture (short form)", [sys.executable, os.path.join(ROOT, "tests", "torture", "torture.py"),
                                              "--short", "--bin", binary], totals, args.asan, timeout=600, env=env)

    if totals.failed_names:
        say("", "failed (%d): %s" % (len(totals.failed_names), " ".join(totals.failed_names)))
    if totals.skipped:
        say("%d skipped (store %s)" % (totals.skipped, args.store))
    say("(%.1fs)" % (time.monotonic() - t0))
    say("%d passed, %d failed" % (totals.passed, totals.failed))
    return 1 if totals.failed else 0


def _kill_workers():
    for p in list(_workers):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        _kill_workers()
        stop_pg_clusters()
