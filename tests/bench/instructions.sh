#!/usr/bin/env bash
# instructions.sh -- user-space instructions per ingested event, counted by
# valgrind's callgrind (stable on a noisy machine, unlike req/s): waybill
# with the bench's config (atoship source, every event routed to a disabled
# endpoint, so deliveries are held) under wrk -c16 for a few seconds, with
# instrumentation switched on only for the measured window.
#   tests/bench/instructions.sh [BINARY] [SECONDS]
# STORE=PATH runs it on a copy of an existing store instead of an empty one
# (e.g. one built by `make bench` part 5: --keep and --scale-dir; its
# pending deliveries are for endpoint "parked", which the config then has).
# ORDERED='LUA' orders the endpoint by key (e.g. '"data.tracking_number"').
# DELIVER=1 enables the endpoint, delivering to the bench's bare server
# (keep-alive, answering 200): the measured window then holds ingest and
# delivery, and the deliveries made in it are counted too (the bare server's
# /_count), so an attempt's cost is (I - the ingest-only I) x requests /
# deliveries.
# Prints "requests N  instructions/request I" (with DELIVER=1 also
# "deliveries D") and leaves the profile in
# tests/bench/out/callgrind.out.* (callgrind_annotate --inclusive=yes FILE).
set -u
cd "$(dirname "$0")/../.."
BIN=${1:-./waybill}
SECS=${2:-8}
OUT=tests/bench/out
mkdir -p "$OUT"
for tool in valgrind wrk curl; do
  command -v $tool >/dev/null 2>&1 || { echo "instructions: $tool is required" >&2; exit 0; }
done
export WAYBILL_LUA_DIR=${WAYBILL_LUA_DIR:-$PWD/lua}
RUN=$(mktemp -d)
trap 'rm -rf "$RUN"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P=$(port); AP=$(port); SP=$(port)
mkdir -p "$RUN/rules"
echo 'on("*", {"sink"})' > "$RUN/rules/10-all.lua"
cat > "$RUN/waybill.lua" <<C
listen = "127.0.0.1:$P"
admin = { listen = "127.0.0.1:$AP", token = "bench-token" }
store = "sqlite:$RUN/store.db"
$([ -n "${STORE:-}" ] && echo 'endpoint "parked" { url = "http://127.0.0.1:'$SP'/parked", secret = "whsec_YmVuY2gtc2VjcmV0LWZvci13YXliaWxs", sign = "standard" }')
allow_private = { "127.0.0.0/8" }
source "atoship" { verify = "atoship", secret = "bench-secret" }
endpoint "sink" { url = "http://127.0.0.1:$SP/", secret = "whsec_YmVuY2gtc2VjcmV0LWZvci13YXliaWxs", sign = "standard", enabled = $([ -n "${DELIVER:-}" ] && echo true || echo false)${ORDERED:+, ordered = $ORDERED} }
rules "rules/"
C
if [ -n "${STORE:-}" ]; then
  cp "$STORE" "$RUN/store.db" || exit 0
  # waybill opens the WAL store with its own -wal/-shm; a stale -wal must come along
  [ -f "$STORE-wal" ] && cp "$STORE-wal" "$RUN/store.db-wal"
fi
SINK=
if [ -n "${DELIVER:-}" ]; then
  ${CC:-cc} -O2 -std=c11 -D_GNU_SOURCE -o "$OUT/bare_server" tests/bench/bare_server.c \
    $(pkg-config --cflags --libs libevent) || exit 0
  "$OUT/bare_server" "$SP" &
  SINK=$!
  trap 'kill $SINK 2>/dev/null; rm -rf "$RUN"' EXIT
fi
sink_count() { curl -s "http://127.0.0.1:$SP/_count" 2>/dev/null || echo 0; }
rm -f "$OUT"/callgrind.out*
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out" \
  "$BIN" serve -c "$RUN/waybill.lua" >/dev/null 2>"$RUN/log" &
VG=$!
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$AP/healthz" && break
  sleep 0.2
done
URL="http://127.0.0.1:$P/hooks/atoship"
wrk -t1 -c16 -d2s -s tests/bench/ingest.lua "$URL" >/dev/null 2>&1  # warm up
[ -n "$SINK" ] && sleep 2 # the warm-up's deliveries drain
callgrind_control -i on $VG >/dev/null 2>&1
d0=$([ -n "$SINK" ] && sink_count)
res=$(wrk -t1 -c16 -d"${SECS}s" -s tests/bench/ingest.lua "$URL" 2>&1)
d1=$([ -n "$SINK" ] && sink_count)
callgrind_control -i off $VG >/dev/null 2>&1
callgrind_control -d $VG >/dev/null 2>&1
kill $VG 2>/dev/null
wait $VG 2>/dev/null
req=$(echo "$res" | awk '/requests in/ {print $1}')
ir=$(cat "$OUT"/callgrind.out* | awk '/^(summary|totals):/ {s += $2} END {print s + 0}')
if [ -z "$req" ] || [ "$req" = 0 ]; then
  echo "instructions: no requests measured" >&2
  exit 0
fi
if [ -n "$SINK" ]; then
  echo "requests $req  instructions/request $((ir / req))  deliveries $((d1 - d0))"
else
  echo "requests $req  instructions/request $((ir / req))"
fi
