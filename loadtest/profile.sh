#!/usr/bin/env bash
# Instruction counts per call for each scenario, from a release `nrl serve` under
# valgrind --tool=callgrind (this machine has no hardware perf counters, and instruction counts
# are not disturbed by other load the way timings are).
#
#   loadtest/profile.sh [--calls 2000] [--store memory|redis|redis-always] [--skip-build] [--h2load]
#
# For each scenario: zero the counters, make N calls with nrl-load, dump. With --h2load the calls
# are made by h2load instead (4 connections x 16 streams, a body framed by `nrl-load frame`, as in
# loadtest/h2load.bash), for the scenarios h2load drives: 64 calls in flight, so concurrent reads
# share audit batches as they do in the throughput runs, where nrl-load's 4 do not. Writes
# loadtest/out/profile/<scenario>.callgrind, <scenario>.txt (callgrind_annotate, inclusive, top
# functions) and summary.txt (instructions per call, and per call over the Health/Check baseline).
# Everything is on 127.0.0.1 and bounded by the call count.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${NRL_PROFILE_OUT:-loadtest/out/profile}
case "$OUT" in /*) ;; *) OUT=$ROOT/$OUT ;; esac  # valgrind and redis-server need it absolute
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${NRL_BIN_DIR:-$TARGET/release}  # NRL_BIN_DIR: run other binaries (e.g. a patched build)
CALLS=2000
STORE=memory
BUILD=1
DRIVER=nrl-load
PORT=${NRL_PROFILE_PORT:-25191}
REDIS_PORT=${NRL_PROFILE_REDIS_PORT:-6392}
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) CALLS=$2; shift ;;
    --store) STORE=$2; shift ;;
    --skip-build) BUILD=0 ;;
    --h2load) DRIVER=h2load ;;
    *) echo "profile.sh: unknown option $1" >&2; exit 64 ;;
  esac
  shift
done
for tool in valgrind callgrind_annotate callgrind_control jq $([ "$DRIVER" = h2load ] && echo h2load); do
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
APPEND=(--appendonly no)
[ "$STORE" = redis-always ] && APPEND=(--appendonly yes --appendfsync always --dir "$OUT")
if [ "$STORE" != memory ]; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" "${APPEND[@]}" \
    --hash-max-listpack-value 512 --hash-max-listpack-entries 256 --maxmemory-policy noeviction \
    --logfile "$OUT/redis.log" &
  PIDS+=("$!")
  STORE_URL="redis://127.0.0.1:$REDIS_PORT/0"
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

# Under valgrind the server runs ~50x slower: give each call (and its store calls) room.
NRL_REDIS_TIMEOUT_MS=${NRL_REDIS_TIMEOUT_MS:-20000} NRL_ADMIN_LISTEN=off NRL_FHIR_LISTEN=off valgrind --tool=callgrind --callgrind-out-file="$OUT/startup.callgrind" \
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
SCENARIOS=(health search-hit search-miss count get locate create batch-create)
[ "$DRIVER" = h2load ] && SCENARIOS=(health search-hit get locate)
for s in "${SCENARIOS[@]}"; do
  calls=$CALLS
  [ "$s" = batch-create ] && calls=$(( CALLS / 20 ))
  if [ "$DRIVER" = h2load ]; then
    "$BIN/nrl-load" frame "loadtest/$s.json" --data-dir "$OUT/data" --out "$OUT/$s.bin" > "$OUT/$s.frame.json"
    headers=(-H 'content-type: application/grpc' -H 'te: trailers')
    while IFS= read -r h; do headers+=(-H "$h"); done < <(jq -r '.headers[]' "$OUT/$s.frame.json")
    callgrind_control --zero "$SERVER" > /dev/null
    h2load -n "$calls" -c 4 -m 16 "--data=$OUT/$s.bin" "${headers[@]}" \
      "http://127.0.0.1:$PORT$(jq -r .path "$OUT/$s.frame.json")" > "$OUT/$s.h2load.txt"
    # h2load sees HTTP only; the server's log would show errors, and every answer must be a 2xx.
    grep -q "status codes: $calls 2xx" "$OUT/$s.h2load.txt" || { echo "profile.sh: h2load: $(grep 'status codes' "$OUT/$s.h2load.txt")" >&2; exit 1; }
    echo '{"errors": 0}' > "$OUT/$s.json"
  else
    callgrind_control --zero "$SERVER" > /dev/null
    "$BIN/nrl-load" run "loadtest/$s.json" --host "127.0.0.1:$PORT" --data-dir "$OUT/data" -n "$calls" -c 4 \
      --timeout 0 --out "$OUT/$s.json" > /dev/null
  fi
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
