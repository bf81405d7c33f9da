#!/usr/bin/env bash
# The whole Sigil test suite: the command the README gives and .ci/run calls. Works on a fresh machine: it
# installs what it needs (Debian packages, a py-spiffe venv, the go-spiffe client, the test cluster's parts),
# caching under ~/.cache. Every tier must pass; a tier that cannot run is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
t0=$(date +%s)
tier() { printf '\n==== %s (%ss) ====\n' "$*" "$(( $(date +%s) - t0 ))"; }
passed=()
# A fresh clone is built once: incremental caches would only take disk (the node tier needs it free).
[ "${CI:-}" = true ] && export CARGO_INCREMENTAL=0
free_gib() { df -Pk "$root" | awk 'NR==2 { printf "%d", $4 / 1048576 }'; }
echo "free disk at start: $(free_gib) GiB"

tier "prerequisites: Debian packages"
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v setpriv >/dev/null || need+=(util-linux)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi

tier "format"
cargo fmt --all -- --check
passed+=(format)

tier "lint: clippy -D warnings on every target (benches included)"
cargo clippy --workspace --all-targets --locked -- -D warnings
passed+=(clippy)

tier "third-party Workload API clients: py-spiffe (pinned) and go-spiffe (pinned in e2e/interop/go/go.mod)"
venv=${SIGIL_VENV:-$HOME/.cache/sigil/venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r e2e/interop/python/requirements.txt
"$venv/bin/python" -c 'import spiffe' 
export SIGIL_PYTHON=$venv/bin/python
mkdir -p target/interop
(cd e2e/interop/go && go build -o "$root/target/interop/go-spiffe-client" .)
export SIGIL_GO_INTEROP=$root/target/interop/go-spiffe-client
(cd e2e/interop/go && go build -o "$root/target/interop/go-spiffe-workload" ./cmd/workload)
export SIGIL_GO_WORKLOAD=$root/target/interop/go-spiffe-workload

tier "csi-sanity (kubernetes-csi/csi-test, pinned) for the CSI driver's conformance test"
peers=$HOME/.cache/sigil-e2e/bin
csi_sanity_version=v5.6.0
if [ ! -x "$peers/csi-sanity-$csi_sanity_version" ]; then
  mkdir -p "$peers"
  GOBIN="$peers/.csi-sanity-build" go install "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$csi_sanity_version"
  mv "$peers/.csi-sanity-build/csi-sanity" "$peers/csi-sanity-$csi_sanity_version"
fi
export CSI_SANITY=$peers/csi-sanity-$csi_sanity_version

tier "build the binaries the end-to-end tests run"
cargo build --workspace --bins --locked

tier "unit, spec, integration and interop tests (real SQLite, openssl, sockets, spiffe crate, py-spiffe, go-spiffe)"
cargo test --workspace --locked --no-fail-fast
passed+=(cargo-test)

tier "federation walkthrough: a.test and b.test on one host, the README's commands (scripts/federation-quickstart.sh --once)"
scripts/federation-quickstart.sh --once
passed+=(federation-quickstart)

tier "spiffe-demo walkthrough: service-a (uid 1000) and service-b (uid 1001) exchange and validate their SVIDs, then mTLS and JWT auth (scripts/demo.sh --once)"
scripts/demo.sh --once
passed+=(spiffe-demo)

tier "generated CRDs: crds/ and charts/sigil-crds/templates/ are what operator/src/crd/ generates (crdgen --check)"
cargo run --locked -q -p sigil-operator --bin crdgen -- --check
passed+=(crdgen)

tier "test cluster: build its parts from Go modules and Debian packages (cached in ~/.cache/sigil-e2e)"
e2e/cluster/build.sh

tier "test cluster: api tier smoke (etcd + kube-apiserver)"
e2e/smoke/run.sh --tier api
passed+=(cluster-api)

tier "operator on the api tier: CRDs and examples, entries follow pods/labels/namespaces/CRs, leader change"
e2e/operator/run.sh
passed+=(operator-api)

tier "test cluster: node tier smoke (kubelet, containerd, CNI, kube-proxy, CoreDNS)"
# The kubelet evicts every pod under DiskPressure; say so plainly instead of failing a pod test later.
if [ "$(free_gib)" -lt 10 ]; then
  echo "only $(free_gib) GiB free on $(df -P "$root" | awk 'NR==2 {print $6}'): the node tier needs at least 10 GiB (the helm tier builds release images; the kubelet evicts pods under DiskPressure); remove stale build trees" >&2
  exit 1
fi
e2e/smoke/run.sh --tier node
passed+=(cluster-node)

tier "CSI driver on the node tier: kubelet self-registration, read-only inline volume, no mount left behind"
e2e/csi/run.sh --driver "$root/target/debug/sigil-csi-driver"
passed+=(csi-node)

tier "Kubernetes attestation on the node tier: agent DaemonSet (k8s_psat), k8s workload attestor, CSI + operator, go-spiffe in pods"
e2e/k8s-attest/run.sh --no-bench
passed+=(k8s-attest)

tier "Helm chart on the node tier: images without Docker, helm lint/schema/dry runs, install + helm test, mTLS between replicas, the spiffe-demo pods calling each other, upgrade, server restart, start-up race, uninstall"
e2e/helm/run.sh
passed+=(helm)

echo
echo "tiers passed: ${passed[*]} in $(( $(date +%s) - t0 ))s"
echo "tiers: ${#passed[@]} passed, 0 failed"
