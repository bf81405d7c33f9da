#!/usr/bin/env bash
# Sigil quickstart on one host: builds Sigil, starts a server (embedded SQLite, self-signed CA) and an agent
# attested with a join token, registers the current uid, fetches its X509-SVID through the Workload API and
# shows it with openssl. Leaves both running until Ctrl-C, or stops at once with --once.
set -euo pipefail
cd "$(dirname "$0")/.."

once=0
[ "${1:-}" = "--once" ] && once=1

# shellcheck source-path=SCRIPTDIR source=lib.sh
. scripts/lib.sh
quickstart_init quickstart
server_sock=$work/server/api.sock
agent_sock=$work/agent/public/api.sock
port=$(free_ports 1)

echo "==> starting sigil-server: trust domain example.org, agent API 127.0.0.1:$port"
"$bin/sigil-server" run -trustDomain example.org -dataDir "$work/server/data" -socketPath "$server_sock" \
  -bindAddress 127.0.0.1 -serverPort "$port" -healthPort 0 >"$work/server.log" 2>&1 &
pids+=($!)
wait_for "the server" "$bin/sigil-server" healthcheck -socketPath "$server_sock"
"$bin/sigil-server" healthcheck -socketPath "$server_sock"

token=$("$bin/sigil-server" token generate -socketPath "$server_sock" | sed -n 's/^Token: //p')
agent_id="spiffe://example.org/spire/agent/join_token/$token"
uid=$(id -u)
echo "==> registering uid $uid under the agent $agent_id"
"$bin/sigil-server" entry create -socketPath "$server_sock" -parentID "$agent_id" \
  -spiffeID "spiffe://example.org/quickstart/uid-$uid" -selector "unix:uid:$uid"

echo "==> starting sigil-agent (join token; server authenticated with the bundle from 'bundle show')"
"$bin/sigil-server" bundle show -socketPath "$server_sock" >"$work/bundle.pem"
"$bin/sigil-agent" run -trustDomain example.org -serverAddress 127.0.0.1 -serverPort "$port" \
  -joinToken "$token" -trustBundle "$work/bundle.pem" -dataDir "$work/agent/data" -socketPath "$agent_sock" \
  -healthPort 0 >"$work/agent.log" 2>&1 &
pids+=($!)
wait_for "the workload's SVID" "$bin/sigil-agent" api fetch x509 -socketPath "$agent_sock"

echo "==> the workload (this shell, uid $uid) fetches its SVID: sigil-agent api fetch x509 -write $work/svid"
"$bin/sigil-agent" api fetch x509 -socketPath "$agent_sock" -write "$work/svid"
echo
echo "SPIFFE ID: $(openssl x509 -in "$work/svid/svid.0.pem" -noout -ext subjectAltName | sed -n 's/^ *URI://p')"
openssl verify -CAfile "$work/svid/bundle.0.pem" "$work/svid/svid.0.pem"
openssl x509 -in "$work/svid/svid.0.pem" -noout -text

if [ "$once" = 1 ]; then
  echo "==> done (--once)"
  exit 0
fi
echo "==> server and agent running; Workload API: SPIFFE_ENDPOINT_SOCKET=unix://$agent_sock ; Ctrl-C to stop"
wait
