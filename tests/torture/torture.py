#!/usr/bin/env python3
"""torture.py -- waybill under fire (issue 18): one table of what each
scenario sent, what was acknowledged, lost and duplicated, how long recovery
took, and its verdict.

    python3 tests/torture/torture.py --bin ./waybill            # full form (~20 min)
    python3 tests/torture/torture.py --bin ./waybill --short    # short form (< 3 min; make test)
    python3 tests/torture/torture.py --bin ./waybill -k crash   # scenarios whose name holds "crash"

Each scenario is tests/torture/sc_*.py (`run(short) -> Row`), run in the
order of SCENARIOS, each under a time limit. The last line is
`N passed, N failed` (one per row; a skipped row counts as passed and says
why). --out FILE also writes the table (Markdown) to FILE."""

import argparse
import importlib
import os
import platform
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True

# (module, limit in seconds for the short form, for the full form);
# limit None: the scenario is full-form only.
SCENARIOS = [
    ("sc_crash", 60, 240),
    ("sc_diskfull", 40, 120),
    ("sc_slow", 40, 150),
    ("sc_many", 30, 240),
    ("sc_hostile", 45, 200),
    ("sc_malformed", 30, 90),
    ("sc_clock", 45, 120),
    ("sc_reload", 40, 150),
    ("sc_corrupt", 30, 60),
    ("sc_soak", None, 900),
]


class Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise Timeout()


def machine():
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        model = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError):
        mem = 0
    return "%s, %d cores, %d MiB, %s %s" % (model, os.cpu_count() or 0, mem, platform.system(), platform.release())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="./waybill")
    ap.add_argument("--short", action="store_true", help="the short form (make test)")
    ap.add_argument("-k", action="append", help="only scenarios whose module name holds PATTERN")
    ap.add_argument("--out", help="also write the table (Markdown) here")
    args = ap.parse_args()
    os.environ["WB_BIN"] = os.path.abspath(args.bin)
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    import common  # noqa: E402 - after WB_BIN is set
    wb = common.wb
    signal.signal(signal.SIGALRM, _alarm)
    scale = 2.0 if os.environ.get("WB_ASAN") == "1" else 1.0

    rows = []
    t_all = time.monotonic()
    for mod, short_limit, full_limit in SCENARIOS:
        if args.k and not any(p in mod for p in args.k):
            continue
        limit = short_limit if args.short else full_limit
        m = importlib.import_module(mod)
        if limit is None:
            row = common.Row(m.NAME)
            row.verdict = "skip"
            row.note("full form only")
            row.counted = False
            rows.append(row)
            continue
        print("--- %s (%s form, limit %ds)" % (mod, "short" if args.short else "full", limit * scale), flush=True)
        t0 = time.monotonic()
        row = common.Row(m.NAME)
        try:
            signal.setitimer(signal.ITIMER_REAL, limit * scale)
            row = m.run(args.short, row)
        except common.Skip as e:
            row.verdict = "skip"
            row.note("skipped: %s" % e)
        except Timeout:
            row.failures.append("timed out after %ds" % (limit * scale))
            row.verdict = "FAIL"
        except BaseException as e:  # noqa: BLE001 - a scenario's error is its failure
            if isinstance(e, KeyboardInterrupt):
                raise
            row.failures.append("%s: %s" % (type(e).__name__, str(e).split("\n", 1)[0]))
            row.verdict = "FAIL"
            print(traceback.format_exc(), flush=True)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            problems = wb.cleanup()
        except BaseException as e:  # noqa: BLE001
            problems = ["cleanup failed: %r" % e]
        for p in problems:
            row.failures.append(p.split("\n", 1)[0])
            print(p, flush=True)
        row.secs = time.monotonic() - t0
        row.done()
        if row.verdict == "FAIL":
            for c in wb.failure_contexts(30):
                print(c, flush=True)
        else:
            wb.remove_temp_dirs()
        wb._reset_test_context()
        print("    %s %s (%.1fs)%s" % (row.verdict, m.NAME, row.secs,
                                       (": " + "; ".join(row.failures)) if row.failures else ""), flush=True)
        rows.append(row)

    text = common.table(rows)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print()
    print("waybill torture, %s form, %s, %s, %.0f s" % ("short" if args.short else "full", when, machine(),
                                                        time.monotonic() - t_all))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write("%s form, %s, %s\n\n%s\n" % ("short" if args.short else "full", when, machine(), text))
    failed = sum(1 for r in rows if r.verdict == "FAIL")
    counted = sum(1 for r in rows if getattr(r, "counted", True))
    print("%d passed, %d failed" % (counted - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
