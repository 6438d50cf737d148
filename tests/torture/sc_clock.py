"""7. Clock jumps (Debian's libfaketime): the gateway's wall clock jumps
forward and back across 2-second batch windows while events stream in.
Every window closes once (one POST per window start), every acknowledged
event is in exactly one batch, none in two. Only the wall clock jumps (as
an NTP step does); the monotonic clock runs on."""
import glob
import os
import time

import common

NAME = "7 clock jumps across batch windows"
# (seconds after the start, offset of the gateway's wall clock)
JUMPS_SHORT = [(3, "+7"), (6, "+0"), (9, "-5"), (12, "+0")]
JUMPS_FULL = [(4, "+7"), (8, "+0"), (12, "-5"), (16, "+20"), (20, "+0"), (24, "-20"), (28, "+0"), (32, "+1"),
              (33, "+0"), (34, "+1"), (35, "+0")]
# A step back waits for the clock to pass the latest close (README, batch
# windows): the steps stay within tens of seconds, so the batches come in time.


def _lib():
    for name in ("libfaketimeMT.so.1", "libfaketime.so.1"):
        found = glob.glob("/usr/lib/*/faketime/" + name) + glob.glob("/usr/lib/faketime/" + name)
        if found:
            return found[0]
    return None


def run(short, row):
    lib = _lib()
    if not lib:
        raise common.Skip("libfaketime not installed (apt-get install faketime; make test-deps does)")
    jumps = JUMPS_SHORT if short else JUMPS_FULL
    sink = common.CountingSink()
    rc = os.path.join(common.wb._mkdtemp("wb-torture-clock-"), "faketime.rc")
    with open(rc, "w") as f:
        f.write("+0\n")
    env = {"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": rc, "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    if common.wb.ASAN:  # libfaketime preloaded before the sanitizer's runtime
        env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    g = common.gateway({"wh": (sink.url, 'sign = "none", window = "2s"')},
                       'on("*", function(ev) batch("wh", { id = ev.source_id }) end)', env=env)
    load = common.Load(g.port, threads=2, rate=20)
    t0 = time.monotonic()
    try:
        for at, offset in jumps:
            time.sleep(max(0, t0 + at - time.monotonic()))
            with open(rc + ".tmp", "w") as f:
                f.write(offset + "\n")
            os.replace(rc + ".tmp", rc)
        time.sleep(3)
    finally:
        load.stop()
    acked = list(dict.fromkeys(load.acked))
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        with sink.lock:
            have = {e.get("id") for b in sink.batches for e in b.get("events", [])}
        if all(a in have for a in acked):
            break
        time.sleep(0.2)
    time.sleep(2.5)  # a window sent twice would come now
    with sink.lock:
        batches = list(sink.batches)
    seen = {}
    for b in batches:
        for e in b.get("events", []):
            seen[e.get("id")] = seen.get(e.get("id"), 0) + 1
    starts = {}
    for b in batches:
        starts[b.get("window_start")] = starts.get(b.get("window_start"), 0) + 1
    twice = sorted(k for k, v in starts.items() if v > 1)
    row.check(not twice, "windows sent more than once: %s" % twice[:5])
    failed = {s: n for s, n in load.statuses.items() if s != 200}
    row.check(not failed, "ingest answers other than 200: %s" % failed)
    row.sent = len(load.sent_ids)
    row.acked = len(acked)
    row.lost = sum(1 for a in acked if a not in seen)
    row.dup = sum(v - 1 for v in seen.values() if v > 1)
    row.note("jumps %s; %d batches, %d window starts, %d sent twice; largest batch %d" % (
        " ".join(o for _, o in jumps), len(batches), len(starts), len(twice),
        max([b.get("count", 0) for b in batches] or [0])))
    return row
