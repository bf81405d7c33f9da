#!/usr/bin/env bash
# spiffe-demo on one host with Sigil (examples/spiffe-demo/README.md): a server and an agent (join token),
# two entries, service-a for uid 1000 and service-b for uid 1001, then the svid-exchange scenario: each
# service, run as its uid, fetches its X509-SVID from the Workload API, publishes its certificate and
# validates the other's against its trust bundle. Then both run `serve` and call each other over mTLS and
# with a JWT-SVID. Checks the expected output; leaves the services running until Ctrl-C, or stops at once
# with --once. Runs as root (it starts the services as uids 1000 and 1001).
set -euo pipefail
cd "$(dirname "$0")/.."

once=0
[ "${1:-}" = "--once" ] && once=1
if [ "$(id -u)" != 0 ]; then
  echo "scripts/demo.sh runs as root: it starts service-a as uid 1000 and service-b as uid 1001" >&2
  exit 1
fi

# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh
quickstart_init spiffe-demo
server_sock=$work/server/api.sock
agent_sock=$work/agent/public/api.sock
read -r port http_a http_b mtls_a mtls_b < <(free_ports 5)
td=example.org
id_a=spiffe://$td/service-a
id_b=spiffe://$td/service-b

echo "==> starting sigil-server (trust domain $td) and sigil-agent (join token)"
"$bin/sigil-server" run -trustDomain $td -dataDir "$work/server/data" -socketPath "$server_sock" \
  -bindAddress 127.0.0.1 -serverPort "$port" -healthPort 0 >"$work/server.log" 2>&1 &
pids+=($!)
wait_for "the server" "$bin/sigil-server" healthcheck -socketPath "$server_sock"
token=$("$bin/sigil-server" token generate -socketPath "$server_sock" | sed -n 's/^Token: //p')
agent_id="spiffe://$td/spire/agent/join_token/$token"

echo "==> the two entries, as in SPIRE's tutorials"
for e in "$id_a 1000" "$id_b 1001"; do
  read -r id uid <<<"$e"
  echo "    sigil-server entry create -parentID $agent_id -spiffeID $id -selector unix:uid:$uid -x509SVIDTTL 3600"
  "$bin/sigil-server" entry create -socketPath "$server_sock" -parentID "$agent_id" -spiffeID "$id" \
    -selector "unix:uid:$uid" -x509SVIDTTL 3600 >/dev/null
done

"$bin/sigil-server" bundle show -socketPath "$server_sock" >"$work/bundle.pem"
"$bin/sigil-agent" run -trustDomain $td -serverAddress 127.0.0.1 -serverPort "$port" \
  -joinToken "$token" -trustBundle "$work/bundle.pem" -dataDir "$work/agent/data" -socketPath "$agent_sock" \
  -healthPort 0 >"$work/agent.log" 2>&1 &
pids+=($!)
wait_for "the agent's Workload API socket" test -S "$agent_sock"
# The services run as other uids: let them reach the socket, and share a sticky directory for the certificates.
chmod 711 "$work" "$work/agent" "$work/agent/public"
mkdir -m 1777 "$work/exchange"
export SPIFFE_ENDPOINT_SOCKET=unix://$agent_sock
# Runs a command as a uid (gid the same), no supplementary groups. An array, not a function: a function run
# with & is a subshell, and killing it at exit would leave the service running.
as_a=(setpriv --reuid=1000 --regid=1000 --clear-groups --)
as_b=(setpriv --reuid=1001 --regid=1001 --clear-groups --)

echo "==> svid-exchange: service-a (uid 1000) and service-b (uid 1001), SPIFFE_ENDPOINT_SOCKET=$SPIFFE_ENDPOINT_SOCKET"
"${as_a[@]}" "$bin/spiffe-demo" svid-exchange --name a --dir "$work/exchange" --timeout 30 >"$work/a.out" 2>&1 &
pid_a=$!; pids+=("$pid_a")
"${as_b[@]}" "$bin/spiffe-demo" svid-exchange --name b --dir "$work/exchange" --timeout 30 >"$work/b.out" 2>&1 &
pid_b=$!; pids+=("$pid_b")
rc=0
wait "$pid_a" || rc=1
wait "$pid_b" || rc=1
cat "$work/a.out" "$work/b.out"
expect() { # FILE LINE
  grep -qxF -- "$2" "$1" || { echo "demo.sh: expected in $(basename "$1"): $2" >&2; rc=1; }
}
expect "$work/a.out" "[a] Got SPIFFE ID: $id_a"
expect "$work/a.out" "[a] Peer service-b identity valid ✓"
expect "$work/a.out" "[a] Peer SPIFFE ID: $id_b"
expect "$work/b.out" "[b] Got SPIFFE ID: $id_b"
expect "$work/b.out" "[b] Peer service-a identity valid ✓"
expect "$work/b.out" "[b] Peer SPIFFE ID: $id_a"
[ "$rc" = 0 ] || { echo "demo.sh: svid-exchange failed; logs in $work" >&2; tail -n 20 "$work"/*.log >&2; exit 1; }

echo "==> serve: service-a on http://127.0.0.1:$http_a (mTLS :$mtls_a), service-b on http://127.0.0.1:$http_b (mTLS :$mtls_b)"
"${as_a[@]}" "$bin/spiffe-demo" serve --listen "127.0.0.1:$http_a" --mtls-listen "127.0.0.1:$mtls_a" \
  --peer "https://127.0.0.1:$mtls_b" --peer-id "$id_b" >"$work/serve-a.log" 2>&1 &
pids+=($!)
"${as_b[@]}" "$bin/spiffe-demo" serve --listen "127.0.0.1:$http_b" --mtls-listen "127.0.0.1:$mtls_b" \
  --peer "https://127.0.0.1:$mtls_a" --peer-id "$id_a" >"$work/serve-b.log" 2>&1 &
pids+=($!)
wait_for "service-a's SVID" curl -fsS "http://127.0.0.1:$http_a/spiffe/status"
wait_for "service-b's SVID" curl -fsS "http://127.0.0.1:$http_b/spiffe/status"
show() { # METHOD URL: prints the command and its JSON
  echo "\$ curl -sS -X $1 $2"
  curl -fsS -X "$1" "$2"
}
show POST "http://127.0.0.1:$http_a/spiffe/demo/mtls/call" | tee "$work/mtls.json"
show POST "http://127.0.0.1:$http_a/spiffe/demo/jwt-auth/call" | tee "$work/jwt.json"
grep -qF "\"server_id\": \"$id_b\"" "$work/mtls.json" || { echo "demo.sh: the mTLS call did not reach $id_b" >&2; exit 1; }
grep -qF "\"jwt_subject\": \"$id_a\"" "$work/jwt.json" || { echo "demo.sh: service-b did not accept service-a's JWT-SVID" >&2; exit 1; }

if [ "$once" = 1 ]; then
  echo "==> done (--once)"
  exit 0
fi
echo "==> both services running; try: curl -s http://127.0.0.1:$http_a/spiffe/svid/x509 (README: examples/spiffe-demo/README.md); Ctrl-C to stop"
wait
