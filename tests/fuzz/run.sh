#!/usr/bin/env bash
# run.sh SECONDS TARGET... -- runs each libFuzzer target (build-fuzz/fuzz/T)
# for SECONDS over a fresh corpus seeded from tests/fixtures and
# tests/fuzz/seeds, from the repository root (fuzz_adapters reads lua/).
# Prints one line per target, then `N passed, N failed` (a crash, leak,
# timeout or sanitizer report is a failure; its reproducer is kept in
# build-fuzz/crashes/).
set -u
cd "$(dirname "$0")/../.."
secs=$1
shift
passed=0
failed=0
mkdir -p build-fuzz/crashes
for t in "$@"; do
  corpus=$(mktemp -d)
  cp tests/fixtures/carriers/*.json "$corpus"/ 2>/dev/null
  [ -d "tests/fuzz/seeds/$t" ] && cp "tests/fuzz/seeds/$t"/* "$corpus"/
  log="build-fuzz/$t.log"
  start=$(date +%s)
  if timeout $((secs + 60)) "build-fuzz/fuzz/$t" -max_total_time="$secs" -timeout=10 \
       -rss_limit_mb=2048 -max_len=65536 -artifact_prefix=build-fuzz/crashes/"$t"- \
       -print_final_stats=1 "$corpus" >"$log" 2>&1; then
    runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    echo "PASS fuzz $t: ${runs:-?} runs in $(( $(date +%s) - start ))s, no finding"
    passed=$((passed + 1))
  else
    echo "FAIL fuzz $t (log build-fuzz/$t.log):"
    grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$log" | head -n 10 | sed 's/^/    /'
    failed=$((failed + 1))
  fi
  rm -rf "$corpus"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
