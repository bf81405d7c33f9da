#!/usr/bin/env bash
# e2e/operator/crds.sh
#
# API-tier check of Sigil's CRDs (crds/*.yaml, generated from operator/src/crd.rs) on a running cluster
# ($KUBECONFIG; this script never starts or stops the cluster):
#   1. the CRDs apply and become Established;
#   2. every valid example (operator/examples/*.yaml: spire-controller-manager's documented manifests with
#      apiVersion sigil.dev/v1alpha1) is accepted;
#   3. every invalid example (operator/examples/invalid/*.yaml) is refused, and the apiserver's error contains
#      the text of the file's first line `# expect: <text>`;
#   4. `kubectl explain clusterspiffeid.spec` shows the field documentation, and the short names
#      (csid, cftd, cse) and the `sigil` category work.
# Then it deletes the objects it created, and the CRDs if they were not installed before it ran.
# Prints `operator-crds: N passed, M failed`; exits non-zero on any failure.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${SIGIL_E2E_CACHE:-$HOME/.cache/sigil-e2e}
export PATH=$CACHE/bin:$PATH
: "${KUBECONFIG:?set KUBECONFIG to the kubeconfig of the cluster}"
export KUBECONFIG
command -v kubectl >/dev/null || { echo "operator-crds: kubectl not found (PATH or $CACHE/bin)" >&2; exit 2; }

CRDS=(clusterspiffeids.sigil.dev clusterfederatedtrustdomains.sigil.dev clusterstaticentries.sigil.dev)
passed=0
failed=0
created=()        # kind/name of objects this script created
crds_preexisting=()

pass() { passed=$((passed + 1)); echo "PASS $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

# kind and metadata.name of a single-object manifest (plain YAML, top-level keys and metadata.name).
object_ref() {
  awk '/^kind:/ {k=$2} /^metadata:/ {m=1; next} m && /^  name:/ {n=$2; m=0} /^[^ #]/ && !/^metadata:/ {m=0}
       END {print k "/" n}' "$1"
}

cleanup() {
  set +e
  local ref
  for ref in "${created[@]}"; do
    kubectl delete "$ref.sigil.dev" --ignore-not-found --wait=false >/dev/null 2>&1
  done
  local crd
  for crd in "${CRDS[@]}"; do
    if [[ " ${crds_preexisting[*]} " != *" $crd "* ]]; then
      kubectl delete crd "$crd" --ignore-not-found >/dev/null 2>&1
    fi
  done
}
trap cleanup EXIT

kubectl version >/dev/null 2>&1 || { echo "operator-crds: no cluster at $KUBECONFIG" >&2; exit 2; }

# 1. CRDs
for crd in "${CRDS[@]}"; do
  if kubectl get crd "$crd" >/dev/null 2>&1; then crds_preexisting+=("$crd"); fi
done
if out=$(kubectl apply --server-side --force-conflicts --field-manager=sigil-e2e-crds -f "$REPO/crds/" 2>&1); then
  pass "crds apply"
else
  fail "crds apply: $out"
  echo "operator-crds: $passed passed, $failed failed"
  exit 1
fi
if out=$(kubectl wait --for=condition=Established --timeout=60s "${CRDS[@]/#/crd/}" 2>&1); then
  pass "crds established"
else
  fail "crds established: $out"
fi

# 2. valid examples
for f in "$REPO"/operator/examples/*.yaml; do
  ref=$(object_ref "$f")
  name=$(basename "$f")
  mine=false
  if [[ " ${created[*]} " == *" $ref "* ]]; then
    mine=true
  elif ! kubectl get "$ref.sigil.dev" >/dev/null 2>&1; then
    mine=true
  fi
  if $mine; then
    if out=$(kubectl apply -f "$f" 2>&1); then
      if [[ " ${created[*]} " != *" $ref "* ]]; then created+=("$ref"); fi
      pass "valid $name ($ref)"
    else
      fail "valid $name refused: $out"
    fi
  else
    # Someone else's object has this name: validate without touching it.
    if out=$(kubectl apply --dry-run=server -f "$f" 2>&1); then
      pass "valid $name ($ref, server dry run: the name is taken)"
    else
      fail "valid $name refused: $out"
    fi
  fi
done

# 3. invalid examples
for f in "$REPO"/operator/examples/invalid/*.yaml; do
  name=invalid/$(basename "$f")
  first=$(head -n1 "$f")
  expect=${first#\# expect: }
  if [[ "$first" != "# expect: "* || -z "$expect" ]]; then
    fail "$name: first line must be '# expect: <text>'"
    continue
  fi
  if out=$(kubectl create --dry-run=server -f "$f" 2>&1); then
    fail "$name was accepted (expected: $expect)"
  elif [[ "$out" == *"$expect"* ]]; then
    pass "$name refused: ${out//$'\n'/ }"
  else
    fail "$name refused without '$expect': $out"
  fi
done

# 4. kubectl explain, short names, category
if out=$(kubectl explain clusterspiffeid.spec 2>&1) \
  && [[ "$out" == *"Go text/template rendering the workload's SPIFFE ID"* ]] \
  && [[ "$out" == *"spiffeIDTemplate"*"-required-"* ]]; then
  pass "explain clusterspiffeid.spec documents spiffeIDTemplate"
else
  fail "explain clusterspiffeid.spec: $out"
fi
if out=$(kubectl explain clusterfederatedtrustdomain.spec.bundleEndpointProfile.endpointSPIFFEID 2>&1) \
  && [[ "$out" == *"Required for"* ]]; then
  pass "explain documents nested fields"
else
  fail "explain clusterfederatedtrustdomain.spec.bundleEndpointProfile.endpointSPIFFEID: $out"
fi
for short in csid:ClusterSPIFFEID cftd:ClusterFederatedTrustDomain cse:ClusterStaticEntry; do
  if out=$(kubectl get "${short%%:*}" -o jsonpath='{.items[*].kind}' 2>&1) && [[ "$out" == *"${short#*:}"* ]]; then
    pass "kubectl get ${short%%:*} lists ${short#*:} objects"
  else
    fail "kubectl get ${short%%:*}: $out"
  fi
done
if out=$(kubectl get csid backend-workloads 2>&1) && [[ "$out" == *"SPIFFE ID TEMPLATE"*"READY"*"AGE"* ]]; then
  pass "csid printer columns"
else
  fail "csid printer columns: $out"
fi
if out=$(kubectl get cftd backend 2>&1) && [[ "$out" == *"TRUST DOMAIN"*"ENDPOINT URL"*"backend"* ]]; then
  pass "cftd printer columns"
else
  fail "cftd printer columns: $out"
fi
if out=$(kubectl get sigil -o name 2>&1) && [[ "$out" == *"clusterspiffeid.sigil.dev/"* ]] \
  && [[ "$out" == *"clusterstaticentry.sigil.dev/"* ]] && [[ "$out" == *"clusterfederatedtrustdomain.sigil.dev/"* ]]; then
  pass "category sigil"
else
  fail "kubectl get sigil: $out"
fi

echo "operator-crds: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
