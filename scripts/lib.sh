# shellcheck shell=bash disable=SC2034  # $bin, $work, $pids are for the sourcing script
# Shared by scripts/quickstart.sh and scripts/federation-quickstart.sh (sourced, not run):
#   quickstart_init NAME  builds the binaries ($bin), makes the work dir ($work, removed at exit with every
#                         process in $pids), and traps Ctrl-C;
#   free_ports N          prints N free loopback ports;
#   wait_for WHAT CMD...  retries CMD for 30 s, then shows the logs and exits 1.

quickstart_init() {
  echo "==> building (cargo build --bins)"
  cargo build --quiet --bins
  bin=${CARGO_TARGET_DIR:-$PWD/target}/debug
  work=$(mktemp -d "/tmp/sigil-$1.XXXXXX")
  pids=()
  trap quickstart_cleanup EXIT
  trap 'exit 130' INT TERM
}

quickstart_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

free_ports() {
  python3 -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])' "$1"
}

wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for $what; logs in $work" >&2
  tail -n 20 "$work"/*.log >&2
  exit 1
}
