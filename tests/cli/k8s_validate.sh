#!/usr/bin/env bash
# The Kubernetes manifests in ops/k8s/ against the Kubernetes OpenAPI schemas, with kubernetes-validate in
# strict mode (unknown fields are errors), for the oldest and the newest Kubernetes versions it bundles.
# Every resource must be checked (a kind without a schema is only a warning to the validator: here it
# fails), and a manifest with a wrong type and an unknown field must be rejected (the validator works).
# ops/setup.sh installs the validator into BUILD/k8s-validate (a venv, from PyPI).
# Usage: k8s_validate.sh KUBERNETES_VALIDATE REPO_ROOT
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 KUBERNETES_VALIDATE REPO_ROOT"; exit 2; }
kv=$1
repo=$(readlink -f "$2")
fail() { echo "FAIL: $*"; exit 1; }
# Skipped (CTest shows it as skipped, not passed) only where ops/setup.sh could not reach PyPI to install it.
[ -x "$kv" ] || { echo "SKIP: $kv is missing (ops/setup.sh installs kubernetes-validate from PyPI into BUILD/k8s-validate)"; exit 77; }
shopt -s nullglob
files=("$repo"/ops/k8s/*.yaml)
[ ${#files[@]} -gt 0 ] || fail "no manifests in $repo/ops/k8s"
resources=$(cat "${files[@]}" | grep -c '^kind: ')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for version in 1.25.0 1.37.0; do
  rc=0
  "$kv" --strict -k "$version" "${files[@]}" > "$work/out" 2>&1 || rc=$?
  { [ $rc = 0 ] && ! grep -q '^\(WARN\|ERROR\)' "$work/out"; } || { cat "$work/out"; fail "Kubernetes $version: see above"; }
  passed=$(grep -c "passed for resource" "$work/out" || true)
  [ "$passed" = "$resources" ] || { cat "$work/out"; fail "Kubernetes $version: $passed of $resources resources validated"; }
  echo "Kubernetes $version: all $resources resources of ${files[*]#"$repo"/} valid (strict)"
done
# The first containerPort a string, the last terminationGracePeriodSeconds misspelt (two resources: the
# validator reports one error per resource).
awk '/containerPort: [0-9]/ && !p { sub(/containerPort: [0-9]+/, "containerPort: \"api\""); p = 1 } { l[NR] = $0 }
     /terminationGracePeriodSeconds:/ { t = NR }
     END { if (t) sub(/terminationGracePeriodSeconds:/, "terminationGracePeriod:", l[t]); for (i = 1; i <= NR; i++) print l[i] }' \
  "${files[0]}" > "$work/broken.yaml"
cmp -s "${files[0]}" "$work/broken.yaml" && fail "could not break a copy of ${files[0]}"
rc=0
"$kv" --strict "$work/broken.yaml" > "$work/out" 2>&1 || rc=$?
{ [ $rc != 0 ] && grep -q "is not of type 'integer'" "$work/out" &&
  grep -q "'terminationGracePeriod' was unexpected" "$work/out"; } ||
  { cat "$work/out"; fail "the validator accepted a manifest with a string port and an unknown field"; }
echo "a broken copy is rejected: $(grep -c '^ERROR' "$work/out") errors"
