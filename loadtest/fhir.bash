# The FHIR part of the load suite (`run.sh --fhir`, `run.sh --fhir-only`). Sourced by run.sh after
# h2load.bash: it uses run.sh's variables (OUT, REPEAT, H2_*) and helpers (log, record_q, median,
# ratio, met, ms) and h2load.bash's gRPC functions (h2_frame, h2_check, h2_run, h2_parse).
#
# The question it answers (issue 13): is a FHIR search, GET /FHIR/R4/DocumentReference?
# subject:identifier=https://fhir.nhs.uk/Id/nhs-number|N, at least 0.8x as fast as the same search
# over gRPC (SearchPointers), on the same server and store? Both are driven by the same independent
# client, h2load: gRPC over HTTP/2 cleartext as in the h2load part (-c 4 -m 16: 64 calls in flight
# on 4 connections), FHIR over HTTP/1.1 (--h1 -c 64 -m 1: 64 requests in flight, one per kept-alive
# connection, no pipelining, as an HTTP/1.1 client pool would send them). Each protocol has its
# bare baseline in the same rounds: grpc.health.v1 Health/Check, and GET /FHIR/R4/_status (which
# also pings the store: on Redis, one PING per request). The FHIR search rotates over the 1000
# patients the suite's search-hit data holds (h2load -i, a URI list), 3 pointers each; the gRPC
# search sends the first of them every time (h2load sends one body).
#
# A FHIR figure is kept only when
#   1. curl gets 200 {"message":"OK"} from _status, and for the first 3 URIs of the list a 200
#      searchset Bundle with total 3 and 3 DocumentReference entries of that patient;
#   2. h2load reports no failed, errored or timed-out request, and only 2xx (a FHIR error is a 4xx or
#      5xx with an OperationOutcome, so HTTP status is the whole story here);
#   3. the server's nrl_refusals_total (every call refused or failed, gRPC and FHIR alike) did not
#      grow during the run.
# The gRPC figures are checked as in the h2load part (grpc-status 0 and the server's own counts).

FHIR_CLIENTS=${FHIR_CLIENTS:-64}
FHIR_SCENARIOS=(grpc-health grpc-search http-status fhir-search)
declare -A FHIR_LABEL=(
  [grpc-health]="gRPC Health/Check (baseline)"
  [grpc-search]="gRPC SearchPointers (3 pointers)"
  [http-status]="HTTP GET /FHIR/R4/_status (baseline)"
  [fhir-search]="FHIR GET /FHIR/R4/DocumentReference?subject:identifier=… (3 pointers)"
)
FHIR_HEADERS=('accept: application/fhir+json' 'x-purpose-of-use: direct-care')

# fhir_uris DIR PORT DATA: DIR/search.uris, one search URI per search-hit patient.
fhir_uris() {
  local dir=$1 port=$2 data=$3
  jq -r --arg base "http://127.0.0.1:$port/FHIR/R4" \
    '.[].query.nhs_number | "\($base)/DocumentReference?subject:identifier=https://fhir.nhs.uk/Id/nhs-number%7C\(.)"' \
    "$data/search-hit.json" > "$dir/search.uris"
  [ "$(wc -l < "$dir/search.uris")" -ge 1 ] || { echo "run.sh: no patients in $data/search-hit.json" >&2; exit 1; }
}

# fhir_check DIR PORT: one _status and three searches with curl, each the answer expected.
fhir_check() {
  local dir=$1 port=$2 args=() h i uri nhs
  for h in "${FHIR_HEADERS[@]}"; do args+=(-H "$h"); done
  local cmd=(curl -s --max-time 10 -o "$dir/status.check.json" -w '%{http_code}' "${args[@]}" "http://127.0.0.1:$port/FHIR/R4/_status")
  record_q "${cmd[@]}"
  [ "$("${cmd[@]}")" = 200 ] && jq -e '.message == "OK"' "$dir/status.check.json" > /dev/null \
    || { echo "run.sh: GET /FHIR/R4/_status on 127.0.0.1:$port did not answer 200 {\"message\":\"OK\"}" >&2; exit 1; }
  for i in 1 2 3; do
    uri=$(sed -n "${i}p" "$dir/search.uris")
    nhs=${uri##*%7C}
    cmd=(curl -s --max-time 10 -o "$dir/search-$i.check.json" -w '%{http_code}' "${args[@]}" "$uri")
    record_q "${cmd[@]}"
    local code
    code=$("${cmd[@]}") || { echo "run.sh: curl could not GET $uri" >&2; exit 1; }
    [ "$code" = 200 ] || { echo "run.sh: $uri answered HTTP $code: $dir/search-$i.check.json" >&2; exit 1; }
    jq -e --arg nhs "$nhs" '.resourceType == "Bundle" and .type == "searchset" and .total == 3
        and (.entry | length) == 3
        and all(.entry[]; .resource.resourceType == "DocumentReference" and .resource.subject.identifier.value == $nhs)' \
      "$dir/search-$i.check.json" > /dev/null \
      || { echo "run.sh: $uri answered 200 but not a Bundle of the patient's 3 DocumentReferences: $dir/search-$i.check.json" >&2; exit 1; }
  done
}

# refusals ADMIN_PORT: the server's count of calls refused or failed, every operation and API.
refusals() {
  local text
  text=$(curl -s --max-time 5 "http://127.0.0.1:$1/metrics") \
    || { echo "run.sh: cannot read http://127.0.0.1:$1/metrics" >&2; exit 1; }
  awk '/^nrl_refusals_total\{/ { n += $NF } END { printf "%d\n", n }' <<< "$text"
}

# fhir_http_run DIR NAME PORT ADMIN_PORT ROUND: one h2load --h1 run, checked; DIR/NAME-ROUND.json.
fhir_http_run() {
  local dir=$1 name=$2 port=$3 admin=$4 round=$5 args=() h before after target
  for h in "${FHIR_HEADERS[@]}"; do args+=(-H "$h"); done
  case $name in
    http-status) target=("http://127.0.0.1:$port/FHIR/R4/_status") ;;
    fhir-search) target=(-i "$dir/search.uris") ;;
  esac
  local cmd=(h2load --h1 -c "$FHIR_CLIENTS" -m 1 -D "$H2_DURATION" "${args[@]}" "${target[@]}")
  record_q "${cmd[@]}"
  before=$(refusals "$admin")
  "${cmd[@]}" > "$dir/$name-$round.txt" 2>&1 || { echo "run.sh: h2load failed: $dir/$name-$round.txt" >&2; exit 1; }
  after=$(refusals "$admin")
  h2_parse "$dir/$name-$round.txt" | jq --argjson refused "$((after - before))" '. + {server_refused: $refused}' \
    > "$dir/$name-$round.json"
  local problems
  problems=$(jq -r '[
      (select(.done == 0) | "no request was answered"),
      (select(.failed + .errored + .timeout > 0) | "\(.failed) failed, \(.errored) errored, \(.timeout) timed out"),
      (select(.["3xx"] + .["4xx"] + .["5xx"] > 0 or .["2xx"] < .succeeded) | "status codes \(.["2xx"]) 2xx for \(.succeeded) succeeded, \(.["3xx"]) 3xx, \(.["4xx"]) 4xx, \(.["5xx"]) 5xx"),
      (select(.server_refused > 0) | "the server refused or failed \(.server_refused) calls (nrl_refusals_total)")
    ] | join("; ")' "$dir/$name-$round.json")
  if [ -n "$problems" ]; then
    echo "run.sh: h2load --h1 $name (round $round): $problems. Output: $dir/$name-$round.txt" >&2
    exit 1
  fi
  jq -r --arg n "$name-$round" '"   h2load \($n): \(.rps|floor) rps, mean \(.mean_ms) ms, \(.done) done, 2xx \(.["2xx"])"' \
    "$dir/$name-$round.json" >&2
}

# fhir_store STORE GRPC_PORT FHIR_PORT ADMIN_PORT: the four scenarios against one server, REPEAT
# alternating rounds, the 1-minute load average after each run. Reports in $OUT/STORE/fhir/.
fhir_store() {
  local store=$1 port=$2 fport=$3 admin=$4 dir=$OUT/$1/fhir
  H2_DATA=$OUT/$1/data
  rm -rf "$dir" && mkdir -p "$dir"
  log "$store: FHIR: the URI list, the gRPC bodies, and one checked call of each"
  fhir_uris "$dir" "$fport" "$H2_DATA"
  h2_frame "$dir" health "$H2_DATA"
  h2_frame "$dir" search "$H2_DATA"
  h2_check "$dir" health "$port"
  h2_check "$dir" search "$port"
  fhir_check "$dir" "$fport"
  cut -d' ' -f1 /proc/loadavg > "$dir/loadavg.txt"
  log "$store: FHIR: $REPEAT alternating rounds of ${H2_DURATION} s (gRPC -c $H2_CLIENTS -m $H2_STREAMS, HTTP/1.1 -c $FHIR_CLIENTS -m 1)"
  for i in $(seq "$REPEAT"); do
    h2_run "$dir" health "$port" "$admin" "$i" && mv "$dir/health-$i.json" "$dir/grpc-health-$i.json"
    cut -d' ' -f1 /proc/loadavg >> "$dir/loadavg.txt"
    h2_run "$dir" search "$port" "$admin" "$i" && mv "$dir/search-$i.json" "$dir/grpc-search-$i.json"
    cut -d' ' -f1 /proc/loadavg >> "$dir/loadavg.txt"
    fhir_http_run "$dir" http-status "$fport" "$admin" "$i"
    cut -d' ' -f1 /proc/loadavg >> "$dir/loadavg.txt"
    fhir_http_run "$dir" fhir-search "$fport" "$admin" "$i"
    cut -d' ' -f1 /proc/loadavg >> "$dir/loadavg.txt"
  done
}

fhir_median() { for i in $(seq "$REPEAT"); do jq -r .rps "$OUT/$1/fhir/$2-$i.json"; done | median; }
fhir_loadavg() { sort -g "$OUT/$1/fhir/loadavg.txt" | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s–%s", lo, hi}'; }

# fhir_section STORE...: the section for RESULTS.md, between markers so that a later
# `run.sh --fhir-only` replaces it in place.
fhir_section() {
  local store
  echo "<!-- fhir-section:begin (written by loadtest/run.sh --fhir or --fhir-only; replaced by the next such run) -->"
  echo "## FHIR search beside gRPC search (h2load)"
  echo
  echo "Written by \`loadtest/run.sh${ARGS:+ $ARGS}\` on $START (UTC). Commit $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)'); release build."
  echo "Machine: $(nproc) cores ($(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}')), shared by h2load, the server and Redis;"
  echo "other work on the machine during the run: see the 1-minute load average per store below."
  [ "$QUICK" = 1 ] && echo "**Quick mode**: ${H2_DURATION} s runs. A check that the suite works; quote a full run's figures."
  echo
  echo "h2load $(h2load --version 2>/dev/null | awk '/h2load/ {print $NF; exit}'), ${H2_DURATION} s per run, $REPEAT alternating rounds of the four scenarios on the same server"
  echo "and store; figures are medians. gRPC: HTTP/2 cleartext, \`-c $H2_CLIENTS -m $H2_STREAMS\` ($((H2_CLIENTS * H2_STREAMS)) calls in flight), one"
  echo "pre-framed body (the first search-hit patient). FHIR: HTTP/1.1, \`--h1 -c $FHIR_CLIENTS -m 1\` ($FHIR_CLIENTS requests in flight on"
  echo "$FHIR_CLIENTS kept-alive connections, no pipelining), rotating over the 1000 search-hit patients (\`-i\`, a URI list), with"
  echo "\`accept: application/fhir+json\` and \`x-purpose-of-use: direct-care\`; every patient has 3 pointers. The"
  echo "HTTP baseline \`/_status\` also pings the store (on Redis, one PING). A figure is kept only after curl"
  echo "checked one call of each (a Bundle of the patient's 3 DocumentReferences), h2load saw only 2xx and"
  echo "no failure, and the server's \`nrl_refusals_total\` did not grow; gRPC as in the h2load part."
  echo
  for store in "$@"; do
    echo "### $store (1-minute load average during the runs: $(fhir_loadavg "$store"))"
    echo
    local header="| scenario |" rule="| --- |" name i
    for i in $(seq "$REPEAT"); do header+=" rps, round $i |"; rule+=" --- |"; done
    echo "$header median rps | mean ms (median) |"
    echo "$rule --- | --- |"
    for name in "${FHIR_SCENARIOS[@]}"; do
      local line="| ${FHIR_LABEL[$name]} |" mean
      for i in $(seq "$REPEAT"); do line+=" $(printf %.0f "$(jq -r .rps "$OUT/$store/fhir/$name-$i.json")") |"; done
      mean=$(for i in $(seq "$REPEAT"); do jq -r .mean_ms "$OUT/$store/fhir/$name-$i.json"; done | median)
      echo "$line $(printf %.0f "$(fhir_median "$store" "$name")") | $(ms "$mean") |"
    done
    echo
  done
  echo "| ratio of medians | $(printf '%s | ' "$@")target | |"
  echo "| --- | $(printf -- '--- | %.0s' "$@")--- | --- |"
  local line goal_line
  line="| **FHIR search / gRPC SearchPointers** |"
  local all_met=met
  for store in "$@"; do
    local r; r=$(ratio "$(fhir_median "$store" fhir-search)" "$(fhir_median "$store" grpc-search)")
    line+=" **$r** |"
    [ "$(met "$r" 0.8 '>=')" = met ] || all_met="**not met**"
  done
  echo "$line ≥ 0.8 | $all_met |"
  line="| FHIR search / HTTP \`_status\` |"
  for store in "$@"; do line+=" $(ratio "$(fhir_median "$store" fhir-search)" "$(fhir_median "$store" http-status)") |"; done
  echo "$line (beside it) | |"
  line="| gRPC SearchPointers / gRPC Health/Check |"
  for store in "$@"; do line+=" $(ratio "$(fhir_median "$store" grpc-search)" "$(fhir_median "$store" grpc-health)") |"; done
  echo "$line (beside it) | |"
  line="| HTTP \`_status\` / gRPC Health/Check |"
  for store in "$@"; do line+=" $(ratio "$(fhir_median "$store" http-status)" "$(fhir_median "$store" grpc-health)") |"; done
  echo "$line (beside it) | |"
  echo
  echo "The checks and one round's commands, last store (the others differ in ports only; every command is"
  echo "in \`$COMMANDS\`):"
  echo
  echo '```sh'
  grep -E '^curl -s --max-time 10 -o' "$COMMANDS" | tail -n 4
  grep -E '^h2load -c' "$COMMANDS" | tail -n 2
  grep -E '^h2load --h1' "$COMMANDS" | tail -n 2
  echo '```'
  if [ -f loadtest/FHIR-PROFILE.md ]; then
    echo
    cat loadtest/FHIR-PROFILE.md
  fi
  echo "<!-- fhir-section:end -->"
}

# fhir_splice SECTION_FILE RESULTS_FILE: replaces the marked section in RESULTS_FILE, or puts it
# before its "## Commands" heading (at the end if it has none).
fhir_splice() {
  local section=$1 results=$2 tmp
  tmp=$(mktemp)
  if grep -q '^<!-- fhir-section:begin' "$results"; then
    awk -v f="$section" '
      /^<!-- fhir-section:begin/ { while ((getline l < f) > 0) print l; skip = 1; next }
      /^<!-- fhir-section:end -->/ { skip = 0; next }
      !skip' "$results" > "$tmp"
  elif grep -q '^## Commands$' "$results"; then
    awk -v f="$section" '
      /^## Commands$/ && !done { while ((getline l < f) > 0) print l; print ""; done = 1 }
      { print }' "$results" > "$tmp"
  else
    { cat "$results"; echo; cat "$section"; } > "$tmp"
  fi
  mv "$tmp" "$results"
}
