#!/usr/bin/env bash
# e2e/operator/run.sh [--keep]
#
# The operator on the api tier (real etcd + kube-apiserver, real sigil-server, real sigil-operator):
#   1. e2e/operator/crds.sh: the CRDs apply, the anchor's documented examples are accepted, invalid
#      manifests are refused with their message, `kubectl explain` documents the fields;
#   2. operator/tests/api_tier.rs (run with --ignored): entries follow pods, labels, namespaces and CRs, a
#      manual entry survives, render failures reach status and Events, static entries and federation
#      relationships, restart and leader change neither duplicate nor drop entries.
# Brings the tier up, and down again unless --keep. Exits non-zero on any failure; a test that did not run
# counts as a failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=$ROOT/e2e/cluster/cluster
BIN=${SIGIL_E2E_CACHE:-$HOME/.cache/sigil-e2e}/bin
EXPECTED_TESTS=7
keep=false
case ${1:-} in
  --keep) keep=true ;;
  "") ;;
  *) echo "usage: $0 [--keep]" >&2; exit 2 ;;
esac

log() { echo "[operator-e2e $(date -u +%H:%M:%S)] $*" >&2; }
cd "$ROOT"
log "building sigil-server and sigil-operator"
cargo build --locked -p sigil-server -p sigil-operator --bins

KUBECONFIG=$("$CLUSTER" up --tier api)
export KUBECONFIG
export PATH=$BIN:$PATH
if ! $keep; then trap '"$CLUSTER" down >&2 || true' EXIT; fi

log "CRDs, documented examples, refusals, kubectl explain"
bash "$ROOT/e2e/operator/crds.sh"

log "operator tests against the api tier"
out=$(mktemp)
set +e
cargo test --locked -p sigil-operator --test api_tier -- --ignored --test-threads=1 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e
passed=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed.*/\1/p' "$out" | tail -1)
rm -f "$out"
if [ "$rc" -ne 0 ] || [ "${passed:-0}" -lt "$EXPECTED_TESTS" ]; then
  echo "operator-e2e: FAILED (exit $rc, ${passed:-0} of $EXPECTED_TESTS tests passed)" >&2
  exit 1
fi
echo "operator-e2e: $passed passed, 0 failed"
