#!/usr/bin/env bash
# Checks the Helm chart in deploy/helm/herald and the Dockerfile:
#   - the chart's copies of deploy/dashboards are up to date;
#   - helm lint --strict, and helm template with the default and the production-like values;
#   - every rendered manifest against the Kubernetes JSON schemas, offline and strict;
#   - the configuration each pod would load, with the herald binary when one is built;
#   - the values files in deploy/helm/bad-values fail with the message they name;
#   - the values table of the chart's README against values.yaml;
#   - the Dockerfile's non-root user and labels (no Docker engine runs in CI).
# Installs helm with `go install` into .cache/bin, and kubernetes-validate into .cache/venv.
#
#   scripts/chart.sh        run every check
#   scripts/chart.sh sync   copy deploy/dashboards into the chart's files/ folder
set -euo pipefail
cd "$(dirname "$0")/.."

chart=deploy/helm/herald
helm_version=v4.3.2
helm=.cache/bin/helm
# The oldest Kubernetes the chart supports (kubeVersion in Chart.yaml), and the newest whose
# schemas kubernetes-validate 1.37.0 ships.
kube_versions=(1.29.0 1.37.0)
rendered=.cache/chart
# Helm keeps its own settings and caches inside the clone.
export HELM_CACHE_HOME=$PWD/.cache/helm/cache HELM_CONFIG_HOME=$PWD/.cache/helm/config HELM_DATA_HOME=$PWD/.cache/helm/data

if [[ ${1:-} == sync ]]; then
  rm -f "$chart"/files/*
  cp deploy/dashboards/* "$chart/files/"
  echo "copied deploy/dashboards into $chart/files"
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "usage: scripts/chart.sh [sync]" >&2
  exit 2
fi

if ! go version -m "$helm" 2>/dev/null | grep -Eq "^\s+mod\s+helm.sh/helm/v4\s+$helm_version\s"; then
  echo "== Installing helm $helm_version with go install (a few minutes the first time)"
  mkdir -p .cache
  if ! GOBIN=$PWD/.cache/bin go install "helm.sh/helm/v4/cmd/helm@$helm_version" 2> .cache/helm-install.log; then
    cat .cache/helm-install.log >&2
    echo "failed to install helm $helm_version with go install; its output is above" >&2
    exit 1
  fi
fi
python=$(scripts/python-env.sh)
check=("$python" scripts/chart_check.py)
herald=${HERALD_BIN:-}
for candidate in target/debug/herald target/release/herald; do
  if [[ -z $herald && -x $candidate ]]; then herald=$candidate; fi
done
mkdir -p "$rendered"

passed=0
failed=0
skipped=0
# Runs one check, given its name and then its command, and prints the output only on failure.
run_check() {
  local name=$1 output
  shift
  if output=$("$@" 2>&1); then
    passed=$((passed + 1))
    echo "ok    $name"
  else
    failed=$((failed + 1))
    echo "FAIL  $name"
    printf '%s\n' "$output" | sed 's/^/      /'
  fi
}

# Renders the chart into the file $1, with the helm flags that follow.
render() {
  local output=$1
  shift
  "$helm" template herald "$chart" --namespace herald --kube-version "${kube_versions[0]}" "$@" > "$output"
}

kube_flags=()
for version in "${kube_versions[@]}"; do kube_flags+=(--kube-version "$version"); done

echo "== Chart $chart"
run_check "dashboards in files/ match deploy/dashboards (scripts/chart.sh sync copies them)" \
  diff -r deploy/dashboards "$chart/files"
workspace_version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
run_check "appVersion in Chart.yaml is the workspace version $workspace_version" \
  grep -qx "appVersion: \"$workspace_version\"" "$chart/Chart.yaml"

for values in default ci/production-values.yaml; do
  values_flags=()
  if [[ $values != default ]]; then values_flags=(-f "$chart/$values"); fi
  output=$rendered/$(basename "$values" .yaml).yaml
  run_check "helm lint --strict ($values)" \
    "$helm" lint --strict --kube-version "${kube_versions[0]}" "${values_flags[@]}" "$chart"
  run_check "helm template ($values)" render "$output" "${values_flags[@]}"
  run_check "manifests valid for Kubernetes ${kube_versions[*]} ($values)" \
    "${check[@]}" manifests "$output" "${kube_flags[@]}"
  if [[ -n $herald ]]; then
    run_check "$herald accepts each pod's configuration ($values)" "${check[@]}" config "$output" "$herald"
  else
    skipped=$((skipped + 1))
    echo "skip  herald configuration check ($values): no herald binary; run cargo build -p herald or set HERALD_BIN"
  fi
done

# Each bad values file starts with "# expect: TEXT" (helm must fail with TEXT in its error) or
# "# expect-herald: TEXT" (helm renders it, and herald must reject the configuration with TEXT).
rejects() {
  local file=$1 expectation expected output
  expectation=$(head -n 1 "$file")
  expected=${expectation#*: }
  if [[ $expectation == "# expect: "* ]]; then
    if output=$(render /dev/null -f "$file" 2>&1); then
      echo "helm rendered $file without an error"
      return 1
    fi
  elif [[ $expectation == "# expect-herald: "* ]]; then
    if ! render "$rendered/bad.yaml" -f "$file"; then
      echo "helm failed to render $file, which only herald should reject"
      return 1
    fi
    if output=$("${check[@]}" config "$rendered/bad.yaml" "$herald" 2>&1); then
      echo "herald accepted the configuration of $file"
      return 1
    fi
  else
    echo "$file must start with '# expect: TEXT' or '# expect-herald: TEXT'"
    return 1
  fi
  if ! grep -qF -- "$expected" <<<"$output"; then
    printf 'the error does not contain "%s":\n%s\n' "$expected" "$output"
    return 1
  fi
}
for file in deploy/helm/bad-values/*.yaml; do
  if [[ $(head -n 1 "$file") == "# expect-herald: "* && -z $herald ]]; then
    skipped=$((skipped + 1))
    echo "skip  $file: no herald binary"
    continue
  fi
  run_check "$file is rejected" rejects "$file"
done

run_check "values table in $chart/README.md matches values.yaml" \
  "${check[@]}" values-table "$chart/README.md" "$chart/values.yaml"
run_check "Dockerfile: non-root numeric USER, version and revision labels, ENTRYPOINT herald" \
  "${check[@]}" dockerfile Dockerfile

echo "chart: $passed passed, $failed failed, $skipped skipped"
[[ $failed == 0 ]]
