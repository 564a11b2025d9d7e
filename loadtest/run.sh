#!/usr/bin/env bash
# Runs the load-test suite on this machine and writes loadtest/RESULTS.md.
#
#   loadtest/run.sh                 # default: memory + Redis, ~6 minutes
#   loadtest/run.sh --big           # also: 10M pointers into Redis, search p50 at 10M vs 10k
#   loadtest/run.sh --soak          # also: 10-minute soak at half of peak (errors, server RSS)
#   loadtest/run.sh --ghz           # drive the scenarios with ghz (on PATH) instead of nrl-load
#   loadtest/run.sh --h2load-only --quick   # only the h2load part, 2 s runs: about 2 minutes
#   loadtest/run.sh --fhir          # also: FHIR search (HTTP/1.1) beside gRPC search, h2load, each store
#   loadtest/run.sh --fhir-only     # only that part: its section of loadtest/RESULTS.md, ~6 minutes
#
# Options: --duration 10s (each scenario), --concurrency 32, --repeat 3 (baseline/search pairs,
# and h2load rounds), --big-pointers N, --soak-duration 10m, --soak-store redis|memory, --auth
# (extra: search through JWT authentication), --no-bench (skip `cargo bench --bench redis_store`),
# --skip-build, --fsync always,everysec (the Redis appendfsync settings to run the Redis suite
# with, in order; the last one's server stays up for --auth, --big and --soak).
# h2load (loadtest/h2load.bash): --h2load-duration 8 (seconds per h2load run), --no-h2load (skip
# it), --h2load-only (skip nrl-load, the benches and the extras; writes loadtest/RESULTS-h2load.md
# instead of RESULTS.md), --quick (2 s h2load runs, 3 s nrl-load runs, no store bench: a check
# that the suite works, not figures to quote; its report goes to loadtest/out/, never over the
# committed one). h2load comes from Debian's nghttp2-client; when it (or curl) is missing, run.sh
# installs it with apt-get, which needs root.
# FHIR (loadtest/fhir.bash): --fhir serves FHIR on each server (NRL_FHIR_LISTEN, 127.0.0.1:25181
# and 25182) and runs h2load rounds of gRPC Health/Check, gRPC SearchPointers, GET /FHIR/R4/_status
# and the FHIR DocumentReference search on each store; the goal: FHIR search >= 0.8 x gRPC search.
# --fhir-only runs that part alone (seeding as the suite does) and replaces its section of
# loadtest/RESULTS.md, leaving the rest (with --quick: loadtest/out/RESULTS-fhir.md instead).
#
# Everything runs on 127.0.0.1: a release `nrl serve` per store, a private redis-server started
# here with the settings README "Redis" requires, and the load generators. Every loop is bounded
# (by --duration, a call count, or a retry count). Outputs: loadtest/out/ (JSON reports, logs,
# data) and loadtest/RESULTS.md.
set -euo pipefail

ARGS="$*"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=loadtest/out
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${NRL_BIN_DIR:-$TARGET/release}  # NRL_BIN_DIR: run other binaries (e.g. a patched build)
DURATION=10s
CONC=32
REPEAT=3
BIG=0
BIG_POINTERS=10000000
SOAK=0
SOAK_DURATION=10m
SOAK_STORE=redis
AUTH=0
USE_GHZ=0
BENCH=1
BUILD=1
FSYNCS=always,everysec
H2LOAD=1
H2LOAD_ONLY=0
QUICK=0
H2_DURATION=8
H2_CLIENTS=4
H2_STREAMS=16
FHIR=0
FHIR_ONLY=0
# Fixed ports sit below Linux's ephemeral range (32768-60999), so no client socket of an earlier
# phase can hold one of them when its server starts.
MEM_PORT=${NRL_LOAD_MEM_PORT:-25161}
REDIS_GRPC_PORT=${NRL_LOAD_REDIS_GRPC_PORT:-25162}
AUTH_GRPC_PORT=${NRL_LOAD_AUTH_GRPC_PORT:-25163}
REDIS_PORT=${NRL_LOAD_REDIS_PORT:-6391}
# The servers' FHIR listeners, with --fhir (otherwise NRL_FHIR_LISTEN=off).
MEM_FHIR_PORT=${NRL_LOAD_MEM_FHIR_PORT:-25181}
REDIS_FHIR_PORT=${NRL_LOAD_REDIS_FHIR_PORT:-25182}
# The servers' admin listeners (/metrics): the h2load part reads the server's own count of non-OK
# calls from them.
MEM_ADMIN_PORT=${NRL_LOAD_MEM_ADMIN_PORT:-25171}
REDIS_ADMIN_PORT=${NRL_LOAD_REDIS_ADMIN_PORT:-25172}
SEED_PATIENTS=3334 # x 3 pointers = 10,002 stored pointers: the "10k" of the flatness goal

while [ $# -gt 0 ]; do
  case "$1" in
    --big) BIG=1 ;;
    --big-pointers) BIG_POINTERS=$2; shift ;;
    --soak) SOAK=1 ;;
    --soak-duration) SOAK_DURATION=$2; shift ;;
    --soak-store) SOAK_STORE=$2; shift ;;
    --auth) AUTH=1 ;;
    --ghz) USE_GHZ=1 ;;
    --no-bench) BENCH=0 ;;
    --skip-build) BUILD=0 ;;
    --duration) DURATION=$2; shift ;;
    --concurrency) CONC=$2; shift ;;
    --repeat) REPEAT=$2; shift ;;
    --fsync) FSYNCS=$2; shift ;;
    --h2load-duration) H2_DURATION=$2; shift ;;
    --no-h2load) H2LOAD=0 ;;
    --h2load-only) H2LOAD_ONLY=1 ;;
    --quick) QUICK=1 ;;
    --fhir) FHIR=1 ;;
    --fhir-only) FHIR=1; FHIR_ONLY=1 ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

if [ "$QUICK" = 1 ]; then
  H2_DURATION=2
  DURATION=3s
  BENCH=0
fi
if [ "$H2LOAD_ONLY" = 1 ]; then
  [ "$H2LOAD" = 1 ] || { echo "run.sh: --h2load-only and --no-h2load contradict each other" >&2; exit 64; }
  for extra in BIG SOAK AUTH USE_GHZ; do
    [ "${!extra}" = 0 ] || { echo "run.sh: --h2load-only runs the h2load part alone; drop --big/--soak/--auth/--ghz" >&2; exit 64; }
  done
  BENCH=0
fi
if [ "$FHIR_ONLY" = 1 ]; then
  [ "$H2LOAD_ONLY" = 0 ] || { echo "run.sh: --fhir-only and --h2load-only each run one part alone; pick one" >&2; exit 64; }
  for extra in BIG SOAK AUTH USE_GHZ; do
    [ "${!extra}" = 0 ] || { echo "run.sh: --fhir-only runs the FHIR part alone; drop --big/--soak/--auth/--ghz" >&2; exit 64; }
  done
  BENCH=0
fi
[[ $H2_DURATION =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: --h2load-duration takes whole seconds (h2load -D)" >&2; exit 64; }
# Where the report goes: a quick run's figures are too short to quote, so it never replaces the
# committed reports; it goes to loadtest/out/ instead.
RESULTS=loadtest/$([ "$H2LOAD_ONLY" = 1 ] && echo RESULTS-h2load.md || echo RESULTS.md)
if [ "$QUICK" = 1 ]; then RESULTS=$OUT/$(basename "$RESULTS"); fi
if [ "$FHIR_ONLY" = 1 ]; then RESULTS=$([ "$QUICK" = 1 ] && echo "$OUT/RESULTS-fhir.md" || echo loadtest/RESULTS.md); fi

for tool in jq redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is needed (apt-get install jq redis-server redis-tools)" >&2; exit 1; }
done
if [ "$USE_GHZ" = 1 ] && ! command -v ghz >/dev/null; then
  echo "run.sh: --ghz needs ghz on PATH" >&2; exit 1
fi

mkdir -p "$OUT"
COMMANDS=$OUT/commands.txt
: > "$COMMANDS"
log() { echo "== $*" >&2; }
# Records a command for RESULTS.md; run() also runs it.
record() { echo "$*" >> "$COMMANDS"; }
run() { record "$@"; "$@"; }

# shellcheck source=loadtest/h2load.bash
. loadtest/h2load.bash
# shellcheck source=loadtest/fhir.bash
. loadtest/fhir.bash
if [ "$H2LOAD" = 1 ] || [ "$FHIR" = 1 ]; then
  install_tool h2load nghttp2-client
  install_tool curl curl
fi

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$MEM_PORT" "$REDIS_GRPC_PORT" "$AUTH_GRPC_PORT" "$REDIS_PORT" "$MEM_ADMIN_PORT" "$REDIS_ADMIN_PORT" \
  $([ "$FHIR" = 1 ] && echo "$MEM_FHIR_PORT $REDIS_FHIR_PORT"); do
  port_free "$port" || { echo "run.sh: 127.0.0.1:$port is in use; set NRL_LOAD_*_PORT" >&2; exit 1; }
done

if [ "$BUILD" = 1 ]; then
  log "building release binaries"
  run cargo build --release --bin nrl --bin nrl-load
fi
NRL=$BIN/nrl
LOAD=$BIN/nrl-load

# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------
# start_redis DIR FSYNC
start_redis() {
  local dir=$1 fsync=$2
  rm -rf "$dir" && mkdir -p "$dir"
  # Started directly, not through run(), so $! is redis-server itself (stopped by pid at exit).
  record redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$ROOT/$dir" --save "" \
    --appendonly yes --appendfsync "$fsync" \
    --hash-max-listpack-value 512 --hash-max-listpack-entries 256 \
    --maxmemory-policy noeviction --logfile "$ROOT/$dir/redis.log"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$ROOT/$dir" --save "" \
    --appendonly yes --appendfsync "$fsync" \
    --hash-max-listpack-value 512 --hash-max-listpack-entries 256 \
    --maxmemory-policy noeviction --logfile "$ROOT/$dir/redis.log" &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "run.sh: redis-server did not start (see $dir/redis.log)" >&2; exit 1
}

# start_server NAME PORT ADMIN_PORT|off FHIR_PORT|off STORE [serve args...]; sets SERVER_PID
start_server() {
  local name=$1 port=$2 admin=$3 fhir=$4 store=$5; shift 5
  [ "$admin" = off ] || admin=127.0.0.1:$admin
  [ "$fhir" = off ] || fhir=127.0.0.1:$fhir
  record NRL_ADMIN_LISTEN="$admin" NRL_FHIR_LISTEN="$fhir" "$NRL" serve --listen "127.0.0.1:$port" --store "$store" "$@"
  NRL_ADMIN_LISTEN="$admin" NRL_FHIR_LISTEN="$fhir" "$NRL" serve --listen "127.0.0.1:$port" --store "$store" "$@" > "$OUT/$name.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 100); do
    # grpc.health.v1 answers without credentials, also when authentication is on.
    "$LOAD" run loadtest/health.json --host "127.0.0.1:$port" -n 1 -c 1 -t 1s >/dev/null 2>&1 && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.2
  done
  echo "run.sh: nrl serve ($name) did not come up (see $OUT/$name.log)" >&2; exit 1
}

stop_server() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# ---------------------------------------------------------------------------------------------
# Scenarios: the same config files, with nrl-load or ghz
# ---------------------------------------------------------------------------------------------
# scenario STORE_DIR PORT NAME CONFIG [override flags...]  -> $STORE_DIR/NAME.json
scenario() {
  local dir=$1 port=$2 name=$3 config=$4; shift 4
  local out=$dir/$name.json
  if [ "$USE_GHZ" = 1 ]; then
    "$LOAD" render "$config" --host "127.0.0.1:$port" --data-dir "$dir/data" --name "$name" "$@" > "$dir/$name.ghz.json"
    run ghz --config "$dir/$name.ghz.json" -O json -o "$out" || true
  else
    run "$LOAD" run "$config" --host "127.0.0.1:$port" --data-dir "$dir/data" --name "$name" "$@" --out "$out" \
      > "$dir/$name.txt" || true
  fi
  jq -r '"   \(.name // "'"$name"'"): \(.count) calls, \(.rps|floor) rps, p50 \((.latencyDistribution[]|select(.percentage==50).latency)/1e6) ms, errors \(.errors // ((.count) - (.statusCodeDistribution.OK // 0)))"' "$out" >&2 || true
}

jqv() { jq -r "$2" "$1"; }
errors_of() { jq -r '.errors // (.count - (.statusCodeDistribution.OK // 0))' "$1"; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print 0; else print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }

# seed_data STORE PORT: a fresh $OUT/STORE, the seeded patients, and the scenarios' data files.
seed_data() {
  local store=$1 port=$2 dir=$OUT/$1
  rm -rf "$dir" && mkdir -p "$dir/data"
  log "$store: seeding $SEED_PATIENTS patients x 3 pointers"
  run "$NRL" seed --server "http://127.0.0.1:$port" --patients "$SEED_PATIENTS" --pointers-per-patient 3 \
    --out "$dir/data/patients.txt" --json > "$dir/seed.json"
  run "$LOAD" prepare --server "http://127.0.0.1:$port" --patients-file "$dir/data/patients.txt" \
    --out-dir "$dir/data" --count 1000 > /dev/null
  jq -r '.[].query.nhs_number' "$dir/data/search-miss.json" > "$dir/data/miss.txt"
}

# suite STORE PORT ADMIN_PORT FHIR_PORT: seed, prepare, baseline and scenarios against one server,
# with nrl-load (or ghz), then the h2load part (and with --fhir the FHIR part) on the same server,
# before the writes.
suite() {
  local store=$1 port=$2 admin=$3 fport=$4 dir=$OUT/$1
  seed_data "$store" "$port"
  local pid=$SERVER_PID
  echo "$(rss_kb "$pid")" > "$dir/rss-start.txt"

  log "$store: baseline and search, $REPEAT rounds of $DURATION each at concurrency $CONC"
  for i in $(seq "$REPEAT"); do
    scenario "$dir" "$port" "health-$i" loadtest/health.json -c "$CONC" -z "$DURATION"
    scenario "$dir" "$port" "search-hit-$i" loadtest/search-hit.json -c "$CONC" -z "$DURATION"
  done
  for s in search-miss count get locate; do
    scenario "$dir" "$port" "$s" "loadtest/$s.json" -c "$CONC" -z "$DURATION"
  done
  if [ "$H2LOAD" = 1 ]; then h2load_store "$store" "$port" "$admin"; fi
  if [ "$FHIR" = 1 ]; then fhir_store "$store" "$port" "$fport" "$admin"; fi
  local peak half
  peak=$(for i in $(seq "$REPEAT"); do jqv "$dir/search-hit-$i.json" .rps; done | median)
  half=$(awk -v p="$peak" 'BEGIN { printf "%d", p / 2 }')
  echo "$half" > "$dir/half-rps.txt"
  log "$store: search at half of peak ($half rps)"
  scenario "$dir" "$port" search-hit-half loadtest/search-hit.json -c "$CONC" -z "$DURATION" --rps "$half"
  scenario "$dir" "$port" health-half loadtest/health.json -c "$CONC" -z "$DURATION" --rps "$half"
  log "$store: writes"
  scenario "$dir" "$port" create loadtest/create.json -c "$CONC" -z "$DURATION"
  scenario "$dir" "$port" batch-create loadtest/batch-create.json -z "$DURATION"
  echo "$(rss_kb "$pid")" > "$dir/rss-end.txt"
}

# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
START_SECS=$(date +%s)
uptime > "$OUT/load-before.txt"

# store_run STORE PORT ADMIN_PORT FHIR_PORT: the whole suite, or with --h2load-only (--fhir-only)
# the data and the h2load (FHIR) part.
store_run() {
  if [ "$H2LOAD_ONLY" = 1 ]; then
    seed_data "$1" "$2"
    h2load_store "$1" "$2" "$3"
    if [ "$FHIR" = 1 ]; then fhir_store "$1" "$2" "$4" "$3"; fi
  elif [ "$FHIR_ONLY" = 1 ]; then
    seed_data "$1" "$2"
    fhir_store "$1" "$2" "$4" "$3"
  else
    suite "$1" "$2" "$3" "$4"
  fi
}
MEM_FHIR=$([ "$FHIR" = 1 ] && echo "$MEM_FHIR_PORT" || echo off)
REDIS_FHIR=$([ "$FHIR" = 1 ] && echo "$REDIS_FHIR_PORT" || echo off)

start_server memory-server "$MEM_PORT" "$MEM_ADMIN_PORT" "$MEM_FHIR" memory
MEM_PID=$SERVER_PID
store_run memory "$MEM_PORT" "$MEM_ADMIN_PORT" "$MEM_FHIR"
stop_server "$MEM_PID"

REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
IFS=, read -r -a FSYNC_LIST <<< "$FSYNCS"
for FSYNC in "${FSYNC_LIST[@]}"; do
  [ -n "${REDIS_NRL_PID:-}" ] && { stop_server "$REDIS_NRL_PID"; stop_server "$REDIS_PID"; }
  # The suite's data and reports go to loadtest/out/redis-<fsync>; redis-server's own files too.
  RD=$OUT/redis-$FSYNC
  start_redis "$RD.db" "$FSYNC"
  start_server "redis-$FSYNC-server" "$REDIS_GRPC_PORT" "$REDIS_ADMIN_PORT" "$REDIS_FHIR" "$REDIS_URL"
  REDIS_NRL_PID=$SERVER_PID
  store_run "redis-$FSYNC" "$REDIS_GRPC_PORT" "$REDIS_ADMIN_PORT" "$REDIS_FHIR"
  redis-cli -p "$REDIS_PORT" info memory > "$RD/info-memory-10k.txt"
done
LAST=redis-$FSYNC

if [ "$AUTH" = 1 ]; then
  log "auth: a second server on the same Redis, with JWT authentication"
  head -c 48 /dev/urandom | base64 > "$OUT/$LAST/dev.secret"
  start_server auth-server "$AUTH_GRPC_PORT" off off "$REDIS_URL" --jwt-hs256-secret-file "$OUT/$LAST/dev.secret"
  AUTH_PID=$SERVER_PID
  CONSUMER=$("$NRL" token --secret-file "$OUT/$LAST/dev.secret" --org RA7 --role consumer)
  for i in $(seq "$REPEAT"); do
    scenario "$OUT/$LAST" "$AUTH_GRPC_PORT" "search-hit-auth-$i" loadtest/search-hit.json -c "$CONC" -z "$DURATION" \
      -m "authorization=Bearer $CONSUMER"
  done
  stop_server "$AUTH_PID"
fi

if [ "$BIG" = 1 ]; then
  HALF=$(cat "$OUT/$LAST/half-rps.txt")
  log "big: search p50 at 10k stored pointers, $REPEAT x $DURATION at $HALF rps"
  for i in $(seq "$REPEAT"); do
    scenario "$OUT/$LAST" "$REDIS_GRPC_PORT" "search-10k-$i" loadtest/search-hit.json -c "$CONC" -z "$DURATION" --rps "$HALF"
  done
  log "big: filling Redis to $BIG_POINTERS pointers through BatchCreatePointers"
  before=$(redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
  run "$LOAD" fill --server "http://127.0.0.1:$REDIS_GRPC_PORT" --pointers "$BIG_POINTERS" --per-patient 12 \
    --exclude "$OUT/$LAST/data/patients.txt" --exclude "$OUT/$LAST/data/miss.txt" > "$OUT/$LAST/fill.json"
  redis-cli -p "$REDIS_PORT" info memory > "$OUT/$LAST/info-memory-big.txt"
  after=$(awk -F: '/^used_memory:/ {print $2}' "$OUT/$LAST/info-memory-big.txt" | tr -d '\r')
  echo "$before $after" > "$OUT/$LAST/fill-memory.txt"
  redis-cli -p "$REDIS_PORT" dbsize > "$OUT/$LAST/dbsize-big.txt"
  log "big: search p50 at 10M stored pointers"
  for i in $(seq "$REPEAT"); do
    scenario "$OUT/$LAST" "$REDIS_GRPC_PORT" "search-10m-$i" loadtest/search-hit.json -c "$CONC" -z "$DURATION" --rps "$HALF"
  done
  scenario "$OUT/$LAST" "$REDIS_GRPC_PORT" search-10m-peak loadtest/search-hit.json -c "$CONC" -z "$DURATION"
fi

if [ "$SOAK" = 1 ]; then
  if [ "$SOAK_STORE" = memory ]; then
    start_server memory-soak "$MEM_PORT" off off memory
    SOAK_PID=$SERVER_PID
    SOAK_PORT=$MEM_PORT
    mkdir -p "$OUT/soak" && rm -rf "$OUT/soak/data" && cp -r "$OUT/memory/data" "$OUT/soak/data"
    run "$NRL" seed --server "http://127.0.0.1:$SOAK_PORT" --patients "$SEED_PATIENTS" --pointers-per-patient 3 > /dev/null
    run "$LOAD" prepare --server "http://127.0.0.1:$SOAK_PORT" --patients-file "$OUT/soak/data/patients.txt" \
      --out-dir "$OUT/soak/data" --count 1000 > /dev/null
    HALF=$(cat "$OUT/memory/half-rps.txt")
  else
    SOAK_PID=$REDIS_NRL_PID
    SOAK_PORT=$REDIS_GRPC_PORT
    mkdir -p "$OUT/soak" && rm -rf "$OUT/soak/data" && cp -r "$OUT/$LAST/data" "$OUT/soak/data"
    HALF=$(cat "$OUT/$LAST/half-rps.txt")
  fi
  log "soak: $SOAK_DURATION of search at $HALF rps on $SOAK_STORE; server RSS every 10 s"
  : > "$OUT/soak/rss.csv"
  scenario "$OUT/soak" "$SOAK_PORT" soak loadtest/search-hit.json -c "$CONC" -z "$SOAK_DURATION" --rps "$HALF" &
  SOAK_LOAD=$!
  while kill -0 "$SOAK_LOAD" 2>/dev/null; do
    echo "$(( $(date +%s) - START_SECS )),$(rss_kb "$SOAK_PID")" >> "$OUT/soak/rss.csv"
    sleep 10
  done
  wait "$SOAK_LOAD" || true
  if [ "$SOAK_STORE" = memory ]; then stop_server "$SOAK_PID"; fi
fi

stop_server "$REDIS_NRL_PID"

if [ "$BENCH" = 1 ]; then
  log "store-level Redis benchmark (1,000,000 pointers)"
  run cargo bench --bench redis_store > "$OUT/redis-bench.txt" 2>&1 || echo "bench failed: see $OUT/redis-bench.txt" >&2
  log "FederatedSearch over 3 nodes on loopback"
  run env NRL_BIN="$NRL" cargo bench --bench federation > "$OUT/federation-bench.txt" 2>&1 \
    || echo "bench failed: see $OUT/federation-bench.txt" >&2
fi
uptime > "$OUT/load-after.txt"

# ---------------------------------------------------------------------------------------------
# RESULTS.md
# ---------------------------------------------------------------------------------------------
pct() { jq -r --arg p "$2" '.latencyDistribution[] | select(.percentage == ($p|tonumber)) | .latency / 1e6' "$1"; }
ms() { awk -v v="$1" 'BEGIN { printf "%.2f", v }'; }
met() { if awk -v a="$1" -v b="$2" 'BEGIN { exit !(a '"$3"' b) }'; then echo met; else echo "**not met**"; fi; }

row() { # row FILE LABEL
  local f=$1
  printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s |\n' "$2" "$(jqv "$f" .count)" "$(jqv "$f" .rps)" \
    "$(ms "$(pct "$f" 50)")" "$(ms "$(pct "$f" 90)")" "$(ms "$(pct "$f" 99)")" "$(ms "$(pct "$f" 99.9 || echo 0)")" \
    "$(ms "$(jqv "$f" '.slowest / 1e6')")" "$(errors_of "$f")"
}

store_section() { # store_section DIR_NAME GOAL TITLE
  local store=$1 dir=$OUT/$1 goal=$2 title=$3
  local hr sr
  hr=$(for i in $(seq "$REPEAT"); do jqv "$dir/health-$i.json" .rps; done | median)
  sr=$(for i in $(seq "$REPEAT"); do jqv "$dir/search-hit-$i.json" .rps; done | median)
  local r; r=$(ratio "$sr" "$hr")
  local p99; p99=$(pct "$dir/search-hit-half.json" 99)
  echo "### $title"
  echo
  echo "| scenario | calls | rps | p50 ms | p90 ms | p99 ms | p99.9 ms | slowest ms | errors |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  for i in $(seq "$REPEAT"); do row "$dir/health-$i.json" "baseline Health/Check (round $i)"; done
  for i in $(seq "$REPEAT"); do row "$dir/search-hit-$i.json" "SearchPointers, hit (round $i)"; done
  row "$dir/search-miss.json" "SearchPointers, miss"
  row "$dir/count.json" "CountPointers"
  row "$dir/get.json" "GetPointer"
  row "$dir/locate.json" "LocatePatient"
  row "$dir/search-hit-half.json" "SearchPointers at $(cat "$dir/half-rps.txt") rps (half of peak)"
  row "$dir/health-half.json" "baseline at $(cat "$dir/half-rps.txt") rps"
  row "$dir/create.json" "CreatePointer"
  row "$dir/batch-create.json" "BatchCreatePointers (500 per call)"
  if [ -f "$dir/search-hit-auth-1.json" ]; then
    for i in $(seq "$REPEAT"); do row "$dir/search-hit-auth-$i.json" "SearchPointers with a JWT (round $i)"; done
  fi
  echo
  local bc; bc=$(jq -r '.rps * 500 | floor' "$dir/batch-create.json")
  echo "| goal | measured | target | |"
  echo "| --- | --- | --- | --- |"
  if [ "$H2LOAD" = 1 ]; then
    # The throughput goal is judged by h2load (its baseline is not held down by the client).
    echo "| SearchPointers throughput / bare RPC, nrl-load (medians of $REPEAT rounds: $(printf %.0f "$sr") / $(printf %.0f "$hr") rps) | $r | ≥ $goal | judged by h2load: $(met "$(ratio "$(h2_median "$store" search)" "$(h2_median "$store" health)")" "$goal" '>=') (see h2load and nrl-load side by side) |"
  else
    echo "| SearchPointers throughput / bare RPC, nrl-load (medians of $REPEAT rounds: $(printf %.0f "$sr") / $(printf %.0f "$hr") rps; h2load not run) | **$r** | ≥ $goal | $(met "$r" "$goal" '>=') |"
  fi
  echo "| SearchPointers p99 at half of peak | **$(ms "$p99") ms** | ≤ 5 ms | $(met "$p99" 5 '<=') |"
  echo "| errors in the half-of-peak run | $(errors_of "$dir/search-hit-half.json") | 0 | $(met "$(errors_of "$dir/search-hit-half.json")" 0 '==') |"
  if [ "$store" != memory ]; then
    echo "| batch registration end to end (BatchCreatePointers × 500, 4 in flight) | **$bc pointers/s** | ≥ 50,000 | $(met "$bc" 50000 '>=') |"
  else
    echo "| batch registration end to end (BatchCreatePointers × 500, 4 in flight) | $bc pointers/s | (goal is for Redis) | |"
  fi
  echo "| server RSS before → after the scenarios | $(cat "$dir/rss-start.txt") → $(cat "$dir/rss-end.txt") kB | | |"
  echo
}

machine_section() {
  echo "## Machine"
  echo
  echo "- CPU: $(nproc) cores, $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}')"
  echo "- Memory: $(free -g | awk '/^Mem:/ {print $2}') GiB; kernel $(uname -r)"
  echo "- Load average (1, 5, 15 min) before: $(awk -F'load average: ' '{print $2}' "$OUT/load-before.txt"); after: $(awk -F'load average: ' '{print $2}' "$OUT/load-after.txt")"
  echo "- Commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "- $(rustc --version); $(redis-server --version | cut -d' ' -f1-3)"
}

# h2load_results FILE_TITLE: the h2load part, every store, both tools where both ran.
h2load_results() {
  echo "## h2load and nrl-load side by side"
  echo
  h2load_method_note
  echo
  h2load_section memory "memory store"
  for f in "${FSYNC_LIST[@]}"; do h2load_section "redis-$f" "Redis store, appendfsync $f"; done
  local stores=(memory)
  for f in "${FSYNC_LIST[@]}"; do stores+=("redis-$f"); done
  h2load_goals "${stores[@]}"
}

STORES=(memory)
for f in "${FSYNC_LIST[@]}"; do STORES+=("redis-$f"); done

if [ "$FHIR_ONLY" = 1 ]; then
  fhir_section "${STORES[@]}" > "$OUT/fhir-section.md"
  if [ "$QUICK" = 1 ] || [ ! -f "$RESULTS" ]; then
    cp "$OUT/fhir-section.md" "$RESULTS"
  else
    fhir_splice "$OUT/fhir-section.md" "$RESULTS"
  fi
  log "wrote the FHIR section of $RESULTS"
  exit 0
fi

if [ "$H2LOAD_ONLY" = 1 ]; then
  {
    echo "# Load-test results: the h2load part alone"
    echo
    echo "Written by \`loadtest/run.sh${ARGS:+ $ARGS}\` on $START (UTC); took $(( $(date +%s) - START_SECS )) s."
    echo "Only h2load ran (no nrl-load, so its columns say \"not run\"); \`loadtest/run.sh\` without"
    echo "\`--h2load-only\` runs both tools in the same run and writes \`loadtest/RESULTS.md\`."
    [ "$QUICK" = 1 ] && echo "**Quick mode**: ${H2_DURATION} s runs. A check that the suite works; quote the full run's figures."
    echo
    machine_section
    echo
    echo "Stored: $SEED_PATIENTS patients × 3 pointers seeded by \`nrl seed\` on each store."
    echo "Redis: \`--appendonly yes --appendfsync {$FSYNCS} --hash-max-listpack-value 512 --hash-max-listpack-entries 256 --maxmemory-policy noeviction\`."
    echo
    h2load_results
    if [ "$FHIR" = 1 ]; then fhir_section "${STORES[@]}"; echo; fi
    echo "## Commands"
    echo
    echo '```sh'
    cat "$COMMANDS"
    echo '```'
  } > "$RESULTS"
  log "wrote $RESULTS"
  exit 0
fi

{
  echo "# Load-test results"
  echo
  echo "Written by \`loadtest/run.sh${ARGS:+ $ARGS}\` on $START (UTC); took $(( $(date +%s) - START_SECS )) s."
  echo "Load generators: $([ "$USE_GHZ" = 1 ] && echo "ghz $(ghz --version 2>/dev/null)" || echo "nrl-load (this repo), the same config files")$([ "$H2LOAD" = 1 ] && echo "; h2load $(h2load --version 2>/dev/null | awk '/h2load/ {print $NF; exit}') for the throughput goals (h2load and nrl-load side by side, below)")."
  if [ "$QUICK" = 1 ]; then
    echo "**Quick mode** ($DURATION nrl-load runs, ${H2_DURATION} s h2load runs, no store bench): a check that the suite works; quote a full run's figures."
  fi
  echo
  machine_section
  echo "- Client and server share the same $(nproc) cores, so every figure is also given as a ratio to the bare"
  echo "  \`grpc.health.v1.Health/Check\` RPC measured in the same run at the same concurrency ($CONC workers, 1 connection)."
  echo "  The machine is shared and noisy: throughput is the median of $REPEAT alternating rounds."
  echo
  echo "Stored: $SEED_PATIENTS patients × 3 pointers ($(jqv "$OUT/memory/seed.json" .pointers) pointers) seeded by \`nrl seed\`;"
  echo "hit searches pick 1000 of them round-robin; misses are 1000 valid test-range numbers with no pointers."
  echo "Redis: \`--appendonly yes --appendfsync {$FSYNCS} --hash-max-listpack-value 512 --hash-max-listpack-entries 256 --maxmemory-policy noeviction\`;"
  echo "the Redis suite runs once per appendfsync setting (README: both are supported; they differ in what a power loss can take)."
  echo
  echo "## Results"
  echo
  store_section memory "$(goal_of memory)" "memory store"
  for f in "${FSYNC_LIST[@]}"; do store_section "redis-$f" "$(goal_of "redis-$f")" "Redis store, appendfsync $f"; done
  if [ "$H2LOAD" = 1 ]; then h2load_results; fi
  if [ "$BIG" = 1 ]; then
    p10k=$(for i in $(seq "$REPEAT"); do pct "$OUT/$LAST/search-10k-$i.json" 50; done | median)
    p10m=$(for i in $(seq "$REPEAT"); do pct "$OUT/$LAST/search-10m-$i.json" 50; done | median)
    r=$(ratio "$p10m" "$p10k")
    read -r mem_before mem_after < "$OUT/$LAST/fill-memory.txt"
    echo "### 10M stored pointers (Redis)"
    echo
    echo "Fill: $(jq -r '"\(.pointers) pointers for \(.patients) patients in \(.seconds|floor) s (\(.pointers_per_second|floor) pointers/s end to end, 4 batches of 1000 in flight), \(.failed) failed"' "$OUT/$LAST/fill.json")."
    echo "Redis keys: $(cat "$OUT/$LAST/dbsize-big.txt"); used_memory grew by $(( (mem_after - mem_before) / 1048576 )) MiB ($(awk -v a="$mem_after" -v b="$mem_before" -v n="$(jqv "$OUT/$LAST/fill.json" .pointers)" 'BEGIN { printf "%.0f", (a - b) / n }') B per pointer, including the audit events the batch calls wrote)."
    echo
    echo "| scenario | calls | rps | p50 ms | p90 ms | p99 ms | p99.9 ms | slowest ms | errors |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for i in $(seq "$REPEAT"); do row "$OUT/$LAST/search-10k-$i.json" "search at 10k, $HALF rps (round $i)"; done
    for i in $(seq "$REPEAT"); do row "$OUT/$LAST/search-10m-$i.json" "search at 10M, $HALF rps (round $i)"; done
    row "$OUT/$LAST/search-10m-peak.json" "search at 10M, unthrottled"
    echo
    echo "| goal | measured | target | |"
    echo "| --- | --- | --- | --- |"
    echo "| search p50 at 10M / p50 at 10k (medians: $(ms "$p10m") / $(ms "$p10k") ms) | **$r** | ≤ 1.2 | $(met "$r" 1.2 '<=') |"
    echo
  fi
  if [ "$SOAK" = 1 ]; then
    first=$(awk -F, 'NR==7 {print $2}' "$OUT/soak/rss.csv")  # after a minute of warm-up
    last=$(tail -1 "$OUT/soak/rss.csv" | cut -d, -f2)
    growth=$(awk -v a="$last" -v b="$first" 'BEGIN { if (b == 0) print "n/a"; else printf "%.1f", (a - b) * 100 / b }')
    echo "### Soak: $SOAK_DURATION of SearchPointers at $HALF rps ($SOAK_STORE store)"
    echo
    echo "| scenario | calls | rps | p50 ms | p90 ms | p99 ms | p99.9 ms | slowest ms | errors |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    row "$OUT/soak/soak.json" "soak"
    echo
    echo "| goal | measured | target | |"
    echo "| --- | --- | --- | --- |"
    echo "| errors | $(errors_of "$OUT/soak/soak.json") | 0 | $(met "$(errors_of "$OUT/soak/soak.json")" 0 '==') |"
    echo "| server RSS growth, minute 1 → end ($first → $last kB) | **$growth %** | < 5 % | $(met "$growth" 5 '<') |"
    echo
    echo "RSS samples (seconds since the suite started, kB): \`$(tr '\n' ' ' < "$OUT/soak/rss.csv")\`"
    echo
  fi
  if [ "$BENCH" = 1 ] && [ -f "$OUT/redis-bench.txt" ]; then
    echo "### Store level: \`cargo bench --bench redis_store\`"
    echo
    echo '```'
    grep -v -E '^\s*(Compiling|Finished|Running|warning)' "$OUT/redis-bench.txt" | sed '/^$/N;/^\n$/D'
    echo '```'
    echo
  fi
  if [ "$BENCH" = 1 ] && [ -f "$OUT/federation-bench.txt" ]; then
    echo "### Federation: \`cargo bench --bench federation\` (goal: FederatedSearch p99 ≤ 10 ms)"
    echo
    grep -v -E '^\s*(Compiling|Finished|Running|warning)' "$OUT/federation-bench.txt" | sed 's/^## .*//' | sed '/^$/N;/^\n$/D'
    echo
  fi
  if [ "$FHIR" = 1 ]; then fhir_section "${STORES[@]}"; echo; fi
  echo "## Commands"
  echo
  echo '```sh'
  cat "$COMMANDS"
  echo '```'
  if [ -f loadtest/PROFILE.md ]; then
    echo
    cat loadtest/PROFILE.md
  fi
} > "$RESULTS"
log "wrote $RESULTS"
