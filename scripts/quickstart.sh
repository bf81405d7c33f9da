#!/usr/bin/env bash
# Sigil quickstart: builds Sigil, starts a server (embedded SQLite, self-signed CA) and prints an X509-SVID
# for the current uid. Leaves the server running until Ctrl-C, or exits at once with --once.
set -euo pipefail
cd "$(dirname "$0")/.."

once=0
[ "${1:-}" = "--once" ] && once=1

echo "==> building (cargo build --bins)"
cargo build --quiet --bins
bin=target/debug

work=$(mktemp -d /tmp/sigil-quickstart.XXXXXX)
sock="$work/server/api.sock"
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> starting sigil-server (trust domain example.org, data in $work/server)"
"$bin/sigil-server" run -trustDomain example.org -dataDir "$work/server/data" -socketPath "$sock" \
  -bindAddress 127.0.0.1 -serverPort 0 -healthPort 0 >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  "$bin/sigil-server" healthcheck -socketPath "$sock" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.1
done
"$bin/sigil-server" healthcheck -socketPath "$sock"

uid=$(id -u)
echo "==> registering uid $uid as spiffe://example.org/quickstart/uid-$uid"
"$bin/sigil-server" token generate -socketPath "$sock" -spiffeID spiffe://example.org/quickstart/node
"$bin/sigil-server" entry create -socketPath "$sock" -parentID spiffe://example.org/quickstart/node \
  -spiffeID "spiffe://example.org/quickstart/uid-$uid" -selector "unix:uid:$uid"

echo "==> minting an X509-SVID for that ID"
"$bin/sigil-server" x509 mint -socketPath "$sock" -spiffeID "spiffe://example.org/quickstart/uid-$uid" -write "$work/svid"
echo "SPIFFE ID: spiffe://example.org/quickstart/uid-$uid"
openssl verify -CAfile "$work/svid/bundle.pem" "$work/svid/svid.pem"
openssl x509 -in "$work/svid/svid.pem" -noout -text

if [ "$once" = 1 ]; then
  echo "==> done (--once)"
  exit 0
fi
echo "==> server running (admin socket $sock); Ctrl-C to stop"
wait "$server_pid"
