#!/usr/bin/env python3
"""failover.py -- how long `waybill serve` takes to answer 200 again after
PostgreSQL's failover (the README's "Running several instances" figures).

    python3 tests/bench/failover.py [--bin ./waybill] [--runs 3] [--dark 1,2,5,10]

Each run is test_pg_ha.failover_under_load: a primary with a synchronous
standby, waybill serving on both hosts (target_session_attrs=read-write)
under continuous posts, the primary SIGKILLed, the standby promoted DARK
seconds later; every check of the integration test holds in each run. It
prints, per DARK, the seconds from the standby taking writes (first seen
out of recovery, polled every 10 ms) to waybill's first 200: the rest of
the reconnect backoff step waybill was in (100 ms doubling to 5 s, up to a
quarter more at random), a connection and a group. Needs root (pg.py runs
PostgreSQL as `postgres`), as the integration tests do.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="./waybill")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dark", default="1,2,5,10", help="seconds without a primary, comma-separated")
    args = ap.parse_args()
    os.environ["WB_BIN"] = os.path.abspath(args.bin)
    import test_pg_ha
    import wb

    rows = []
    for dark in [float(x) for x in args.dark.split(",")]:
        took = []
        for _ in range(args.runs):
            try:
                took.append(test_pg_ha.failover_under_load(dark))
            finally:
                problems = wb.cleanup()
                if problems:
                    raise SystemExit("\n".join(problems))
        rows.append((dark, took))
    print("\n%-22s %s" % ("without a primary", "first 200 after the standby took writes (s)"))
    for dark, took in rows:
        print("%-22s %s  (max %.2f)" % ("%.0f s" % dark, " ".join("%.2f" % t for t in took),
                                          max(took)))


if __name__ == "__main__":
    t0 = time.monotonic()
    main()
    print("(%.0f s)" % (time.monotonic() - t0))
