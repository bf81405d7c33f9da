#!/usr/bin/env bash
# The whole Sigil test suite: the command the README gives and .ci/run calls.
# Every tier must pass; a tier that cannot run is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

tier() { printf '\n==== %s ====\n' "$*"; }

tier "format"
cargo fmt --all -- --check

tier "lint (clippy -D warnings, all targets)"
cargo clippy --workspace --all-targets --locked -- -D warnings

tier "unit, spec and integration tests (real SQLite, real openssl, real sockets)"
cargo test --workspace --locked --no-fail-fast

tier "benchmarks compile"
cargo build --workspace --benches --locked

echo
echo "all tiers passed"
