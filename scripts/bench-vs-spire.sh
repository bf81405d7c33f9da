#!/usr/bin/env bash
# Sigil beside SPIRE v1.13.3 on this machine, in one run (e2e/interop/benches/side_by_side.rs says what it
# measures). Builds SPIRE's server and agent from their published Go module (pinned in
# e2e/spire-compare/go.mod; sources and binaries stay in Go's caches and ~/.cache/sigil-e2e/spire-bin, never
# in this repo), the go-spiffe watcher, and Sigil's release binaries; then runs the benchmark.
#   scripts/bench-vs-spire.sh            both products
#   SIGIL_SIDE_SINGLES=N ...             N single changes each (default 30; SPIRE's take seconds each)
#   SIGIL_SIDE_ONLY=sigil|spire ...      one product
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
spire_bin=${SIGIL_SPIRE_BIN:-$HOME/.cache/sigil-e2e/spire-bin}
if [ ! -x "$spire_bin/spire-server" ] || [ ! -x "$spire_bin/spire-agent" ]; then
  echo "==> building SPIRE v1.13.3 (go install from e2e/spire-compare/go.mod; ~10 min cold)"
  mkdir -p "$spire_bin"
  (cd e2e/spire-compare && GOBIN=$spire_bin go install github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent)
fi
echo "==> SPIRE: $("$spire_bin/spire-server" --version 2>&1 | head -1)"
echo "==> building the go-spiffe watcher and Sigil's release binaries"
mkdir -p target/interop
(cd e2e/interop/go && go build -o "$root/target/interop/go-spiffe-workload" ./cmd/workload)
cargo build --release --bins --locked
SIGIL_SPIRE_BIN=$spire_bin SIGIL_GO_WORKLOAD=$root/target/interop/go-spiffe-workload \
  cargo bench --locked -p sigil-interop --bench side_by_side
