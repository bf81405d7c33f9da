#!/usr/bin/env bash
# e2e/k8s-attest/run.sh [--keep] [--profile debug|release]
#
# Kubernetes attestation on the node tier (real kubelet, containerd, apiserver), every part as shipped:
#   1. sigil-server runs on the host with a kubeconfig of its ServiceAccount (server/deploy/rbac.yaml, so
#      the shipped least-privilege rules are what is tested) and a k8s_psat cluster;
#   2. sigil-agent runs as a DaemonSet pod (node-agent/deploy/*.yaml, image built here), attests with its
#      projected token: `agent list` shows spiffe://<td>/spire/agent/k8s_psat/<cluster>/<node UID> with the
#      k8s_psat selectors;
#   3. sigil-csi-driver (csi-driver/deploy) and sigil-operator run too; a ClusterSPIFFEID selects a test
#      Deployment whose pods mount the CSI volume; each container fetches its X509-SVID with go-spiffe
#      through the mounted socket and verifies it against the bundle;
#   4. negatives: a pod with no matching entry gets PermissionDenied "no identity issued"; a pod in another
#      namespace never gets this pod's SVID; a host process (root) gets no k8s: selectors;
#   5. the agent pod is deleted: the DaemonSet's new pod re-attests, the server still lists one agent for
#      the node, and workloads get their SVIDs again without new entries;
#   5b. the agent re-attests with a fresh token at half its SVID's life (no RenewAgentSvid), one record;
#   6. the server's k8s_psat refusals against this apiserver (server/tests/k8s_psat.rs with --ignored:
#      wrong audience, service account not allowed, deleted pod, unknown cluster, expired token) and its
#      k8sbundle notifier (server/tests/k8s_bundle.rs: fills the ConfigMap, follows a CA rotation, waits for
#      a missing ConfigMap);
#   7. benchmark against the real kubelet (node-agent/benches/k8s_attest.rs with SIGIL_KUBELET_*).
# Prints `k8s-attest: N passed, 0 failed`; exits non-zero on the first failure (component logs kept).
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../cluster/tier-env.sh
. "$E2E/cluster/tier-env.sh"
SYS=sigil-system
TD=example.org
CLUSTER_NAME=e2e-cluster
NS_A=sigil-k8s-a
NS_B=sigil-k8s-b
SOCKDIR=/run/spire/agent-sockets
AGENT_IMAGE=docker.io/sigil-e2e/sigil-agent:e2e
CSI_IMAGE=docker.io/sigil-e2e/sigil-csi-driver:e2e
WORKLOAD_IMAGE=docker.io/sigil-e2e/workload:e2e

keep=false
profile=debug
bench=true
while [ $# -gt 0 ]; do
  case $1 in
    --keep) keep=true; shift ;;
    --profile) profile=$2; shift 2 ;;
    --no-bench) bench=false; shift ;;
    *) echo "usage: $0 [--keep] [--profile debug|release] [--no-bench]" >&2; exit 2 ;;
  esac
done

passed=0
current=""
work=$(mktemp -d /tmp/sigil-k8s-attest.XXXXXX)
server_pid=""
operator_pid=""
log() { echo "[k8s-attest $(date -u +%H:%M:%S)] $*" >&2; }
step() { current=$1; log "--- $1"; }
ok() { passed=$((passed + 1)); log "PASS: $current"; }
cleanup() {
  [ -n "$operator_pid" ] && kill "$operator_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  if ! $keep; then
    "$CLUSTER" down >/dev/null 2>&1 || true
    rm -rf "$work" "$SOCKDIR"
  fi
}
fail() {
  echo "[k8s-attest] FAIL: $current: $*" >&2
  if [ -n "${KUBECONFIG:-}" ]; then
    kubectl get pods -A -o wide >&2 2>/dev/null || true
    kubectl -n "$SYS" logs ds/sigil-agent --tail=60 >&2 2>/dev/null || true
  fi
  tail -40 "$work/server.log" >&2 2>/dev/null || true
  tail -20 "$work/operator.log" >&2 2>/dev/null || true
  echo "[k8s-attest] logs kept in $work (server.log, operator.log) and /tmp/sigil-cluster/logs" >&2
  keep=true
  cleanup
  exit 1
}
trap cleanup EXIT
srv() { "$bin/sigil-server" "$@" -socketPath "$work/server/private/api.sock"; }

step "build the binaries and images (no registry)"
cd "$REPO"
cargo_flags=(--locked -p sigil-server -p sigil-agent -p sigil-operator -p sigil-csi-driver --bins)
[ "$profile" = release ] && cargo_flags+=(--release)
cargo build -q "${cargo_flags[@]}" || fail "cargo build failed"
bin=$REPO/target/$profile
# A glibc binary: copy its loader and libraries at their paths.
rootfs_with() { # rootfs_with DIR BINARY...
  local dir=$1 b lib
  shift
  mkdir -p "$dir"
  for b in "$@"; do
    cp "$b" "$dir/$(basename "$b")"
    strip "$dir/$(basename "$b")" 2>/dev/null || true
    for lib in $(ldd "$b" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
      mkdir -p "$dir$(dirname "$lib")"
      cp -L "$lib" "$dir$lib"
    done
  done
}
rootfs_with "$work/agent-root" "$bin/sigil-agent"
"$E2E/cluster/mkimage.sh" "$work/agent.tar" "$AGENT_IMAGE" "$work/agent-root" /sigil-agent >/dev/null || fail "mkimage agent"
rootfs_with "$work/csi-root" "$bin/sigil-csi-driver"
"$E2E/cluster/mkimage.sh" "$work/csi.tar" "$CSI_IMAGE" "$work/csi-root" /sigil-csi-driver >/dev/null || fail "mkimage csi"
# The workload image: the smoke testapp (sleep) and go-spiffe's client (static, CGO off).
mkdir -p "$work/workload-root"
cp "$CACHE/bin/testapp" "$work/workload-root/testapp" 2>/dev/null || fail "no testapp in $CACHE/bin (run e2e/cluster/build.sh)"
(cd "$E2E/interop/go" && CGO_ENABLED=0 go build -ldflags "-s -w" -o "$work/workload-root/go-spiffe-client" .) \
  || fail "go-spiffe client build failed"
"$E2E/cluster/mkimage.sh" "$work/workload.tar" "$WORKLOAD_IMAGE" "$work/workload-root" /testapp sleep >/dev/null \
  || fail "mkimage workload"
ok

step "cluster up (node tier) and image import"
KUBECONFIG=$("$CLUSTER" up --tier node) || fail "cluster up failed"
export KUBECONFIG
for t in agent csi workload; do "$CLUSTER" import-image "$work/$t.tar" >/dev/null || fail "import $t"; done
node=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
node_uid=$(kubectl get node "$node" -o jsonpath='{.metadata.uid}')
node_ip=$(kubectl get node "$node" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
agent_id="spiffe://$TD/spire/agent/k8s_psat/$CLUSTER_NAME/$node_uid"
ok

step "sigil-server on the host, with its ServiceAccount's RBAC as shipped"
kubectl create namespace "$SYS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f "$REPO/server/deploy/rbac.yaml" >/dev/null || fail "server rbac apply"
sa_token=$(kubectl -n "$SYS" create token sigil-server --duration=2h) || fail "no token for sigil-server"
apiserver=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d > "$work/ca.crt"
[ -s "$work/ca.crt" ] || cp "$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority}')" "$work/ca.crt"
KUBECONFIG=$work/server.kubeconfig kubectl config set-cluster e2e --server="$apiserver" \
  --certificate-authority="$work/ca.crt" --embed-certs >/dev/null
KUBECONFIG=$work/server.kubeconfig kubectl config set-credentials sigil-server --token="$sa_token" >/dev/null
KUBECONFIG=$work/server.kubeconfig kubectl config set-context e2e --cluster=e2e --user=sigil-server >/dev/null
KUBECONFIG=$work/server.kubeconfig kubectl config use-context e2e >/dev/null
mkdir -p "$work/server"
chmod 700 "$work/server"
cat > "$work/server.conf" <<EOF
[server]
trust_domain = "$TD"
bind_address = "127.0.0.1"
bind_port = 8081
socket_path = "$work/server/private/api.sock"
data_dir = "$work/server/data"
log_level = "debug"
# Short agent SVIDs, so that the agent's re-attestation at half their life happens during the test.
agent_ttl = "40s"

[node_attestor.k8s_psat.clusters.$CLUSTER_NAME]
service_account_allow_list = ["$SYS:sigil-agent"]
kube_config_file = "$work/server.kubeconfig"
allowed_node_label_keys = ["kubernetes.io/os"]
allowed_pod_label_keys = ["app.kubernetes.io/name"]

[health_checks]
bind_port = 0
EOF
"$bin/sigil-server" run -config "$work/server.conf" > "$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do srv bundle show > "$work/bundle.crt" 2>/dev/null && break; sleep 0.2; done
grep -q "BEGIN CERTIFICATE" "$work/bundle.crt" || fail "server did not come up"
kubectl -n "$SYS" create configmap sigil-bundle --from-file=bundle.crt="$work/bundle.crt" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
ok

step "sigil-agent DaemonSet attests with k8s_psat (agent list shows the node's agent ID and selectors)"
kubectl apply -f "$REPO/node-agent/deploy/rbac.yaml" >/dev/null || fail "agent rbac apply"
sed -e "s|server_address = \"sigil-server.sigil-system.svc\"|server_address = \"127.0.0.1\"\n    log_level = \"debug\"|" \
    -e "s|cluster = \"demo-cluster\"|cluster = \"$CLUSTER_NAME\"|" \
    "$REPO/node-agent/deploy/configmap.yaml" | kubectl apply -f - >/dev/null || fail "agent configmap apply"
# The node name must resolve to the kubelet's address from the host network: on this cluster it is only in
# the kubelet's certificate, not in DNS, so the test pod gets a host alias (real clusters resolve node names).
sed -e "s|image: sigil-agent:0.1.0|image: $AGENT_IMAGE|" \
    -e "s|imagePullPolicy: IfNotPresent|imagePullPolicy: Never|" \
    -e "s|      hostNetwork: true|      hostNetwork: true\n      hostAliases: [{ip: \"$node_ip\", hostnames: [\"$node\"]}]|" \
    "$REPO/node-agent/deploy/daemonset.yaml" | kubectl apply -f - >/dev/null || fail "agent DaemonSet apply"
kubectl -n "$SYS" rollout status ds/sigil-agent --timeout=120s >/dev/null || fail "agent DaemonSet not ready"
agents=$(srv agent list -output json) || fail "agent list failed"
echo "$agents" > "$work/agents.json"
python3 - "$work/agents.json" "$agent_id" "$CLUSTER_NAME" "$node" "$node_uid" "$node_ip" <<'EOF' || fail "agent list: $agents"
import json, sys
agents, want, cluster, node, node_uid, node_ip = json.load(open(sys.argv[1]))["agents"], *sys.argv[2:]
psat = [a for a in agents if a["attestation_type"] == "k8s_psat"]
for a in psat: a["id"] = f'spiffe://{a["id"]["trust_domain"]}{a["id"]["path"]}'
assert [a["id"] for a in psat] == [want], f"k8s_psat agents {[a['id'] for a in psat]}, want [{want}]"
sel = {f'{s["type"]}:{s["value"]}' for s in psat[0]["selectors"]}
need = {f"k8s_psat:cluster:{cluster}", "k8s_psat:agent_ns:sigil-system", "k8s_psat:agent_sa:sigil-agent",
        f"k8s_psat:agent_node_name:{node}", f"k8s_psat:agent_node_uid:{node_uid}", f"k8s_psat:agent_node_ip:{node_ip}",
        "k8s_psat:agent_node_label:kubernetes.io/os:linux", "k8s_psat:agent_pod_label:app.kubernetes.io/name:sigil-agent"}
missing = need - sel
assert not missing, f"missing selectors {missing} in {sorted(sel)}"
assert any(s.startswith("k8s_psat:agent_pod_name:sigil-agent-") for s in sel), sorted(sel)
assert any(s.startswith("k8s_psat:agent_pod_uid:") for s in sel), sorted(sel)
# Only the allowed label keys become selectors.
labels = [s for s in sel if ":agent_node_label:" in s or ":agent_pod_label:" in s]
assert len(labels) == 2, labels
EOF
log "agent $agent_id attested with k8s_psat"
ok

step "CSI driver and operator; a ClusterSPIFFEID selects the test Deployment"
kubectl apply -f "$REPO/csi-driver/deploy/csidriver.yaml" >/dev/null || fail "CSIDriver apply"
sed -e "s|image: sigil-csi-driver:0.1.0|image: $CSI_IMAGE|" -e "s|imagePullPolicy: IfNotPresent|imagePullPolicy: Never|" \
  "$REPO/csi-driver/deploy/daemonset.yaml" | kubectl apply -f - >/dev/null || fail "CSI DaemonSet apply"
kubectl apply -f "$REPO/crds/" >/dev/null || fail "CRDs apply"
cat > "$work/operator.yaml" <<EOF
trustDomain: $TD
clusterName: $CLUSTER_NAME
serverSocketPath: $work/server/private/api.sock
gcInterval: 10s
leaderElection: {leaderElect: false}
metrics: {bindAddress: "0"}
health: {healthProbeBindAddress: "0"}
EOF
"$bin/sigil-operator" -config "$work/operator.yaml" > "$work/operator.log" 2>&1 &
operator_pid=$!
kubectl -n "$SYS" rollout status ds/sigil-csi-driver --timeout=120s >/dev/null || fail "CSI DaemonSet not ready"
for ns in "$NS_A" "$NS_B"; do kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null; done
kubectl apply -f - >/dev/null <<EOF || fail "ClusterSPIFFEID apply"
apiVersion: sigil.dev/v1alpha1
kind: ClusterSPIFFEID
metadata: {name: k8s-attest-e2e}
spec:
  spiffeIDTemplate: "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
  podSelector: {matchLabels: {app: workload}}
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: $NS_A}}
EOF
workload_manifest() { # NAMESPACE NAME LABEL
  cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: $2, namespace: $1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: $2, namespace: $1}
spec:
  replicas: 1
  selector: {matchLabels: {app: $3}}
  template:
    metadata: {labels: {app: $3}}
    spec:
      serviceAccountName: $2
      terminationGracePeriodSeconds: 1
      containers:
        - name: app
          image: $WORKLOAD_IMAGE
          imagePullPolicy: Never
          command: ["/testapp", "sleep"]
          env: [{name: SPIFFE_ENDPOINT_SOCKET, value: "unix:///spiffe-workload-api/spire-agent.sock"}]
          volumeMounts: [{name: spiffe, mountPath: /spiffe-workload-api, readOnly: true}]
        - name: sidecar
          image: $WORKLOAD_IMAGE
          imagePullPolicy: Never
          command: ["/testapp", "sleep"]
          securityContext: {runAsUser: 1000, runAsGroup: 1000}
          env: [{name: SPIFFE_ENDPOINT_SOCKET, value: "unix:///spiffe-workload-api/spire-agent.sock"}]
          volumeMounts: [{name: spiffe, mountPath: /spiffe-workload-api, readOnly: true}]
      volumes:
        - name: spiffe
          csi: {driver: csi.spiffe.io, readOnly: true}
EOF
}
workload_manifest "$NS_A" workload workload | kubectl apply -f - >/dev/null || fail "workload apply"
# Same pod labels as the selected Deployment, in a namespace the ClusterSPIFFEID does not select.
workload_manifest "$NS_B" workload workload | kubectl apply -f - >/dev/null || fail "other workload apply"
for ns in "$NS_A" "$NS_B"; do
  kubectl -n "$ns" rollout status deploy/workload --timeout=120s >/dev/null || fail "$ns/workload not ready"
done
ok

fetch() { # NAMESPACE CONTAINER -> go-spiffe's JSON line, or its error on stderr
  local pod
  pod=$(kubectl -n "$1" get pods -l app=workload -o jsonpath='{.items[0].metadata.name}')
  kubectl -n "$1" exec "$pod" -c "$2" -- /go-spiffe-client -timeout 20s
}
want_a="spiffe://$TD/ns/$NS_A/sa/workload"

step "each container of the selected pod fetches its X509-SVID through the CSI socket (go-spiffe)"
for c in app sidecar; do
  out=""
  for _ in $(seq 30); do
    out=$(fetch "$NS_A" "$c" 2>"$work/fetch.err") && break
    sleep 1
  done
  [ -n "$out" ] || fail "$c: go-spiffe failed: $(cat "$work/fetch.err")"
  id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["spiffe_id"])' "$out")
  [ "$id" = "$want_a" ] || fail "$c: got $id, want $want_a"
  log "$c: $out"
done
# The SVID verifies against the server's bundle with openssl too (go-spiffe verified it against the
# bundle it fetched).
pod_a=$(kubectl -n "$NS_A" get pods -l app=workload -o jsonpath='{.items[0].metadata.name}')
ok

step "a pod in another namespace with no matching entry: PermissionDenied \"no identity issued\""
if fetch "$NS_B" app > "$work/b.out" 2> "$work/b.err"; then fail "pod in $NS_B got $(cat "$work/b.out")"; fi
grep -q "PermissionDenied" "$work/b.err" && grep -q "no identity issued" "$work/b.err" \
  || fail "unexpected refusal: $(cat "$work/b.err")"
grep -q "$want_a" "$work/b.out" && fail "pod in $NS_B received $want_a"
ok

step "a host process (root) gets no k8s: selectors"
"$work/workload-root/go-spiffe-client" -socket "unix://$SOCKDIR/spire-agent.sock" -timeout 5s \
  > "$work/host.out" 2> "$work/host.err" &
host_pid=$!
wait "$host_pid" && fail "the host process got an SVID: $(cat "$work/host.out")"
grep -q "no identity issued" "$work/host.err" || fail "host refusal: $(cat "$work/host.err")"
line=""
for _ in $(seq 20); do
  agent_log=$(kubectl -n "$SYS" logs ds/sigil-agent 2>/dev/null || true)
  line=$(grep "workload attested" <<<"$agent_log" | grep "pid=$host_pid " | tail -1 || true)
  [ -n "$line" ] && break
  sleep 0.5
done
[ -n "$line" ] || fail "no attestation log line for host pid $host_pid"
case "$line" in *'"k8s:'*) fail "host process got k8s selectors: $line" ;; esac
case "$line" in *'"unix:uid:0"'*) ;; *) fail "host process selectors lack unix:uid:0: $line" ;; esac
# ... while the pod's containers do get them (the same log, for the pod's fetches).
# Capture, then grep: `kubectl logs | grep -q` fails under pipefail when grep exits early (SIGPIPE).
agent_log=$(kubectl -n "$SYS" logs ds/sigil-agent)
grep "workload attested" <<<"$agent_log" | grep -q "\"k8s:ns:$NS_A\"" || fail "no k8s:ns:$NS_A selector was ever attested"
ok

step "agent pod deleted: the DaemonSet's new pod re-attests, one agent for the node, SVIDs again"
entries_before=$(srv entry show -output json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["entries"]))')
old_pod=$(kubectl -n "$SYS" get pods -l app.kubernetes.io/name=sigil-agent -o jsonpath='{.items[0].metadata.name}')
kubectl -n "$SYS" delete pod "$old_pod" --wait=true --timeout=60s >/dev/null || fail "agent pod delete"
kubectl -n "$SYS" rollout status ds/sigil-agent --timeout=120s >/dev/null || fail "agent DaemonSet not ready again"
new_pod=$(kubectl -n "$SYS" get pods -l app.kubernetes.io/name=sigil-agent -o jsonpath='{.items[0].metadata.name}')
[ "$new_pod" != "$old_pod" ] || fail "the agent pod was not replaced"
srv agent list -output json > "$work/agents2.json" || fail "agent list"
python3 - "$work/agents2.json" "$agent_id" "$new_pod" <<'EOF' || fail "agents after the restart: $(cat "$work/agents2.json")"
import json, sys
agents, want, pod = json.load(open(sys.argv[1]))["agents"], sys.argv[2], sys.argv[3]
psat = [a for a in agents if a["attestation_type"] == "k8s_psat"]
for a in psat: a["id"] = f'spiffe://{a["id"]["trust_domain"]}{a["id"]["path"]}'
assert [a["id"] for a in psat] == [want], [a["id"] for a in psat]
sel = {f'{s["type"]}:{s["value"]}' for s in psat[0]["selectors"]}
assert f"k8s_psat:agent_pod_name:{pod}" in sel, sorted(sel)
EOF
out=""
for _ in $(seq 30); do out=$(fetch "$NS_A" app 2>"$work/fetch.err") && break; sleep 1; done
[ -n "$out" ] || fail "after the agent restart: $(cat "$work/fetch.err")"
case "$out" in *"\"spiffe_id\":\"$want_a\""*) ;; *) fail "after the agent restart: $out" ;; esac
entries_after=$(srv entry show -output json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["entries"]))')
[ "$entries_before" = "$entries_after" ] || fail "entries changed: $entries_before -> $entries_after"
log "pod $pod_a fetched again through the new agent pod $new_pod; $entries_after entries unchanged"
ok

step "the agent re-attests with a fresh token at half its SVID's life (agent_ttl 40s): one record, new serial"
agent_serial() { srv agent show -spiffeID "$agent_id" -output json | python3 -c 'import json,sys; print(json.load(sys.stdin)["x509svid_serial_number"])'; }
agent_metric() { python3 -c 'import sys,urllib.request; print(urllib.request.urlopen("http://127.0.0.1:8088/metrics", timeout=5).read().decode())' \
  | sed -n "s/^$1 \([0-9][0-9]*\).*/\1/p"; }
serial1=$(agent_serial) || fail "agent show"
n=0
for _ in $(seq 60); do
  n=$(agent_metric sigil_agent_node_attestations_total || true)
  [ "${n:-0}" -ge 2 ] && break
  sleep 1
done
[ "${n:-0}" -ge 2 ] || fail "the agent pod attested ${n:-0} times in 60 s, want a re-attestation"
serial2=$(agent_serial) || fail "agent show"
[ "$serial1" != "$serial2" ] || fail "the agent's SVID serial did not change ($serial1)"
srv agent list -output json | python3 -c '
import json, sys
psat = [a for a in json.load(sys.stdin)["agents"] if a["attestation_type"] == "k8s_psat"]
assert len(psat) == 1, psat' || fail "more than one k8s_psat agent after re-attestation"
grep -q "AGENT_MUST_REATTEST" "$work/server.log" && fail "the agent tried RenewAgentSvid"
out=""
for _ in $(seq 30); do out=$(fetch "$NS_A" sidecar 2>"$work/fetch.err") && break; sleep 1; done
case "$out" in *"\"spiffe_id\":\"$want_a\""*) ;; *) fail "after re-attestation: $out $(cat "$work/fetch.err")" ;; esac
log "agent re-attested ($n attestations by this pod), serial $serial1 -> $serial2, one record"
ok

step "server k8s_psat refusals and the k8sbundle notifier against this apiserver (server/tests/k8s_{psat,bundle}.rs --ignored)"
for t in k8s_psat:6 k8s_bundle:3; do
  out=$(cargo test -q --locked -p sigil-server --test "${t%:*}" -- --ignored --test-threads=1 2>&1) || {
    echo "$out" >&2
    fail "server ${t%:*} tests failed"
  }
  n=$(sed -n 's/^test result: ok\. \([0-9][0-9]*\) passed.*/\1/p' <<<"$out" | tail -1)
  [ "${n:-0}" -ge "${t#*:}" ] || { echo "$out" >&2; fail "only ${n:-0} ${t%:*} tests ran"; }
  log "$n server ${t%:*} tests passed"
done
ok

if $bench; then
  step "benchmark: k8s workload attestation against the real kubelet (release build)"
  # Ten more pods, so that 100 attestations can spread over 10 different pods.
  workload_manifest "$NS_B" bench bench | sed -e 's/replicas: 1/replicas: 10/' | kubectl apply -f - >/dev/null \
    || fail "bench Deployment apply"
  kubectl -n "$NS_B" rollout status deploy/bench --timeout=180s >/dev/null || fail "bench pods not ready"
  # The agent's own ServiceAccount, so the kubelet authorizes the bench exactly as the agent (nodes/pods).
  kubectl -n "$SYS" create token sigil-agent --duration=1h > "$work/agent.token" || fail "no agent token"
  SIGIL_KUBELET_ADDR=$node_ip SIGIL_KUBELET_CA=$work/ca.crt SIGIL_KUBELET_TOKEN=$work/agent.token \
    cargo bench -q --locked -p sigil-agent --bench k8s_attest 2>&1 | tee "$work/bench.txt" >&2 \
    || fail "bench failed"
  grep -q "^real kubelet, 100 calls" "$work/bench.txt" || fail "the bench did not reach the real kubelet"
  ok
fi

echo "k8s-attest: $passed passed, 0 failed"
