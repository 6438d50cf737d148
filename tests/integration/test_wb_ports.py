"""wb.free_port across processes (issue 18's flaky test_every_route_needs_the_token).

Every test process on the machine picks its listeners' ports from the same
few ranges (WB_WORKER 0 and 1 in every suite; bench and torture use 0). A
port passes free_port's bind check until its gateway has started and bound
it, so two processes picking at once could both get it. Two processes
running test_every_route_needs_the_token side by side failed so: one
gateway stopped with "waybill: cannot listen on 127.0.0.1:PORT: Address
already in use", and its test failed at start ("waybill exited with code 1
during start-up") or, when the other gateway (same token) had answered its
/healthz and its 401s, with "RemoteDisconnected" once that one stopped.
Here two processes draw the same random sequence, so they ask for the same
port first, deterministically.
"""
import os
import random
import subprocess
import sys

import wb

# A child that imports wb, seeds the port draw with argv[1], prints
# free_port() and keeps living (holding what it was handed) until its stdin
# closes.
CHILD = """
import random, sys
sys.path.insert(0, %r)
import wb
random.seed(int(sys.argv[1]))
print(wb.free_port(), flush=True)
sys.stdin.read()
""" % wb.HERE


def child(seed):
    env = dict(os.environ, WB_WORKER="3")  # a range this suite's workers do not use
    return subprocess.Popen([sys.executable, "-c", CHILD, str(seed)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def handed(proc):
    line = proc.stdout.readline()
    assert line.strip().isdigit(), "child printed %r" % line
    return int(line)


def test_a_port_is_never_handed_to_two_live_processes_and_comes_back_after():
    seed = random.getrandbits(32)  # one draw for this test's children, another for a twin run
    first = child(seed)
    try:
        port = handed(first)
        # same seed, same first draw: before the reservation this was the same port
        second = child(seed)
        try:
            other = handed(second)
            assert other != port, "port %d handed to two live processes" % port
        finally:
            second.stdin.close()
            second.wait(10)
    finally:
        first.stdin.close()
        first.wait(10)
    # the holder is gone (its lock went with it): the port can be handed out again
    third = child(seed)
    try:
        assert handed(third) == port
    finally:
        third.stdin.close()
        third.wait(10)
