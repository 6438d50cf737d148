"""The wall clock stepping back (issue 18): batch windows already sent are
not reopened. The gateway runs under Debian's libfaketime (make test-deps
installs `faketime`); only its wall clock moves, as an NTP step does."""
import glob
import os
import time

import wb

SECRET = "clock-secret"


def _faketime():
    found = glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
    return found[0] if found else None


def _env(lib, rc):
    env = {"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": rc, "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    if wb.ASAN:  # libfaketime preloaded before the sanitizer's runtime
        env["ASAN_OPTIONS"] = os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"
    return env


def post(g):
    r = g.post_atoship(wb.atoship_event("tracking.in_transit"), SECRET)
    assert r.status == 200, r
    return r.json()["id"]


def test_a_batch_window_already_sent_is_not_reopened_when_the_clock_steps_back():
    lib = _faketime()
    if not lib:
        print("  skipped: libfaketime not installed (apt-get install faketime)")
        return
    rc = os.path.join(wb._mkdtemp("wb-clock-"), "faketime.rc")

    def clock(offset):
        with open(rc + ".tmp", "w") as f:
            f.write(offset + "\n")
        os.replace(rc + ".tmp", rc)

    clock("+0")
    sink = wb.Sink()
    cfg = wb.config('''
        source "atoship" {{ verify = "atoship", secret = {s} }}
        endpoint "wh" {{ url = {u}, sign = "none", window = "4s" }}
        rules "rules/"
    '''.format(s=wb.lua(SECRET), u=wb.lua(sink.url)))
    g = wb.Gateway(cfg, files={"rules/10.lua": 'on("*", function(ev) batch("wh", { id = ev.id }) end)'},
                   env=_env(lib, rc))
    t = time.time()
    time.sleep(4 - (t % 4) + 0.2)  # just after the start of a window W
    first = [post(g) for _ in range(3)]  # into W
    clock("+4")
    second = [post(g)]  # into the next window, W2
    got = sink.wait_for_count(2, timeout=8)  # W's timer: W and W2 are both past their end
    got = sorted((r.json() for r in got), key=lambda b: b["window_start"])
    assert [sorted(e["id"] for e in b["events"]) for b in got] == [sorted(first), second], got
    clock("+0")  # back into W2, already sent
    third = [post(g)]
    again = sink.wait_for_count(3, timeout=12)[2].json()
    assert [e["id"] for e in again["events"]] == third, again
    assert again["window_start"] > got[1]["window_start"], (
        "the window %s was sent twice" % again["window_start"])
    time.sleep(1)
    assert sink.count == 3, [r.json() for r in sink.requests]
