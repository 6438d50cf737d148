#!/usr/bin/env bash
# run.sh -- `make bench`: waybill's ingest throughput and latency beside its
# baselines (bare libevent server, Debian's webhook, the seed-002 Node/Express
# receiver), measured in the same run, interleaved, with waybill on a store
# of 1,000,000 pending deliveries as well; then waybill's sustained delivery
# throughput (1 and 4 endpoints), end-to-end latency and rule cost. See
# bench.py for what runs and how; then pg_bench.py, the PostgreSQL rows.
# Installs wrk/webhook when missing (as root, asked: BENCH_INSTALL=1 or a
# prompt), builds the bare server into
# tests/bench/out/, then runs bench.py; extra arguments go to bench.py
# (e.g. --rounds 5 --duration 10 --servers bare,webhook). Exits 0 whatever
# the numbers.
set -u
cd "$(dirname "$0")/../.."
OUT=tests/bench/out
mkdir -p "$OUT"

missing=""
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
command -v webhook >/dev/null 2>&1 || missing="$missing webhook"
command -v taskset >/dev/null 2>&1 || missing="$missing util-linux"
# The benchmark peers are installed only when asked: BENCH_INSTALL=1, or a
# "y" at the prompt on a terminal.
if [ -n "$missing" ]; then
  install=${BENCH_INSTALL:-}
  if [ -z "$install" ] && [ "$(id -u)" = 0 ] && [ -t 0 ]; then
    printf 'bench: install%s with apt-get? [y/N] ' "$missing" >&2
    read -r answer || answer=""
    case "$answer" in y|Y|yes) install=1 ;; esac
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "bench: missing:$missing (sudo apt-get install$missing)" >&2
  elif [ "$install" = 1 ]; then
    echo "bench: installing:$missing" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null \
      || echo "bench: apt-get install$missing failed" >&2
  else
    echo "bench: missing:$missing (BENCH_INSTALL=1 make bench installs them)" >&2
  fi
fi
if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: wrk is required" >&2
  exit 0
fi
if [ -d tests/node_modules ] || ! command -v npm >/dev/null 2>&1; then :; else
  (cd tests && npm ci --no-audit --no-fund --silent) >/dev/null 2>&1 || true
fi

CC=${CC:-cc}
if ! $CC -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -o "$OUT/bare_server" tests/bench/bare_server.c \
     $(pkg-config --cflags --libs libevent); then
  echo "bench: building the bare server failed" >&2
fi

if [ ! -x ./waybill ]; then
  echo "bench: ./waybill is not built; measuring the baselines only" >&2
fi
# INT/TERM: bench.py stops its servers and removes its stores (the scale
# store is ~2 GiB) before it exits.
python3 tests/bench/bench.py "$@" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null' INT TERM
while ! wait $pid; do kill -0 $pid 2>/dev/null || break; done
# The PostgreSQL rows (issue 15), appended to the same results; BENCH_PG=0
# skips them (about 5 minutes: three ingest rounds, 1-3 instances, and the
# held transaction's two 60 s windows).
if [ "${BENCH_PG:-1}" != 0 ]; then
  python3 tests/bench/pg_bench.py &
  pid=$!
  while ! wait $pid; do kill -0 $pid 2>/dev/null || break; done
fi
exit 0
