#!/usr/bin/env python3
"""layers.py -- the house's arrows run one way (issue 14).

Reads every `#include "..."` of core/*.c and core/*.h and fails on an
include that points up the layer list below, on a cycle between modules
(a module is its .c with its .h), and on a core file with no layer. Prints
each offending pair, then `N passed, N failed` (one check per include).

    python3 tests/layers.py            # the check
    python3 tests/layers.py --list     # the layers, one line per file
    python3 tests/layers.py --objs tests/unit/test_store.c
                                       # the modules a unit test links: what
                                       # its includes reach, nothing above

Layers, top (1) to bottom (5); a file may include its own layer or any
below it, never one above:
1. commands and the app: main (commands) -> app (owns every module)
2. edges: http (listeners, TLS, replies), httpd (the webhook listener's
   HTTP/1.1 server, + httpd_req), inbound, admin (+ admin_render,
   admin_openapi, admin_stream, admin_web, admin_shipengine, admin_subs), cli (+ cli_stream), ruletest,
   reqlog
3. pipeline: ingest, carrier, route, batch, deliver (+ deliver_sched), health,
   housekeep, stream (the live feed)
4. engines: rules, rules_adapt, rules_route, rules_api (behind
   rules_int.h), store (the front) and store_* (behind store_int.h; the
   SQLite engine store_sqlite* behind store_sqlite_int.h, the PostgreSQL
   backend store_pg* behind store_pg_int.h),
   httpc, verify, jwks, config, config_build (behind config_int.h), subs
5. base: jsonx, jsonx_encode, jsonx_decode (behind jsonx_int.h), util,
   log, metrics, sdnotify
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "core")

LAYERS = [
    ("commands and the app", ["main", "app"]),
    ("edges", ["http", "httpd", "httpd_req", "inbound", "admin", "admin_render", "admin_openapi",
               "admin_stream", "admin_web", "admin_shipengine", "admin_subs", "cli", "cli_stream", "ruletest", "reqlog"]),
    ("pipeline", ["ingest", "carrier", "route", "batch", "deliver", "deliver_sched", "health",
                  "housekeep", "stream"]),
    ("engines", ["rules", "rules_api", "rules_adapt", "rules_route", "rules_key", "store", "store_*", "httpc",
                 "verify", "jwks", "config", "config_build", "subs"]),
    ("base", ["jsonx", "jsonx_encode", "jsonx_decode", "util", "log", "metrics", "sdnotify"]),
]

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def module_of(filename):
    """A file's module: its name without extension; a private header
    X_int.h belongs to module X (the .c files of X share it)."""
    name = os.path.splitext(os.path.basename(filename))[0]
    return name[:-4] if name.endswith("_int") else name


def layer_of(module):
    for i, (_, names) in enumerate(LAYERS, 1):
        for n in names:
            if n == module or (n.endswith("*") and module.startswith(n[:-1])):
                return i
    return None


def read_graph(core):
    """{module: {included module: first 'file:line' that includes it}}"""
    graph = {}
    for name in sorted(os.listdir(core)):
        if not name.endswith((".c", ".h")):
            continue
        src = module_of(name)
        graph.setdefault(src, {})
        with open(os.path.join(core, name), encoding="utf-8") as f:
            text = f.read()
        for m in INCLUDE.finditer(text):
            dst = module_of(m.group(1))
            if not os.path.exists(os.path.join(core, m.group(1))):
                continue  # not one of ours (e.g. tests' harness)
            if dst != src:
                line = text.count("\n", 0, m.start()) + 1
                graph[src].setdefault(dst, "core/%s:%d" % (name, line))
    return graph


def find_cycles(graph):
    """Each cycle once, as a list of modules (first repeated at the end)."""
    cycles, seen_keys = [], set()
    state = {}
    stack = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, {})):
            if state.get(w) == 1:
                cyc = stack[stack.index(w):] + [w]
                key = frozenset(cyc)
                if key not in seen_keys:
                    seen_keys.add(key)
                    cycles.append(cyc)
            elif not state.get(w):
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if not state.get(v):
            visit(v)
    return cycles


def closure(graph, start):
    """Every module reachable from the modules in start, by includes."""
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m in seen or m not in graph:
            continue
        seen.add(m)
        todo.extend(graph[m])
    return seen


def objects_for(core, graph, test_file):
    """The core modules (with a .c) a unit test's includes reach."""
    with open(test_file, encoding="utf-8") as f:
        text = f.read()
    start = [module_of(m.group(1)) for m in INCLUDE.finditer(text)]
    mods = closure(graph, start)
    # a module's private header brings the module's other .c files along
    # (store_int.h: store_*.c), as they define what it declares
    for name in os.listdir(core):
        if name.endswith(".c"):
            mod = os.path.splitext(name)[0]
            if any(mod.startswith(m + "_") and m + "_int" in open(os.path.join(core, name),
                                                                  encoding="utf-8").read()
                   for m in list(mods)):
                mods |= closure(graph, [mod])
    return sorted(m for m in mods if os.path.exists(os.path.join(core, m + ".c")))


def main(argv):
    core = CORE
    if "--core" in argv:
        core = argv[argv.index("--core") + 1]
    graph = read_graph(core)
    if "--objs" in argv:
        print(" ".join(objects_for(core, graph, argv[argv.index("--objs") + 1])))
        return 0
    if "--list" in argv:
        for m in sorted(graph, key=lambda m: (layer_of(m) or 99, m)):
            print("%s %s" % (layer_of(m) or "?", m))
        return 0
    passed = failed = 0
    for m in sorted(graph):
        if layer_of(m) is None:
            print("FAIL core/%s: in no layer (add it to LAYERS in tests/layers.py)" % m)
            failed += 1
    for src in sorted(graph):
        for dst, where in sorted(graph[src].items()):
            ls, ld = layer_of(src), layer_of(dst)
            if ls is None or ld is None:
                continue
            if ld < ls:
                print("FAIL %s: %s (layer %d, %s) includes %s (layer %d, %s): an arrow up"
                      % (where, src, ls, LAYERS[ls - 1][0], dst, ld, LAYERS[ld - 1][0]))
                failed += 1
            else:
                passed += 1
    for cyc in find_cycles(graph):
        pairs = ", ".join("%s -> %s (%s)" % (a, b, graph[a][b]) for a, b in zip(cyc, cyc[1:]))
        print("FAIL cycle: %s" % pairs)
        failed += 1
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
