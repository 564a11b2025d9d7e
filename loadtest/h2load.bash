# The h2load part of the load suite. Sourced by loadtest/run.sh (not run by itself): it uses
# run.sh's variables (OUT, LOAD, REPEAT, H2_*) and helpers (log, record, median, ratio, met).
#
# Why a second load generator: nrl-load is a tonic client on the same two cores as the server, and
# it spends more per call than the server does on a bare Health/Check, so its baseline is low and
# every ratio to it flatters the server. h2load (nghttp2) is a small C client that sends the same
# bytes with far less work, so its baseline is closer to what the server can do.
#
# For each scenario, `nrl-load frame` writes the request body once from the suite's own config and
# data (a 5-byte prefix: 0, the big-endian u32 length; then the protobuf message), and prints the
# path and the config's metadata, which become h2load's URL and -H headers. h2load only sees HTTP:
# a gRPC error is an HTTP 200 with a non-zero grpc-status. So a figure is only kept when
#   1. one curl call of the same body answers grpc-status 0, and its body decodes (nrl-load
#      unframe) into the answer expected (3 pointers for the search, the pointer asked for, ...);
#   2. h2load reports no failed, errored or timed-out request and nothing but 2xx (its 2xx count
#      can pass "done": it counts a status when the headers arrive, and a stream still open when
#      the duration ends is not done);
#   3. the server's own metrics (nrl_grpc_requests_total on its admin listener, read before and
#      after) count no non-OK call of that method during the run, and at least as many OK calls
#      as h2load counted answers. The one exception: when the duration ends, h2load resets the
#      streams still in flight (its "started" minus "done", at most -c x -m), and the server
#      records those as UNKNOWN or CANCELLED; up to that many of those two codes are allowed.
# Anything else stops the run: a fast stream of errors is never reported as throughput.

# The scenarios: name, config, label. Health/Check is the baseline.
H2_SCENARIOS=(health search get locate)
declare -A H2_CONFIG=([health]=health.json [search]=search-hit.json [get]=get.json [locate]=locate.json)
declare -A H2_LABEL=([health]="Health/Check (baseline)" [search]="SearchPointers (3 pointers)"
  [get]=GetPointer [locate]=LocatePatient)
# The nrl-load report each scenario's figure comes from (rounds for health and search).
declare -A NRL_LOAD_REPORT=([health]=health [search]=search-hit [get]=get [locate]=locate)

# Quotes only what needs it, so a recorded command can be pasted back into a shell.
shq() {
  local a safe='^[A-Za-z0-9_./:=@,+%-]+$' out=()
  for a in "$@"; do
    if [[ $a =~ $safe ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}
record_q() { shq "$@" >> "$COMMANDS"; }

# install_tool COMMAND PACKAGE: installs PACKAGE with apt-get when COMMAND is missing (root only).
install_tool() {
  local tool=$1 package=$2
  command -v "$tool" >/dev/null && return 0
  log "$tool is missing: installing the Debian package $package (apt-get update && apt-get install -y $package)"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "$package"; } > "$OUT/apt-$package.log" 2>&1 \
      || echo "run.sh: apt-get failed; see $OUT/apt-$package.log" >&2
  else
    echo "run.sh: not root (or no apt-get), so $package cannot be installed here" >&2
  fi
  command -v "$tool" >/dev/null && return 0
  echo "run.sh: $tool is needed for the h2load part. Install it with:" >&2
  echo "    apt-get update && apt-get install -y $package     # as root" >&2
  echo "or run without it: loadtest/run.sh --no-h2load" >&2
  exit 1
}

# grpc_counts ADMIN_PORT PATH -> "OK RESET OTHER": the server's count of finished calls of PATH,
# OK, UNKNOWN or CANCELLED (what a stream the client reset ends as), and any other code.
grpc_counts() {
  local text
  text=$(curl -s --max-time 5 "http://127.0.0.1:$1/metrics") \
    || { echo "run.sh: cannot read http://127.0.0.1:$1/metrics" >&2; exit 1; }
  awk -v m="grpc_method=\"$2\"" '
    /^nrl_grpc_requests_total\{/ && index($0, m) {
      if (index($0, "grpc_code=\"OK\"")) ok += $NF
      else if (index($0, "grpc_code=\"UNKNOWN\"") || index($0, "grpc_code=\"CANCELLED\"")) reset += $NF
      else other += $NF
    }
    END { printf "%d %d %d\n", ok, reset, other }' <<< "$text"
}

# h2_frame DIR NAME: writes DIR/NAME.bin and DIR/NAME.frame.json from the config and its data.
h2_frame() {
  local dir=$1 name=$2 data=$3
  run "$LOAD" frame "loadtest/${H2_CONFIG[$name]}" --data-dir "$data" --out "$dir/$name.bin" > "$dir/$name.frame.json"
}

# h2_headers DIR NAME: the -H arguments, one a line (gRPC's two, then the config's metadata).
h2_headers() {
  printf '%s\n' 'content-type: application/grpc' 'te: trailers'
  jq -r '.headers[]' "$1/$2.frame.json"
}

# h2_check DIR NAME PORT: one call with curl; grpc-status must be 0 and the answer the expected one.
h2_check() {
  local dir=$1 name=$2 port=$3 path args=() h expect
  path=$(jq -r .path "$dir/$name.frame.json")
  while IFS= read -r h; do args+=(-H "$h"); done < <(h2_headers "$dir" "$name")
  local cmd=(curl --http2-prior-knowledge -s --max-time 10 -D "$dir/$name.check.headers" -o "$dir/$name.check.bin"
    --data-binary "@$dir/$name.bin" "${args[@]}" "http://127.0.0.1:$port$path")
  record_q "${cmd[@]}"
  "${cmd[@]}" || { echo "run.sh: curl could not call $path on 127.0.0.1:$port" >&2; exit 1; }
  # curl writes HTTP/2 trailers to the header dump too; a Trailers-Only error has grpc-status in
  # the headers. Either way there must be exactly one grpc-status, and it must be 0.
  local statuses
  statuses=$(tr -d '\r' < "$dir/$name.check.headers" | awk -F': *' 'tolower($1) == "grpc-status" {print $2}' | paste -sd, -)
  if [ "$statuses" != 0 ]; then
    echo "run.sh: $path answered grpc-status '${statuses:-none}', not 0, so its h2load figures would count errors." >&2
    echo "        headers and trailers: $dir/$name.check.headers" >&2
    exit 1
  fi
  "$LOAD" unframe "loadtest/${H2_CONFIG[$name]}" "$dir/$name.check.bin" --data-dir "$H2_DATA" > "$dir/$name.check.json" \
    || { echo "run.sh: the answer of $path does not decode" >&2; exit 1; }
  case $name in
    health) expect='.status == "SERVING"' ;;
    search) expect='(.pointers | length) == 3' ;;
    get) expect=".pointer.id == $(jq -c .id <("$LOAD" unframe "loadtest/${H2_CONFIG[get]}" "$dir/get.bin" --request --data-dir "$H2_DATA"))" ;;
    locate) expect='(.regions | length) >= 1' ;;
  esac
  jq -e "$expect" "$dir/$name.check.json" > /dev/null \
    || { echo "run.sh: $path answered grpc-status 0 but not what was expected ($expect): $dir/$name.check.json" >&2; exit 1; }
}

# h2_parse FILE ...: h2load's summary as JSON (rps, counts, status classes, request time in ms).
h2_parse() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v + 0
    }
    /^finished in/ { gsub(",", ""); rps = $4 }
    /^requests:/ { gsub(",", ""); total = $2; started = $4; done = $6; ok = $8; failed = $10; errored = $12; timeout = $14 }
    /^status codes:/ { gsub(",", ""); s2 = $3; s3 = $5; s4 = $7; s5 = $9 }
    /^time for request:/ { min = ms($4); max = ms($5); mean = ms($6) }
    END {
      printf "{\"rps\":%s,\"total\":%d,\"started\":%d,\"done\":%d,\"succeeded\":%d,\"failed\":%d,\"errored\":%d,\"timeout\":%d,", \
        (rps == "" ? 0 : rps), total, started, done, ok, failed, errored, timeout
      printf "\"2xx\":%d,\"3xx\":%d,\"4xx\":%d,\"5xx\":%d,\"min_ms\":%s,\"mean_ms\":%s,\"max_ms\":%s}\n", \
        s2, s3, s4, s5, (min == "" ? 0 : min), (mean == "" ? 0 : mean), (max == "" ? 0 : max)
    }' "$1"
}

# h2_run DIR NAME PORT ADMIN_PORT ROUND: one h2load run, checked; DIR/NAME-ROUND.json.
h2_run() {
  local dir=$1 name=$2 port=$3 admin=$4 round=$5 path args=() h before after
  path=$(jq -r .path "$dir/$name.frame.json")
  while IFS= read -r h; do args+=(-H "$h"); done < <(h2_headers "$dir" "$name")
  local cmd=(h2load -c "$H2_CLIENTS" -m "$H2_STREAMS" -D "$H2_DURATION" "--data=$dir/$name.bin" "${args[@]}"
    "http://127.0.0.1:$port$path")
  record_q "${cmd[@]}"
  before=$(grpc_counts "$admin" "$path")
  "${cmd[@]}" > "$dir/$name-$round.txt" 2>&1 || { echo "run.sh: h2load failed: $dir/$name-$round.txt" >&2; exit 1; }
  after=$(grpc_counts "$admin" "$path")
  local ok0 reset0 other0 ok1 reset1 other1
  read -r ok0 reset0 other0 <<< "$before"
  read -r ok1 reset1 other1 <<< "$after"
  h2_parse "$dir/$name-$round.txt" \
    | jq --argjson ok "$((ok1 - ok0))" --argjson reset "$((reset1 - reset0))" --argjson other "$((other1 - other0))" \
      '. + {server_ok: $ok, server_reset: $reset, server_other: $other}' > "$dir/$name-$round.json"
  local problems
  problems=$(jq -r '[
      (select(.done == 0) | "no request was answered"),
      (select(.failed + .errored + .timeout > 0) | "\(.failed) failed, \(.errored) errored, \(.timeout) timed out"),
      (select(.["3xx"] + .["4xx"] + .["5xx"] > 0 or .["2xx"] < .succeeded) | "status codes \(.["2xx"]) 2xx for \(.succeeded) succeeded, \(.["3xx"]) 3xx, \(.["4xx"]) 4xx, \(.["5xx"]) 5xx"),
      (select(.server_other > 0) | "the server answered \(.server_other) calls with a non-OK grpc-status"),
      (select(.server_reset > .started - .done) | "the server ended \(.server_reset) calls UNKNOWN or CANCELLED, more than the \(.started - .done) streams h2load left in flight"),
      (select(.server_ok < .succeeded) | "the server counted \(.server_ok) OK calls, fewer than the \(.succeeded) h2load counted")
    ] | join("; ")' "$dir/$name-$round.json")
  if [ -n "$problems" ]; then
    echo "run.sh: h2load $path (round $round): $problems. Output: $dir/$name-$round.txt" >&2
    exit 1
  fi
  jq -r --arg n "$name-$round" '"   h2load \($n): \(.rps|floor) rps, mean \(.mean_ms) ms, \(.done) done, server OK \(.server_ok), reset at the end \(.server_reset), other \(.server_other)"' \
    "$dir/$name-$round.json" >&2
}

# h2load_store STORE PORT ADMIN_PORT: the h2load part against one server: frame, check, then
# REPEAT alternating rounds of the baseline and each scenario. Reports in $OUT/STORE/h2load/.
h2load_store() {
  local store=$1 port=$2 admin=$3 dir=$OUT/$1/h2load
  H2_DATA=$OUT/$1/data
  rm -rf "$dir" && mkdir -p "$dir"
  log "$store: h2load: framing the bodies and checking one call of each with curl"
  for name in "${H2_SCENARIOS[@]}"; do h2_frame "$dir" "$name" "$H2_DATA"; done
  for name in "${H2_SCENARIOS[@]}"; do h2_check "$dir" "$name" "$port"; done
  log "$store: h2load: $REPEAT alternating rounds of ${H2_DURATION} s each (-c $H2_CLIENTS -m $H2_STREAMS)"
  for i in $(seq "$REPEAT"); do
    for name in "${H2_SCENARIOS[@]}"; do h2_run "$dir" "$name" "$port" "$admin" "$i"; done
  done
}

# Median rps over the rounds of one tool's scenario; nrl-load's get and locate have one run each.
h2_median() { for i in $(seq "$REPEAT"); do jq -r .rps "$OUT/$1/h2load/$2-$i.json"; done | median; }
nrl_load_rps() {
  local store=$1 report=${NRL_LOAD_REPORT[$2]}
  if [ -f "$OUT/$store/$report-1.json" ]; then
    for i in $(seq "$REPEAT"); do jq -r .rps "$OUT/$store/$report-$i.json"; done | median
  elif [ -f "$OUT/$store/$report.json" ]; then
    jq -r .rps "$OUT/$store/$report.json"
  fi
}
goal_of() { case $1 in memory) echo 0.6 ;; redis-always) echo 0.3 ;; *) echo 0.4 ;; esac; }

# h2load_section STORE TITLE: one store's table, both tools side by side.
h2load_section() {
  local store=$1 title=$2 base nbase
  base=$(h2_median "$store" health)
  nbase=$(nrl_load_rps "$store" health)
  echo "### $title"
  echo
  local header="| scenario |" rule="| --- |"
  for i in $(seq "$REPEAT"); do header+=" h2load rps, round $i |"; rule+=" --- |"; done
  echo "$header h2load median rps | **h2load ratio** | ratio in each round | h2load mean ms (median) | nrl-load rps | nrl-load ratio |"
  echo "$rule --- | --- | --- | --- | --- | --- |"
  for name in "${H2_SCENARIOS[@]}"; do
    local line="| ${H2_LABEL[$name]} |" med nrps mean rounds=()
    for i in $(seq "$REPEAT"); do
      local rps
      rps=$(jq -r .rps "$OUT/$store/h2load/$name-$i.json")
      line+=" $(printf %.0f "$rps") |"
      # Against the same round's baseline: shows when the machine's speed moved during the run,
      # which the ratio of medians alone hides.
      rounds+=("$(ratio "$rps" "$(jq -r .rps "$OUT/$store/h2load/health-$i.json")")")
    done
    med=$(h2_median "$store" "$name")
    mean=$(for i in $(seq "$REPEAT"); do jq -r .mean_ms "$OUT/$store/h2load/$name-$i.json"; done | median)
    nrps=$(nrl_load_rps "$store" "$name")
    line+=" $(printf %.0f "$med") | **$(ratio "$med" "$base")** | ${rounds[*]} | $(ms "$mean") |"
    if [ -n "$nrps" ]; then
      line+=" $(printf %.0f "$nrps") | $(ratio "$nrps" "$nbase") |"
    else
      line+=" not run | |"
    fi
    echo "$line"
  done
  echo
}

# h2load_goals STORE...: the goals, judged by h2load, nrl-load beside.
h2load_goals() {
  echo "| goal (judged by h2load; ratio of median rps to the same run's Health/Check) | h2load | nrl-load | target | |"
  echo "| --- | --- | --- | --- | --- |"
  local store name
  for store in "$@"; do
    local base nbase goal
    base=$(h2_median "$store" health)
    nbase=$(nrl_load_rps "$store" health)
    goal=$(goal_of "$store")
    for name in search get locate; do
      local r nr=""
      r=$(ratio "$(h2_median "$store" "$name")" "$base")
      [ -n "$nbase" ] && nr=$(ratio "$(nrl_load_rps "$store" "$name")" "$nbase")
      if [ "$name" = search ]; then
        echo "| ${H2_LABEL[$name]} / Health/Check, $store | **$r** | ${nr:-not run} | ≥ $goal | $(met "$r" "$goal" '>=') |"
      else
        echo "| ${H2_LABEL[$name]} / Health/Check, $store | $r | ${nr:-not run} | (beside it; no goal) | |"
      fi
    done
  done
  echo
}

h2load_method_note() {
  echo "h2load $(h2load --version 2>/dev/null | awk '/h2load/ {print $NF; exit}') drives each RPC over HTTP/2 cleartext with \`-c $H2_CLIENTS -m $H2_STREAMS -D $H2_DURATION\`"
  echo "($H2_CLIENTS connections × $H2_STREAMS streams in flight, ${H2_DURATION} s per run), sending one pre-framed request body"
  echo "(\`nrl-load frame\`: 0, big-endian u32 length, the protobuf message of the config's first data message:"
  echo "one seeded patient with 3 pointers, one of its pointer ids, the same patient to locate). nrl-load"
  echo "rotates over 1000 patients with $CONC workers on 1 connection, so the two tools' ratios differ in load shape"
  echo "as well as in client cost; its GetPointer and LocatePatient figures are its single run of each, over the"
  echo "median of its Health/Check rounds. Each h2load figure was kept only after one curl call of the same body"
  echo "answered grpc-status 0 with the expected message, h2load reported only 2xx and no failed, errored or"
  echo "timed-out request, and the server's \`nrl_grpc_requests_total\` counted no non-OK call of that method"
  echo "during the run (except UNKNOWN/CANCELLED for the streams h2load resets when its duration ends, at most"
  echo "its started − done). Rounds alternate baseline and scenarios on the same server; figures are medians of $REPEAT."
  echo "\"Ratio in each round\" divides each round's rps by the same round's Health/Check: when the machine"
  echo "slows down during a run (other tenants), the rounds disagree, and the ratio of medians is then less"
  echo "trustworthy than its two decimals suggest."
}
