#!/usr/bin/env bash
# e2e/helm/run.sh [--keep] [--profile debug|release] [--bench] [--pods N]
#
# The whole stack installed with Helm on the node tier (real kubelet, containerd, apiserver), as a user does:
#   1. images built here without Docker (images/build.sh) and imported into containerd; `helm lint` of both
#      charts; wrong values refused at install with a message naming the value (schema);
#   2. every rendered manifest accepted by the apiserver (server-side dry run) for the default values and
#      three other value sets;
#   3. `helm install` of charts/sigil-crds then charts/sigil into an empty cluster: everything Ready,
#      `helm test` passes;
#   4. a Deployment (2 replicas, own namespace and service account, CSI volume): each replica gets
#      spiffe://<td>/ns/<ns>/sa/<sa> (X509 and JWT, go-spiffe) and the two complete mTLS with each other,
#      each checking the other's SPIFFE ID;
#   4b. spiffe-demo: the example manifest's two pods complete /spiffe/demo/mtls/call and jwt-auth/call with
#      each other through the CSI-mounted socket (and another authorized ID is refused);
#   5. `helm upgrade` (log level and X509-SVID TTL) rolls the components while a workload's open watch keeps
#      a valid SVID every 100 ms and receives new ones;
#   6. the server pod deleted: workloads keep their SVIDs from the agent's cache meanwhile; after the restart
#      entries, agents and the CA are the same (PVC) and a new pod gets its SVID;
#   7. start-up race: 50 pods that fetch once with no retry at container start, with csiDriver.waitForIdentity
#      off (failures counted and reported) and on (all must succeed); with --bench also the pod created ->
#      first successful FetchX509SVID figures (p50/p99 and breakdown);
#   8. federation: a second release (trust domain b.test, className b, its own CSI driver name) on the same
#      node, both with federation.enabled and defaultClusterSPIFFEID.federatesWith, and two
#      ClusterFederatedTrustDomains: each server fetches the other's bundle (BundleFetched True), a pod in
#      each trust domain completes mTLS with the other authorizing its exact ID, and a b.test JWT-SVID
#      validates in example.org;
#   9. `helm uninstall` of both charts: no CSI mount or socket left on the node, no object left but the PVC.
# Prints `helm: N passed, 0 failed`; exits non-zero on the first failure (logs kept).
# On kind (Docker): `e2e/cluster/kind.sh helm` runs the same steps (SIGIL_E2E_KIND=<cluster name>).
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../cluster/tier-env.sh
. "$E2E/cluster/tier-env.sh"
NS=sigil-system
REL=sigil
TD=example.org
CLUSTER_NAME=e2e-cluster
WL_NS=sigil-helm-app
WORKLOAD_IMAGE=docker.io/sigil-e2e/workload:helm
PV_DIR=/var/lib/sigil-e2e-pv
SOCK=/run/spire/agent-sockets/spire-agent.sock
# The second release (step "federation"): another trust domain on the same node, its own CSI driver name,
# socket directory and host ports.
REL_B=sigil-b
NS_B=sigil-b
TD_B=b.test
B_SOCK_DIR=/run/sigil-b/agent-sockets

KIND=${SIGIL_E2E_KIND:-}
keep=false
profile=debug
bench=false
pods=50
while [ $# -gt 0 ]; do
  case $1 in
    --keep) keep=true; shift ;;
    --profile) profile=$2; shift 2 ;;
    --bench) bench=true; shift ;;
    --pods) pods=$2; shift 2 ;;
    *) echo "usage: $0 [--keep] [--profile debug|release] [--bench] [--pods N]" >&2; exit 2 ;;
  esac
done

passed=0
current=""
work=$(mktemp -d /tmp/sigil-helm.XXXXXX)
bg_pids=()
log() { echo "[helm-e2e $(date -u +%H:%M:%S)] $*" >&2; }
step() { current=$1; log "--- $1"; }
ok() { passed=$((passed + 1)); log "PASS: $current"; }
# The node: this machine (e2e/cluster/cluster), or kind's node container.
on_node() { if [ -n "$KIND" ]; then docker exec "$KIND-control-plane" sh -c "$1"; else sh -c "$1"; fi; }
cluster_up() { if [ -n "$KIND" ]; then "$E2E/cluster/kind.sh" up; else "$CLUSTER" up --tier node; fi; }
import_image() { if [ -n "$KIND" ]; then "$E2E/cluster/kind.sh" load "$1"; else "$CLUSTER" import-image "$1"; fi; }
cleanup() {
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # fail() may have run in a command substitution (a subshell): its marker, not its variable, survives.
  [ -f "$work/.failed" ] && keep=true
  if ! $keep; then
    if [ -z "$KIND" ]; then
      "$CLUSTER" down >/dev/null 2>&1 || true
      rm -rf "$PV_DIR" /run/spire/agent-sockets "/run/sigil/$REL" "/run/sigil/$REL_B" /run/sigil-b
    fi
    rm -rf "$work"
  fi
}
fail() {
  echo "[helm-e2e] FAIL: $current: $*" >&2
  if [ -n "${KUBECONFIG:-}" ]; then
    kubectl get pods -A -o wide >&2 2>/dev/null || true
    kubectl -n "$NS" logs "sts/$REL-server" -c server --tail=40 >&2 2>/dev/null || true
    kubectl -n "$NS" logs "sts/$REL-server" -c operator --tail=20 >&2 2>/dev/null || true
    kubectl -n "$NS" logs "ds/$REL-agent" --tail=40 >&2 2>/dev/null || true
    kubectl -n "$NS" logs "ds/$REL-csi-driver" --tail=20 >&2 2>/dev/null || true
  fi
  echo "[helm-e2e] work dir $work and /tmp/sigil-cluster/logs kept" >&2
  touch "$work/.failed"
  keep=true
  cleanup
  exit 1
}
trap cleanup EXIT
srv() { kubectl -n "$NS" exec "$REL-server-0" -c server -- sigil-server "$@" -socketPath /run/sigil/admin/private/api.sock; }
chart_set=(--set "clusterName=$CLUSTER_NAME" --set agent.kubeletAddress=hostIP --set image.pullPolicy=Never)
# kind's kubelets serve kubeadm's self-signed certificates.
[ -n "$KIND" ] && chart_set+=(--set agent.skipKubeletVerification=true)

step "build the images (images/build.sh, $profile) and the workload image; helm $HELM_VERSION"
command -v helm >/dev/null || fail "helm missing from $CACHE/bin (run e2e/cluster/build.sh)"
"$REPO/images/build.sh" --profile "$profile" --out "$work/images" >/dev/null || fail "images/build.sh failed"
mkdir -p "$work/workload-root"
(cd "$E2E/interop/go" && CGO_ENABLED=0 go build -ldflags "-s -w" -o "$work/workload-root/workload" ./cmd/workload) \
  || fail "workload build failed"
"$E2E/cluster/mkimage.sh" "$work/workload.tar" "$WORKLOAD_IMAGE" "$work/workload-root" /workload >/dev/null \
  || fail "mkimage workload"
ls -l "$work/images" >&2
ok

step "helm lint (both charts), and wrong values refused at install with a message naming the value"
helm lint --strict "$REPO/charts/sigil-crds" >/dev/null || fail "helm lint charts/sigil-crds"
helm lint --strict "$REPO/charts/sigil" "${chart_set[@]}" >/dev/null || fail "helm lint charts/sigil"
refused() { # WANT_IN_MESSAGE HELM_SET_ARGS...
  local want=$1 out
  shift
  if out=$(helm template x "$REPO/charts/sigil" "$@" 2>&1); then fail "accepted: $*"; fi
  grep -q -- "$want" <<<"$out" || fail "refusal of $* does not name $want: $out"
  log "refused $*: $(grep -m1 -- "$want" <<<"$out")"
}
refused trustDomain --set trustDomain=Bad_Domain
refused trustDomain --set trustDomain=spiffe://example.org
refused defaultX509SvidTTL --set server.defaultX509SvidTTL=-1h
refused caTTL --set server.caTTL=0
refused bogus --set bogus=1
refused replicas --set server.replicas=3
refused spiffeIDTemplate --set defaultClusterSPIFFEID.spiffeIDTemplate=http://example.org/x
refused tlsSecretName --set federation.bundleEndpoint.profile=https_web
refused federatesWith --set 'defaultClusterSPIFFEID.federatesWith={spiffe://b.test}'
ok

step "cluster up (node tier), images imported"
KUBECONFIG=$(cluster_up) || fail "cluster up failed"
export KUBECONFIG
for t in "$work"/images/*.tar "$work/workload.tar"; do import_image "$t" >/dev/null || fail "import $t"; done
# helm install refuses the bad values too, and creates nothing.
if helm install "$REL" "$REPO/charts/sigil" -n "$NS" --create-namespace --set trustDomain=Bad >"$work/bad.out" 2>&1; then
  fail "helm install accepted trustDomain=Bad"
fi
grep -q trustDomain "$work/bad.out" || fail "install refusal: $(cat "$work/bad.out")"
helm status "$REL" -n "$NS" >/dev/null 2>&1 && fail "a release exists after a refused install"
ok

step "server-side dry run of every rendered manifest: default values and three other value sets"
helm install sigil-crds "$REPO/charts/sigil-crds" --wait --timeout 2m >/dev/null || fail "helm install sigil-crds"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
cat > "$work/values-upstream.yaml" <<EOF
trustDomain: prod.example.com
clusterName: prod-1
logFormat: json
image: {registry: registry.example.com/sigil, tag: "0.1.0-rc1", pullPolicy: Always, pullSecrets: [regcred]}
server:
  caKeyType: rsa-2048
  caTTL: 48h
  defaultX509SvidTTL: 30m
  agentTTL: 2h
  upstreamAuthority: {secretName: sigil-upstream-ca}
  persistence: {storageClass: fast, size: 5Gi}
  service: {type: NodePort, port: 8443}
federation:
  enabled: true
  bundleEndpoint: {profile: https_web, tlsSecretName: sigil-bundle-tls, refreshHint: 10m, port: 9443}
  service: {type: LoadBalancer, port: 443, annotations: {example.com/exposed: "true"}}
defaultClusterSPIFFEID: {federatesWith: [partner.example, b.test]}
EOF
cat > "$work/values-minimal.yaml" <<EOF
operator: {enabled: false}
defaultClusterSPIFFEID: {enabled: false}
csiDriver: {enabled: false}
server: {persistence: {enabled: false}}
EOF
cat > "$work/values-wait.yaml" <<EOF
csiDriver: {waitForIdentity: 5s, pluginName: csi.example.org, kubeletDir: /var/lib/k0s/kubelet}
agent: {socketPath: /run/sigil/sockets/agent.sock, psatAudience: sigil, skipKubeletVerification: true, healthPort: 19982}
className: tenant-a
logLevel: debug
EOF
for vs in default upstream minimal wait; do
  args=()
  [ "$vs" = default ] || args=(-f "$work/values-$vs.yaml")
  # --skip-tests: the test pod's ServiceAccount is in the same manifest, which a dry run does not create.
  helm template "$REL" "$REPO/charts/sigil" -n "$NS" --skip-tests "${chart_set[@]}" "${args[@]}" > "$work/rendered-$vs.yaml" \
    || fail "helm template ($vs)"
  kubectl apply --dry-run=server -n "$NS" -f "$work/rendered-$vs.yaml" > "$work/dryrun-$vs.txt" 2>&1 \
    || fail "server-side dry run of the $vs values: $(tail -5 "$work/dryrun-$vs.txt")"
  log "$vs values: $(grep -c . "$work/dryrun-$vs.txt") objects accepted by the apiserver (dry run)"
done
ok

step "helm install of the chart into the empty cluster: everything Ready, helm test passes"
# No dynamic provisioner in this cluster (kind has one): one hostPath PersistentVolume for the server's claim,
# owned by the server's uid (the kubelet applies fsGroup to provisioned volumes, not to hostPath ones).
# A kept run (failed or killed) leaves its database behind: start from an empty one, as a fresh cluster does.
if [ -z "$KIND" ]; then
  rm -rf "$PV_DIR" && mkdir -p "$PV_DIR" && chown 65532:65532 "$PV_DIR" && chmod 0700 "$PV_DIR"
fi
[ -n "$KIND" ] || kubectl apply -f - >/dev/null <<EOF || fail "PV apply"
apiVersion: v1
kind: PersistentVolume
metadata: {name: sigil-e2e-server-data}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: $PV_DIR, type: Directory}
EOF
t_install=$(date +%s.%N)
helm install "$REL" "$REPO/charts/sigil" -n "$NS" "${chart_set[@]}" --wait --timeout 5m > "$work/install.out" 2>&1 \
  || fail "helm install: $(tail -20 "$work/install.out")"
log "helm install --wait took $(python3 -c "import sys; print(round(float(sys.argv[2])-float(sys.argv[1]),1))" "$t_install" "$(date +%s.%N)") s"
grep -q "helm test $REL" "$work/install.out" || fail "NOTES.txt not shown: $(cat "$work/install.out")"
# The bundle ConfigMap holds the server's bundle (the notifier), and the agent attested with k8s_psat.
srv bundle show > "$work/bundle.pem" || fail "bundle show"
kubectl -n "$NS" get configmap "$REL-bundle" -o jsonpath='{.data.bundle\.crt}' > "$work/bundle-cm.pem"
diff "$work/bundle.pem" "$work/bundle-cm.pem" >/dev/null || fail "the bundle ConfigMap does not hold exactly \`bundle show\`"
srv agent list -output json > "$work/agents.json" || fail "agent list"
python3 - "$work/agents.json" "$CLUSTER_NAME" <<'EOF' || fail "agents: $(cat "$work/agents.json")"
import json, sys
agents, cluster = json.load(open(sys.argv[1]))["agents"], sys.argv[2]
ids = [a["id"]["path"] for a in agents if a["attestation_type"] == "k8s_psat"]
assert len(ids) == 1 and f"/spire/agent/k8s_psat/{cluster}/" in ids[0], ids
EOF
helm test "$REL" -n "$NS" --timeout 3m > "$work/test.out" 2>&1 || fail "helm test: $(cat "$work/test.out")"
grep -q "Phase:.*Succeeded" "$work/test.out" || fail "helm test output: $(cat "$work/test.out")"
kubectl -n "$NS" get pod "$REL-test" >/dev/null 2>&1 && fail "the passed test pod was not removed"
ok

step "a 2-replica Deployment gets spiffe://$TD/ns/$WL_NS/sa/app in each replica; the replicas complete mTLS"
want="spiffe://$TD/ns/$WL_NS/sa/app"
workload() { # NAME REPLICAS COMMAND...
  local name=$1 replicas=$2 args
  shift 2
  args=$(printf '"%s",' "$@")
  cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: $name, namespace: $WL_NS}
spec:
  replicas: $replicas
  selector: {matchLabels: {app: $name}}
  template:
    metadata: {labels: {app: $name}}
    spec:
      serviceAccountName: ${WL_SA:-app}
      terminationGracePeriodSeconds: 1
      securityContext: {runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000}
      containers:
        - name: app
          image: $WORKLOAD_IMAGE
          imagePullPolicy: Never
          args: [${args%,}]
          env: [{name: SPIFFE_ENDPOINT_SOCKET, value: "unix:///spiffe-workload-api/spire-agent.sock"}]
          volumeMounts: [{name: spiffe-workload-api, mountPath: /spiffe-workload-api, readOnly: true}]
      volumes:
        - name: spiffe-workload-api
          csi: {driver: ${WL_DRIVER:-csi.spiffe.io}, readOnly: true}
EOF
}
kubectl create namespace "$WL_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$WL_NS" create serviceaccount app --dry-run=client -o yaml | kubectl apply -f - >/dev/null
workload app 2 serve -id "$want" | kubectl apply -f - >/dev/null || fail "workload apply"
kubectl -n "$WL_NS" rollout status deploy/app --timeout=120s >/dev/null || fail "workload not ready"
mapfile -t app_pods < <(kubectl -n "$WL_NS" get pods -l app=app -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
[ "${#app_pods[@]}" = 2 ] || fail "want 2 pods, got ${app_pods[*]}"
check() { # POD [FLAGS] -> JSON line
  local pod=$1 out=""
  shift
  for _ in $(seq 30); do
    out=$(kubectl -n "$WL_NS" exec "$pod" -- /workload check -id "$want" -timeout 10s "$@" 2>"$work/check.err") && break
    out=""
    sleep 1
  done
  [ -n "$out" ] || fail "$pod: $(cat "$work/check.err")"
  echo "$out"
}
for p in "${app_pods[@]}"; do
  out=$(check "$p")
  log "$p: $out"
done
ip() { kubectl -n "$WL_NS" get pod "$1" -o jsonpath='{.status.podIP}'; }
for pair in "0 1" "1 0"; do
  read -r a b <<<"$pair"
  out=$(kubectl -n "$WL_NS" exec "${app_pods[$a]}" -- /workload dial -id "$want" -addr "$(ip "${app_pods[$b]}"):8443") \
    || fail "mTLS ${app_pods[$a]} -> ${app_pods[$b]} failed"
  python3 - "$out" "$want" "${app_pods[$b]}" <<'EOF' || fail "mTLS ${app_pods[$a]} -> ${app_pods[$b]}: $out"
import json, sys
r, want, host = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
assert r["peer_id"] == want and r["peer_saw_me_as"] == want and r["peer_host"] == host, r
EOF
  log "mTLS ${app_pods[$a]} -> ${app_pods[$b]}: $out"
done
ok

step "spiffe-demo (examples/spiffe-demo/deploy/demo.yaml): demo-a and demo-b call each other over mTLS and with a JWT-SVID"
# The manifest as a user applies it (the chart's default ClusterSPIFFEID gives each pod its ns/sa ID); the
# calls are made from the node to each pod's HTTP port, as `kubectl port-forward` + curl would.
DEMO=$REPO/examples/spiffe-demo/deploy/demo.yaml
kubectl apply -f "$DEMO" >/dev/null || fail "demo apply"
kubectl -n spiffe-demo rollout status deploy/demo-a --timeout=120s >/dev/null || fail "demo-a not ready"
kubectl -n spiffe-demo rollout status deploy/demo-b --timeout=120s >/dev/null || fail "demo-b not ready"
demo_ip() { kubectl -n spiffe-demo get pods -l "app=demo-$1" -o jsonpath='{.items[0].status.podIP}'; }
for pair in "a b" "b a"; do
  read -r a b <<<"$pair"
  addr=$(demo_ip "$a")
  for call in mtls jwt-auth; do
    # The peer's Service reaches it once kube-proxy has its endpoint (a moment after the pod is Ready).
    for try in $(seq 30); do
      out=$(on_node "curl -sS -m 20 -X POST http://$addr:8080/spiffe/demo/$call/call") || fail "demo-$a $call call: $out"
      grep -q 'Connection refused' <<<"$out" || break
      [ "$try" = 30 ] && fail "demo-$a $call call: the peer's Service never answered: $out"
      sleep 1
    done
    python3 - "$out" "spiffe://$TD/ns/spiffe-demo/sa/demo-$a" "spiffe://$TD/ns/spiffe-demo/sa/demo-$b" <<'EOF' \
      || fail "demo-$a $call call: $out"
import json, sys
r, me, peer = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
assert r["ok"] is True and r["client_id"] == me and r["authorized_peer_id"] == peer, r
# The peer's own view: it saw this pod's SPIFFE ID (mTLS) or validated its JWT-SVID, and it is the peer.
assert r["peer_response"]["client_id"] == me and r["peer_response"]["server_id"] == peer, r
EOF
    log "demo-$a -> demo-$b $call: ok (attempt $try)"
  done
done
# Authorizing another peer ID is refused, with the reason.
body="{\"peer_id\":\"spiffe://$TD/ns/spiffe-demo/sa/nobody\"}"
out=$(on_node "curl -sS -m 20 -X POST http://$(demo_ip a):8080/spiffe/demo/mtls/call -d '$body'") \
  || fail "demo-a wrong-peer call: $out"
python3 - "$out" <<'EOF' || fail "demo-a wrong-peer call not refused: $out"
import json, sys
r = json.loads(sys.argv[1])
assert r["ok"] is False and "not the authorized" in r["error"], r
EOF
kubectl delete -f "$DEMO" --wait=true --timeout=120s >/dev/null || fail "demo delete"
ok

step "helm upgrade (log level, X509-SVID TTL) rolls the components; a workload's open watch never loses its SVID"
agent_pod=$(kubectl -n "$NS" get pods -l app.kubernetes.io/name="$REL-agent" -o jsonpath='{.items[0].metadata.name}')
server_uid=$(kubectl -n "$NS" get pod "$REL-server-0" -o jsonpath='{.metadata.uid}')
kubectl -n "$WL_NS" exec "${app_pods[0]}" -- /workload watch -id "$want" -for 45s > "$work/watch.out" 2> "$work/watch.err" &
watch_pid=$!
bg_pids+=("$watch_pid")
sleep 3
t_upgrade=$(date +%s.%N)
helm upgrade "$REL" "$REPO/charts/sigil" -n "$NS" --reuse-values --set logLevel=debug \
  --set server.defaultX509SvidTTL=30m --wait --timeout 5m > "$work/upgrade.out" 2>&1 \
  || fail "helm upgrade: $(tail -20 "$work/upgrade.out")"
for r in "sts/$REL-server" "ds/$REL-agent" "ds/$REL-csi-driver"; do
  kubectl -n "$NS" rollout status "$r" --timeout=180s >/dev/null || fail "$r did not roll out"
done
log "helm upgrade --wait and the three rollouts took $(python3 -c "import sys; print(round(float(sys.argv[2])-float(sys.argv[1]),1))" "$t_upgrade" "$(date +%s.%N)") s"
[ "$(kubectl -n "$NS" get pod "$REL-server-0" -o jsonpath='{.metadata.uid}')" != "$server_uid" ] || fail "the server pod was not rolled"
kubectl -n "$NS" get pod "$agent_pod" >/dev/null 2>&1 && fail "the agent pod was not rolled"
wait "$watch_pid" || fail "the watch lost its SVID: $(tail -5 "$work/watch.err")"
python3 - "$(cat "$work/watch.out")" <<'EOF' || fail "watch: $(cat "$work/watch.out") $(cat "$work/watch.err")"
import json, sys
r = json.loads(sys.argv[1])
assert r["checks"] > 300, r
assert len(r["serials"]) >= 2, f"no new SVID reached the watch across the upgrade: {r}"
EOF
# The last new serial reached the watch after the new agent pod started (not only the cached SVID).
new_agent_start=$(kubectl -n "$NS" get pods -l app.kubernetes.io/name="$REL-agent" -o jsonpath='{.items[0].status.startTime}')
last_serial_at=$(grep ' serial ' "$work/watch.err" | tail -1 | cut -d' ' -f1)
python3 - "$new_agent_start" "$last_serial_at" <<'EOF' || fail "no SVID from the new agent reached the watch: agent started $new_agent_start, last serial at $last_serial_at"
import sys, datetime
start = datetime.datetime.fromisoformat(sys.argv[1].replace("Z", "+00:00"))
last = datetime.datetime.fromisoformat(sys.argv[2][:26].rstrip("Z") + "+00:00")
assert last >= start, (start, last)
EOF
log "watch across the upgrade: $(cat "$work/watch.out")"
out=$(check "${app_pods[1]}")
python3 - "$out" <<'EOF' || fail "the SVID after the upgrade does not have the new TTL: $out"
import json, sys, time
left = json.loads(sys.argv[1])["x509_not_after"] - time.time()
assert 0 < left <= 30 * 60 + 5, left
EOF
ok

step "server pod deleted: workloads keep their SVIDs meanwhile; entries, agents and the CA survive; new pods get SVIDs"
srv entry show -output json > "$work/entries1.json" || fail "entry show"
srv agent list -output json > "$work/agents1.json" || fail "agent list"
srv bundle show > "$work/bundle1.pem" || fail "bundle show"
old_uid=$(kubectl -n "$NS" get pod "$REL-server-0" -o jsonpath='{.metadata.uid}')
# --wait: returns once the old pod is gone, i.e. no server runs until the StatefulSet's new pod is Ready.
kubectl -n "$NS" delete pod "$REL-server-0" --wait=true --timeout=60s >/dev/null || fail "server pod delete"
server_ready() {
  [ "$(kubectl -n "$NS" get pod "$REL-server-0" -o jsonpath='{.metadata.uid} {.status.containerStatuses[?(@.name=="server")].ready}' 2>/dev/null)" \
    != "${1:-x} true" ] && return 1
  return 0
}
# While it is gone, the agent serves X509-SVIDs from its cache: count the checks that began and ended with
# the new server pod not Ready.
down_checks=0
for _ in $(seq 40); do
  new_uid=$(kubectl -n "$NS" get pod "$REL-server-0" -o jsonpath='{.metadata.uid}' 2>/dev/null || true)
  [ "$new_uid" = "$old_uid" ] && fail "the old server pod is still there"
  # No pod at all yet: certainly down (the StatefulSet has not recreated it).
  server_ready "$new_uid" && break
  kubectl -n "$WL_NS" exec "${app_pods[0]}" -- /workload check -id "$want" -timeout 5s -jwt=false >/dev/null 2>"$work/down.err" \
    || fail "X509-SVID while the server was down: $(cat "$work/down.err")"
  server_ready "$new_uid" || down_checks=$((down_checks + 1))
done
[ "$down_checks" -ge 1 ] || fail "no check ran while the server was down"
kubectl -n "$NS" rollout status "sts/$REL-server" --timeout=180s >/dev/null || fail "server not back"
kubectl -n "$NS" wait --for=condition=Ready "pod/$REL-server-0" --timeout=120s >/dev/null || fail "server pod not Ready"
for _ in $(seq 30); do srv entry show -output json > "$work/entries2.json" 2>/dev/null && break; sleep 1; done
srv agent list -output json > "$work/agents2.json" || fail "agent list after restart"
srv bundle show > "$work/bundle2.pem" || fail "bundle show after restart"
python3 - "$work" <<'EOF' || fail "state after the server restart differs"
import json, sys
w = sys.argv[1]
# SPIRE's shapes: {"entries":[...]} / {"agents":[...]}, agent IDs as {trust_domain, path}.
ids = lambda f, k: sorted(json.dumps(e["id"], sort_keys=True) for e in json.load(open(f"{w}/{f}"))[k])
assert ids("entries1.json", "entries") == ids("entries2.json", "entries"), "entries changed"
assert ids("agents1.json", "agents") == ids("agents2.json", "agents"), "agents changed"
EOF
diff -q "$work/bundle1.pem" "$work/bundle2.pem" >/dev/null || fail "the CA changed across the restart"
kubectl -n "$WL_NS" scale deploy/app --replicas=3 >/dev/null
kubectl -n "$WL_NS" rollout status deploy/app --timeout=120s >/dev/null || fail "third replica not ready"
new_pod=$(kubectl -n "$WL_NS" get pods -l app=app -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | grep -v -e "${app_pods[0]}" -e "${app_pods[1]}")
out=$(check "$new_pod")
log "$down_checks X509 checks passed while the server was down; $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$work/entries2.json") entries kept; new pod $new_pod: $out"
ok

# pod_watch NAME OUT: one line "<host ns> <pod> <node or ->" per watch event of the pods app=NAME (the host
# clock, so that creation and scheduling are timed in ms, not the API's 1 s timestamps).
pod_watch() {
  python3 -u - "$WL_NS" "$1" > "$2" <<'EOF' &
import json, subprocess, sys, time
ns, app = sys.argv[1], sys.argv[2]
p = subprocess.Popen(["kubectl", "-n", ns, "get", "pods", "-l", f"app={app}", "--watch", "--output-watch-events",
                      "-o", "json"], stdout=subprocess.PIPE, text=True)
dec, buf = json.JSONDecoder(), ""
for line in p.stdout:
    buf += line
    try:
        ev, _ = dec.raw_decode(buf.lstrip())
    except ValueError:
        continue
    buf = ""
    o = ev["object"]
    print(f'{time.time_ns()} {o["metadata"]["name"]} {o["spec"].get("nodeName") or "-"}', flush=True)
EOF
  bg_pids+=("$!")
  sleep 1
}
# result POD: its "RESULT ok|fail <ms> <start ns> <done ns>" line (the workload prints it once).
result() {
  local line=""
  for _ in $(seq 100); do
    line=$(kubectl -n "$WL_NS" logs "$1" 2>/dev/null | grep -m1 '^RESULT' || true)
    [ -n "$line" ] && break
    sleep 0.1
  done
  [ -n "$line" ] || fail "$1 printed no RESULT"
  echo "$1 $line"
}
# race NAME burst|serial|plain: $pods pods whose container fetches once at start (no retry); results in
# $work/NAME.results, watch events in $work/NAME.watch. burst = one Deployment of $pods replicas;
# serial = the same Deployment scaled up one pod at a time (each pod alone on the node); plain = a burst of
# pods with no CSI volume that never call the Workload API (the node's own pod start-up time).
race() {
  local name=$1 mode=$2 p i before
  pod_watch "$name" "$work/$name.watch"
  : > "$work/$name.results"
  if [ "$mode" = plain ]; then
    workload "$name" "$pods" start -id "$want" | grep -v -e 'volumeMounts:' -e 'volumes:' -e 'spiffe-workload-api$' \
      -e 'csi: {driver' | kubectl apply -f - >/dev/null || fail "$name apply"
    mode=burst
  elif [ "$mode" = burst ]; then
    workload "$name" "$pods" race -id "$want" | kubectl apply -f - >/dev/null || fail "$name apply"
  fi
  if [ "$mode" = burst ]; then
    kubectl -n "$WL_NS" rollout status "deploy/$name" --timeout=600s >/dev/null || fail "$name not ready"
    for p in $(kubectl -n "$WL_NS" get pods -l "app=$name" -o jsonpath='{.items[*].metadata.name}'); do
      result "$p" >> "$work/$name.results"
    done
  else
    workload "$name" 0 race -id "$want" | kubectl apply -f - >/dev/null || fail "$name apply"
    for i in $(seq "$pods"); do
      before=" $(kubectl -n "$WL_NS" get pods -l "app=$name" -o jsonpath='{.items[*].metadata.name}') "
      kubectl -n "$WL_NS" scale "deploy/$name" --replicas="$i" >/dev/null
      kubectl -n "$WL_NS" rollout status "deploy/$name" --timeout=120s >/dev/null || fail "$name pod $i not ready"
      for p in $(kubectl -n "$WL_NS" get pods -l "app=$name" -o jsonpath='{.items[*].metadata.name}'); do
        case $before in *" $p "*) ;; *) result "$p" >> "$work/$name.results" ;; esac
      done
    done
  fi
  kill "${bg_pids[-1]}" 2>/dev/null || true
  pkill -f "app=$name --watch" 2>/dev/null || true
  kubectl -n "$WL_NS" delete deploy "$name" --wait=false >/dev/null
}
# figures NAME: p50/p99 of pod created -> scheduled -> container process start -> first SVID.
figures() {
  python3 - "$work/$1.results" "$work/$1.watch" <<'EOF'
import sys
created, scheduled = {}, {}
for line in open(sys.argv[2]):
    t, pod, node = line.split()
    created.setdefault(pod, int(t))
    if node != "-":
        scheduled.setdefault(pod, int(t))
rows = [l.split() for l in open(sys.argv[1])]  # pod RESULT ok|fail ms start done
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")
ok = [r for r in rows if r[2] == "ok" and r[0] in created]
ms = lambda a, b: (b - a) / 1e6
parts = {
    "created->scheduled": [ms(created[r[0]], scheduled.get(r[0], created[r[0]])) for r in ok],
    "scheduled->container start (sandbox, CNI, CSI publish, container)": [ms(scheduled.get(r[0], created[r[0]]), int(r[4])) for r in ok],
    "container start->first SVID (attestation, entry, signing)": [ms(int(r[4]), int(r[5])) for r in ok],
    "created->first SVID": [ms(created[r[0]], int(r[5])) for r in ok],
}
fails = sum(1 for r in rows if r[2] != "ok")
print(f"{len(rows)} pods, {fails} first fetches failed; " +
      "; ".join(f"{k} p50 {pct(v, 50):.0f} ms p99 {pct(v, 99):.0f} ms" for k, v in parts.items()))
EOF
}

step "start-up race: $pods pods that fetch once at start, csiDriver.waitForIdentity off, then on"
race race-off burst
fails_off=$(grep -c ' RESULT fail' "$work/race-off.results" || true)
log "waitForIdentity off: $(figures race-off)"
helm upgrade "$REL" "$REPO/charts/sigil" -n "$NS" --reuse-values --set csiDriver.waitForIdentity=10s \
  --wait --timeout 5m > "$work/upgrade2.out" 2>&1 || fail "helm upgrade waitForIdentity: $(tail -20 "$work/upgrade2.out")"
kubectl -n "$NS" rollout status "ds/$REL-csi-driver" --timeout=180s >/dev/null || fail "CSI driver did not roll"
kubectl -n "$NS" rollout status "ds/$REL-agent" --timeout=180s >/dev/null || fail "agent did not roll"
race race-on burst
fails_on=$(grep -c ' RESULT fail' "$work/race-on.results" || true)
log "waitForIdentity on: $(figures race-on)"
[ "$fails_on" = 0 ] || fail "$fails_on pods started without their identity: $(grep fail "$work/race-on.results" | head -3)"
# The driver really waited and found each pod's identity ready (not "agent unavailable, mounted anyway").
csi_log=$(kubectl -n "$NS" logs "ds/$REL-csi-driver" 2>/dev/null) || fail "CSI driver logs"
ready_n=$(grep -c 'pod identity ready; mounting' <<<"$csi_log" || true)
unavail_n=$(grep -c 'identity_ready=false' <<<"$csi_log" || true)
[ "$ready_n" -ge "$pods" ] || fail "the CSI driver logged $ready_n ready identities for $pods pods"
[ "$unavail_n" = 0 ] || fail "the CSI driver mounted $unavail_n volumes without the identity: $(grep -m2 'identity_ready=false' <<<"$csi_log")"
log "first fetches that failed: $fails_off of $pods with waitForIdentity off, $fails_on with it on ($ready_n publishes waited for a ready identity)"
if $bench; then
  # Each measurement alone on the node: the previous pods are gone first.
  gone() { kubectl -n "$WL_NS" wait --for=delete pod -l "app=$1" --timeout=300s >/dev/null 2>&1 || true; }
  gone race-on
  race serial-on serial
  gone serial-on
  race plain-start plain
  log "BENCH ($profile images) $pods pods created one at a time, waitForIdentity on: $(figures serial-on)"
  log "BENCH ($profile images) $pods pods of one fresh Deployment at once, waitForIdentity on: $(figures race-on)"
  log "BENCH ($profile images) the same, waitForIdentity off: $(figures race-off)"
  log "BENCH the node alone: $pods pods of one Deployment without the CSI volume or any Workload API call (the first SVID column is the container start): $(figures plain-start)"
  kubectl -n "$NS" logs "ds/$REL-csi-driver" > "$work/csi.log" 2>/dev/null || true
  python3 - "$work/csi.log" <<'EOF' >&2 || true
import re, sys
w = sorted(int(m.group(1)) for m in re.finditer(r'wait(?:ed)?_ms[=:" ]+(\d+)', open(sys.argv[1]).read()))
if w:
    print(f"BENCH CSI NodePublishVolume waited for the identity: {len(w)} publishes, p50 {w[len(w)//2]} ms, max {w[-1]} ms")
EOF
fi
ok

step "federation: a second release ($TD_B) on the same node, two ClusterFederatedTrustDomains, cross-domain mTLS and JWT"
srv_b() { kubectl -n "$NS_B" exec "$REL_B-server-0" -c server -- sigil-server "$@" -socketPath /run/sigil/admin/private/api.sock; }
helm install "$REL_B" "$REPO/charts/sigil" -n "$NS_B" --create-namespace "${chart_set[@]}" --set trustDomain="$TD_B" \
  --set className=b --set csiDriver.pluginName=b.csi.spiffe.io --set agent.socketPath="$B_SOCK_DIR/spire-agent.sock" \
  --set agent.healthPort=19982 --set csiDriver.healthPort=19809 --set server.persistence.enabled=false \
  --set federation.enabled=true --set federation.bundleEndpoint.refreshHint=1m \
  --set "defaultClusterSPIFFEID.federatesWith={$TD}" --wait --timeout 5m > "$work/install-b.out" 2>&1 \
  || fail "helm install $REL_B: $(tail -20 "$work/install-b.out")"
helm test "$REL_B" -n "$NS_B" --timeout 3m > "$work/test-b.out" 2>&1 || fail "helm test $REL_B: $(cat "$work/test-b.out")"
helm upgrade "$REL" "$REPO/charts/sigil" -n "$NS" --reuse-values --set federation.enabled=true \
  --set federation.bundleEndpoint.refreshHint=1m --set "defaultClusterSPIFFEID.federatesWith={$TD_B}" \
  --wait --timeout 5m > "$work/upgrade-fed.out" 2>&1 || fail "helm upgrade federation: $(tail -20 "$work/upgrade-fed.out")"
kubectl -n "$NS" rollout status "sts/$REL-server" --timeout=180s >/dev/null || fail "server did not roll"
for _ in $(seq 30); do srv healthcheck >/dev/null 2>&1 && break; sleep 1; done
# Each side bootstraps the other's bundle from its CR (trustDomainBundle), then fetches it over https_spiffe.
a_bundle=$(srv bundle show -format spiffe) || fail "bundle show ($TD)"
b_bundle=$(srv_b bundle show -format spiffe) || fail "bundle show ($TD_B)"
cftd() { # NAME CLASS TRUST_DOMAIN URL BUNDLE
  cat <<EOF
apiVersion: sigil.dev/v1alpha1
kind: ClusterFederatedTrustDomain
metadata: {name: $1}
spec:
  ${2:+className: $2}
  trustDomain: $3
  bundleEndpointURL: $4
  bundleEndpointProfile: {type: https_spiffe, endpointSPIFFEID: "spiffe://$3/spire/server"}
  trustDomainBundle: |
$(sed 's/^/    /' <<<"$5")
EOF
}
{ cftd fed-b-test "" "$TD_B" "https://$REL_B-server-federation.$NS_B.svc:8443" "$b_bundle"; echo ---
  cftd fed-example-org b "$TD" "https://$REL-server-federation.$NS.svc:8443" "$a_bundle"; } > "$work/cftd.yaml"
kubectl apply -f "$work/cftd.yaml" >/dev/null || fail "ClusterFederatedTrustDomain apply: $(cat "$work/cftd.yaml")"
t_cftd=$(date +%s.%N)
for cr in fed-b-test fed-example-org; do
  kubectl wait --for=condition=BundleFetched "clusterfederatedtrustdomain/$cr" --timeout=90s >/dev/null \
    || fail "$cr: $(kubectl get clusterfederatedtrustdomain "$cr" -o jsonpath='{.status}')"
done
log "both ClusterFederatedTrustDomains BundleFetched $(python3 -c "import sys; print(round(float(sys.argv[2])-float(sys.argv[1]),1))" "$t_cftd" "$(date +%s.%N)") s after kubectl apply"
kubectl get clusterfederatedtrustdomain fed-b-test -o json > "$work/cftd-b.json"
srv federation show -trustDomain "$TD_B" -output json > "$work/fed-show.json" || fail "federation show $TD_B"
python3 - "$work/cftd-b.json" "$work/fed-show.json" <<'PY' || fail "status: $(cat "$work/cftd-b.json" "$work/fed-show.json")"
import json, sys
cr, show = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
b = cr["status"]["bundle"]
assert b["lastSuccessTime"] and b["sequence"] >= 1 and b.get("consecutiveFailures", 0) == 0, b
print(json.dumps(show)[:400], file=sys.stderr)
PY
id_a="spiffe://$TD/ns/fed-a/sa/web"
id_b="spiffe://$TD_B/ns/fed-b/sa/echo"
for ns_sa in fed-a/web fed-b/echo; do
  kubectl create namespace "${ns_sa%/*}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n "${ns_sa%/*}" create serviceaccount "${ns_sa#*/}" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done
# Each serves mTLS accepting exactly the other trust domain's workload.
WL_NS=fed-a WL_SA=web workload web 1 serve -id "$id_b" | kubectl apply -f - >/dev/null || fail "fed-a apply"
WL_NS=fed-b WL_SA=echo WL_DRIVER=b.csi.spiffe.io workload echo 1 serve -id "$id_a" | kubectl apply -f - >/dev/null \
  || fail "fed-b apply"
kubectl -n fed-a rollout status deploy/web --timeout=120s >/dev/null || fail "fed-a web not ready"
kubectl -n fed-b rollout status deploy/echo --timeout=120s >/dev/null || fail "fed-b echo not ready"
pod_a=$(kubectl -n fed-a get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
pod_b=$(kubectl -n fed-b get pods -l app=echo -o jsonpath='{.items[0].metadata.name}')
ip_a=$(kubectl -n fed-a get pod "$pod_a" -o jsonpath='{.status.podIP}')
ip_b=$(kubectl -n fed-b get pod "$pod_b" -o jsonpath='{.status.podIP}')
fed_dial() { # NS POD PEER_ID ADDR MY_ID
  local out=""
  for _ in $(seq 30); do
    out=$(kubectl -n "$1" exec "$2" -- /workload dial -id "$3" -addr "$4:8443" -timeout 10s 2>"$work/fed-dial.err") && break
    out=""
    sleep 1
  done
  [ -n "$out" ] || fail "mTLS $2 -> $4: $(cat "$work/fed-dial.err")"
  python3 - "$out" "$3" "$5" <<'PY' || fail "mTLS $2 -> $4: $out"
import json, sys
r, peer, me = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
assert r["peer_id"] == peer and r["peer_saw_me_as"] == me, r
PY
  log "mTLS $1/$2 -> $4: $out"
}
fed_dial fed-a "$pod_a" "$id_b" "$ip_b" "$id_a"
fed_dial fed-b "$pod_b" "$id_a" "$ip_a" "$id_b"
token=$(kubectl -n fed-b exec "$pod_b" -- /workload mint -id "$id_b" -audience "$id_a" -timeout 10s \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])') || fail "JWT-SVID mint in $TD_B"
out=$(kubectl -n fed-a exec "$pod_a" -- /workload validate -id "$id_b" -audience "$id_a" -token "$token" -timeout 10s) \
  || fail "the $TD_B JWT-SVID did not validate in $TD"
log "$TD_B JWT-SVID validated in $TD (agent ValidateJWTSVID and go-spiffe with FetchJWTBundles): $(cut -c1-200 <<<"$out")"
ok

step "helm uninstall (chart, then CRDs): no CSI mount or socket left on the node, nothing left but the PVC"
kubectl delete namespace "$WL_NS" fed-a fed-b --wait=true --timeout=180s >/dev/null || fail "workload namespace delete"
kubectl delete clusterfederatedtrustdomain fed-b-test fed-example-org --wait=true >/dev/null || fail "CFTD delete"
helm uninstall "$REL_B" -n "$NS_B" --wait --timeout 3m >/dev/null || fail "helm uninstall $REL_B"
helm uninstall "$REL" -n "$NS" --wait --timeout 3m >/dev/null || fail "helm uninstall sigil"
helm uninstall sigil-crds --wait --timeout 2m >/dev/null || fail "helm uninstall sigil-crds"
# A pod's CSI volume is a bind mount at /var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount.
on_node "grep 'kubernetes.io~csi' /proc/mounts" && fail "CSI mounts left on the node"
for _ in $(seq 20); do on_node "[ -S $SOCK ] || [ -S $B_SOCK_DIR/spire-agent.sock ]" || break; sleep 0.5; done
on_node "[ -S $SOCK ]" && fail "the agent socket $SOCK is left"
on_node "[ -S /run/sigil/$REL/agent-admin/private/admin.sock ]" && fail "the agent admin socket is left"
on_node "[ -S $B_SOCK_DIR/spire-agent.sock ]" && fail "the $REL_B agent socket is left"
for s in /var/lib/kubelet/plugins/{,b.}csi.spiffe.io/csi.sock /var/lib/kubelet/plugins_registry/{,b.}csi.spiffe.io-reg.sock; do
  on_node "[ -S $s ]" && fail "the CSI driver's socket $s is left"
done
# `helm uninstall --wait` returns when the objects are deleted; their pods may still be terminating.
left=""
for _ in $(seq 60); do
  all=$(kubectl get all,configmaps,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings,csidrivers,pvc -A \
    -l app.kubernetes.io/part-of=sigil -o name) || fail "kubectl get (objects left)"
  left=$(grep -v '^persistentvolumeclaim/' <<<"$all" || true)
  [ -z "$left" ] && break
  sleep 1
done
[ -z "$left" ] || fail "objects left: $left"
kubectl get crd -o name | grep -q sigil.dev && fail "CRDs left after uninstalling sigil-crds"
pvc=$(kubectl -n "$NS" get pvc -o name)
[ "$pvc" = "persistentvolumeclaim/data-$REL-server-0" ] || fail "want the server's PVC kept, got: $pvc"
log "left as documented: $pvc (and the hostPath directories /run/spire/agent-sockets, /run/sigil/$REL/agent-admin)"
ok

echo "helm: $passed passed, 0 failed"
