#!/usr/bin/env bash
# Sigil federation quickstart on one host, as SPIRE's federation tutorial does it: two servers (trust domains
# a.test and b.test, each publishing its bundle on a https_spiffe bundle endpoint), each bootstrapped with the
# other's bundle (bundle show | bundle set) and federated with it (federation create), one agent per trust
# domain (join token), the current uid registered in both with -federatesWith the other. Then it proves it:
# each side verifies the other trust domain's X509-SVID with the federated bundle its own agent gave it, and a
# b.test JWT-SVID validates through a.test's agent. Leaves everything running until Ctrl-C, or stops at once
# with --once (what scripts/test.sh runs).
set -euo pipefail
cd "$(dirname "$0")/.."

once=0
[ "${1:-}" = "--once" ] && once=1

# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh
quickstart_init federation
server() { "$bin/sigil-server" "$@"; }
agent() { "$bin/sigil-agent" "$@"; }
# Four free ports: the agent API and the bundle endpoint of each server.
read -r a_port a_fed_port b_port b_fed_port < <(free_ports 4)

fail() { echo "FAILED: $*" >&2; exit 1; }

fetched_ok() { # server socket, foreign trust domain: the last fetch of its bundle succeeded
  server federation show -socketPath "$1" -trustDomain "$2" | grep -Eq '^Fetch status +: ok$'
}

start_server() { # side (a|b), agent API port, bundle endpoint port
  local td=$1.test dir=$work/$1
  mkdir -p "$dir"
  cat >"$dir/server.toml" <<EOF
[server]
trust_domain = "$td"
bind_address = "127.0.0.1"
bind_port = $2
socket_path = "$dir/server/api.sock"
data_dir = "$dir/server/data"

[health_checks]
listener_enabled = false

[federation.bundle_endpoint]
address = "127.0.0.1"
port = $3
refresh_hint = "1m"
profile = "https_spiffe"
EOF
  echo "==> starting sigil-server for $td: agent API 127.0.0.1:$2, bundle endpoint https://127.0.0.1:$3 ($dir/server.toml)"
  "$bin/sigil-server" run -config "$dir/server.toml" >"$work/$1-server.log" 2>&1 &
  pids+=($!)
  wait_for "the $td server" server healthcheck -socketPath "$dir/server/api.sock"
}

start_server a "$a_port" "$a_fed_port"
start_server b "$b_port" "$b_fed_port"
a_sock=$work/a/server/api.sock
b_sock=$work/b/server/api.sock

echo "==> bootstrapping each side's copy of the other's bundle: bundle show -format spiffe | bundle set -format spiffe"
server bundle show -socketPath "$a_sock" -format spiffe >"$work/a.test.json"
server bundle show -socketPath "$b_sock" -format spiffe >"$work/b.test.json"
server bundle set -socketPath "$a_sock" -format spiffe -id spiffe://b.test -path "$work/b.test.json"
server bundle set -socketPath "$b_sock" -format spiffe -id spiffe://a.test -path "$work/a.test.json"

echo "==> federating: a.test fetches b.test's bundle from its endpoint, and b.test a.test's"
server federation create -socketPath "$a_sock" -trustDomain b.test \
  -bundleEndpointURL "https://127.0.0.1:$b_fed_port" -bundleEndpointProfile https_spiffe \
  -endpointSpiffeID spiffe://b.test/spire/server
server federation create -socketPath "$b_sock" -trustDomain a.test \
  -bundleEndpointURL "https://127.0.0.1:$a_fed_port" -bundleEndpointProfile https_spiffe \
  -endpointSpiffeID spiffe://a.test/spire/server
wait_for "a.test's first fetch of b.test's bundle" fetched_ok "$a_sock" b.test
wait_for "b.test's first fetch of a.test's bundle" fetched_ok "$b_sock" a.test
echo "==> a.test: sigil-server federation list"
server federation list -socketPath "$a_sock"
echo "==> b.test: sigil-server federation list"
server federation list -socketPath "$b_sock"

uid=$(id -u)
start_agent() { # side (a|b), agent API port, SPIFFE ID of this uid's workload, the other trust domain
  local td=$1.test dir=$work/$1 sock=$work/$1/server/api.sock token
  token=$(server token generate -socketPath "$sock" | sed -n 's/^Token: //p')
  [ -n "$token" ] || fail "no join token from the $td server"
  echo "==> $td: registering uid $uid as $3, federating with spiffe://$4"
  server entry create -socketPath "$sock" -parentID "spiffe://$td/spire/agent/join_token/$token" \
    -spiffeID "$3" -selector "unix:uid:$uid" -federatesWith "spiffe://$4"
  echo "==> starting sigil-agent for $td (join token)"
  server bundle show -socketPath "$sock" >"$dir/bundle.pem"
  "$bin/sigil-agent" run -trustDomain "$td" -serverAddress 127.0.0.1 -serverPort "$2" -joinToken "$token" \
    -trustBundle "$dir/bundle.pem" -dataDir "$dir/agent/data" -socketPath "$dir/agent/public/api.sock" \
    -healthPort 0 >"$work/$1-agent.log" 2>&1 &
  pids+=($!)
}
start_agent a "$a_port" spiffe://a.test/web b.test
start_agent b "$b_port" spiffe://b.test/echo a.test
a_agent=$work/a/agent/public/api.sock
b_agent=$work/b/agent/public/api.sock

has_federated_bundle() { # agent socket, dir: fetch x509 -write gave a federated bundle
  rm -rf "$2" && agent api fetch x509 -socketPath "$1" -write "$2" -silent && [ -s "$2/federated_bundle.0.0.pem" ]
}
echo "==> each workload (this shell, uid $uid) fetches its X509-SVID: sigil-agent api fetch x509 -write"
wait_for "a.test's SVID with b.test's bundle" has_federated_bundle "$a_agent" "$work/a/svid"
wait_for "b.test's SVID with a.test's bundle" has_federated_bundle "$b_agent" "$work/b/svid"
agent api fetch x509 -socketPath "$a_agent" -write "$work/a/svid"
agent api fetch x509 -socketPath "$b_agent" -write "$work/b/svid"

spiffe_id() { openssl x509 -in "$1" -noout -ext subjectAltName | sed -n 's/^ *URI://p'; }
verify_peer() { # own side, own SPIFFE ID, peer side, peer SPIFFE ID
  local own=$work/$1/svid peer=$work/$3/svid out
  [ "$(spiffe_id "$own/svid.0.pem")" = "$2" ] || fail "$1.test's SVID is $(spiffe_id "$own/svid.0.pem"), not $2"
  [ "$(spiffe_id "$peer/svid.0.pem")" = "$4" ] || fail "$3.test's SVID is $(spiffe_id "$peer/svid.0.pem"), not $4"
  echo "==> $2 verifies $4's SVID with the $3.test bundle its own agent gave it:"
  echo "    openssl verify -CAfile $own/federated_bundle.0.0.pem $peer/svid.0.pem"
  out=$(openssl verify -CAfile "$own/federated_bundle.0.0.pem" "$peer/svid.0.pem" 2>&1) || true
  echo "$out"
  [ "$out" = "$peer/svid.0.pem: OK" ] || fail "$3.test's SVID does not verify with $1.test's federated bundle"
  # and its own trust domain's bundle does not do: the federated bundle is what makes it verify
  if openssl verify -CAfile "$own/bundle.0.pem" "$peer/svid.0.pem" >/dev/null 2>&1; then
    fail "$3.test's SVID verifies with $1.test's own bundle"
  fi
}
verify_peer a spiffe://a.test/web b spiffe://b.test/echo
verify_peer b spiffe://b.test/echo a spiffe://a.test/web

echo "==> spiffe://b.test/echo fetches a JWT-SVID for spiffe://a.test/web from b.test's agent"
echo "    sigil-agent api fetch jwt -audience spiffe://a.test/web -socketPath $b_agent"
jwt_out=$(agent api fetch jwt -socketPath "$b_agent" -audience spiffe://a.test/web)
echo "$jwt_out" | sed -E 's/^(.{100}).+/\1.../'
# SPIRE's layout: "token(<SPIFFE ID>):", then the token on the next line, indented with a tab
token=$(echo "$jwt_out" | sed -n '/^token(spiffe:\/\/b\.test\/echo):$/{n;s/^\t//p;q}')
[[ "$token" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] ||
  fail "no JWT-SVID for spiffe://b.test/echo in the output of fetch jwt"
echo "==> spiffe://a.test/web validates it through a.test's agent (with b.test's federated JWT keys)"
echo "    sigil-agent api validate jwt -audience spiffe://a.test/web -svid <token> -socketPath $a_agent"
valid_out=$(agent api validate jwt -socketPath "$a_agent" -audience spiffe://a.test/web -svid "$token" 2>&1) ||
  fail "a.test's agent refused b.test's JWT-SVID: $valid_out"
echo "$valid_out"
echo "$valid_out" | grep -Eq '^SPIFFE ID +: spiffe://b\.test/echo$' ||
  fail "a.test's agent did not report spiffe://b.test/echo for the JWT-SVID"

echo "==> federation works both ways: a.test <-> b.test"
if [ "$once" = 1 ]; then
  echo "==> done (--once)"
  exit 0
fi
echo "==> servers and agents running; Ctrl-C to stop. Workload API:"
echo "    a.test: SPIFFE_ENDPOINT_SOCKET=unix://$a_agent"
echo "    b.test: SPIFFE_ENDPOINT_SOCKET=unix://$b_agent"
wait
