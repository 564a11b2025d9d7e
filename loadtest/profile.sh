#!/usr/bin/env bash
# Instruction counts per call for each scenario, from a release `nrl serve` under
# valgrind --tool=callgrind (this machine has no hardware perf counters, and instruction counts
# are not disturbed by other load the way timings are).
#
#   loadtest/profile.sh [--calls 2000] [--store memory|redis] [--skip-build]
#
# For each scenario: zero the counters, make N calls with nrl-load, dump. Writes
# loadtest/out/profile/<scenario>.callgrind, <scenario>.txt (callgrind_annotate, inclusive, top
# functions) and summary.txt (instructions per call, and per call over the Health/Check baseline).
# Everything is on 127.0.0.1 and bounded by the call count.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${NRL_PROFILE_OUT:-loadtest/out/profile}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${NRL_BIN_DIR:-$TARGET/release}  # NRL_BIN_DIR: run other binaries (e.g. a patched build)
CALLS=2000
STORE=memory
BUILD=1
PORT=${NRL_PROFILE_PORT:-50171}
REDIS_PORT=${NRL_PROFILE_REDIS_PORT:-6392}
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) CALLS=$2; shift ;;
    --store) STORE=$2; shift ;;
    --skip-build) BUILD=0 ;;
    *) echo "profile.sh: unknown option $1" >&2; exit 64 ;;
  esac
  shift
done
for tool in valgrind callgrind_annotate callgrind_control jq; do
  command -v "$tool" >/dev/null || { echo "profile.sh: $tool is needed (apt-get install valgrind jq)" >&2; exit 1; }
done
if [ "$BUILD" = 1 ]; then
  # Release binaries keep their symbol table, so functions are named (no line numbers).
  cargo build --release --bin nrl --bin nrl-load
fi
rm -rf "$OUT" && mkdir -p "$OUT/data"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

STORE_URL=memory
if [ "$STORE" = redis ]; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --hash-max-listpack-value 512 --hash-max-listpack-entries 256 --maxmemory-policy noeviction \
    --logfile "$ROOT/$OUT/redis.log" &
  PIDS+=("$!")
  STORE_URL="redis://127.0.0.1:$REDIS_PORT/0"
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

NRL_ADMIN_LISTEN=off NRL_FHIR_LISTEN=off valgrind --tool=callgrind --callgrind-out-file="$ROOT/$OUT/startup.callgrind" \
  "$BIN/nrl" serve --listen "127.0.0.1:$PORT" --store "$STORE_URL" > "$OUT/server.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 300); do
  "$BIN/nrl" regions --server "http://127.0.0.1:$PORT" >/dev/null 2>&1 && break
  sleep 0.2
done
"$BIN/nrl" seed --server "http://127.0.0.1:$PORT" --patients 1100 --out "$OUT/data/patients.txt" > /dev/null
"$BIN/nrl-load" prepare --server "http://127.0.0.1:$PORT" --patients-file "$OUT/data/patients.txt" \
  --out-dir "$OUT/data" --count 300 --batches 4 --batch-size 100 > /dev/null

: > "$OUT/summary.txt"
BASE=0
for s in health search-hit search-miss count get locate create batch-create; do
  calls=$CALLS
  [ "$s" = batch-create ] && calls=$(( CALLS / 20 ))
  callgrind_control --zero "$SERVER" > /dev/null
  "$BIN/nrl-load" run "loadtest/$s.json" --host "127.0.0.1:$PORT" --data-dir "$OUT/data" -n "$calls" -c 4 \
    --timeout 0 --out "$OUT/$s.json" > /dev/null
  callgrind_control --dump="$s" "$SERVER" > /dev/null
  sleep 1
  dump=$(ls -t "$OUT"/startup.callgrind.* | head -1)
  mv "$dump" "$OUT/$s.callgrind"
  callgrind_annotate --inclusive=yes "$OUT/$s.callgrind" > "$OUT/$s.txt" 2>/dev/null || true
  total=$(awk '/^summary:/ {print $2}' "$OUT/$s.callgrind")
  per=$(( total / calls ))
  [ "$s" = health ] && BASE=$per
  printf '%-14s %8d calls  %12d instructions/call  %6.2f x Health/Check  errors %s\n' \
    "$s" "$calls" "$per" "$(awk -v a="$per" -v b="$BASE" 'BEGIN { print (b ? a / b : 0) }')" \
    "$(jq -r .errors "$OUT/$s.json")" | tee -a "$OUT/summary.txt"
done
