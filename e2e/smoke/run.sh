#!/usr/bin/env bash
# e2e/smoke/run.sh [--tier api|node] [--keep]
#
# Smoke test of the Sigil test cluster (e2e/cluster/cluster). Brings the tier up
# (building what is missing), checks it, tears it down and checks that nothing
# is left behind. Exits non-zero with a clear message on the first failure.
#
# api tier:  a CRD is served and a custom resource round-trips; a TokenRequest
#            token passes a TokenReview (and fails it for another audience).
# node tier: the api checks, plus a Deployment from a locally built image
#            (imported without a registry) becomes Ready; a Job in another pod
#            reaches it through its Service name (CoreDNS + kube-proxy);
#            `kubectl logs` works; a privileged DaemonSet pod with a hostPath
#            runs and sees a host file (read via `kubectl exec`); a tmpfs mounted
#            in a pod with Bidirectional propagation shows on the host (CSI); a
#            StatefulSet answers through its headless Service; the projected
#            service-account token in that pod passes a TokenReview.
# Then `cluster down`, and no processes, mounts, netns, links or iptables
# chains of the cluster may remain. --keep leaves the cluster up instead.
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=$E2E/cluster/cluster
# shellcheck source-path=SCRIPTDIR source=../cluster/versions.env
. "$E2E/cluster/versions.env"
CACHE=${SIGIL_E2E_CACHE:-$HOME/.cache/sigil-e2e}
STATE=${SIGIL_CLUSTER_DIR:-/tmp/sigil-cluster}
BIN=$CACHE/bin
NS=sigil-smoke
AUD=sigil-smoke
HOSTDIR=$STATE/smoke-hostpath

tier=node
keep=false
external=false
while [ $# -gt 0 ]; do
  case $1 in
    --tier) tier=$2; shift 2 ;;
    --tier=*) tier=${1#--tier=}; shift ;;
    --keep) keep=true; shift ;;
    *) echo "usage: $0 [--tier api|node] [--keep]" >&2; exit 2 ;;
  esac
done

passed=0
failed=0
current=""
log() { echo "[smoke $(date -u +%H:%M:%S)] $*" >&2; }
step() { current=$1; log "--- $1"; }
ok() { passed=$((passed + 1)); log "PASS: $current"; }
summary() { echo "smoke-$tier: $passed passed, $failed failed"; }
fail() {
  failed=$((failed + 1))
  echo "[smoke] FAIL: $current: $*" >&2
  if [ -n "${KUBECONFIG:-}" ] && [ "$tier" = node ]; then
    kubectl get pods -A -o wide >&2 2>/dev/null || true
    kubectl -n "$NS" get events --sort-by=.lastTimestamp 2>/dev/null | tail -20 >&2 || true
  fi
  echo "[smoke] component logs: $STATE/logs" >&2
  if ! $keep; then "$CLUSTER" down >&2 2>/dev/null || true; fi
  summary
  exit 1
}
kubectl() { "$BIN/kubectl" "$@"; }

# token_review TOKEN AUDIENCE -> prints "authenticated username"
token_review() {
  kubectl create -o jsonpath='{.status.authenticated} {.status.user.username}' -f - <<EOF
apiVersion: authentication.k8s.io/v1
kind: TokenReview
spec:
  token: $1
  audiences: [$2]
EOF
}

check_api() {
  step "CRD is served and a custom resource round-trips"
  kubectl apply -f - >/dev/null <<'EOF' || fail "CRD apply failed"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.sigil.test
spec:
  group: smoke.sigil.test
  scope: Cluster
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
EOF
  kubectl wait --for condition=established --timeout=30s crd/widgets.smoke.sigil.test >/dev/null \
    || fail "CRD not established"
  kubectl apply -f - >/dev/null <<'EOF' || fail "custom resource create failed"
apiVersion: smoke.sigil.test/v1
kind: Widget
metadata: {name: w1}
spec: {size: 7}
EOF
  [ "$(kubectl get widget w1 -o jsonpath='{.spec.size}')" = 7 ] || fail "custom resource did not round-trip"
  kubectl delete crd widgets.smoke.sigil.test --wait=false >/dev/null
  ok

  step "TokenRequest token passes TokenReview (and only for its audience)"
  kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n "$NS" create serviceaccount tokentest --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  local tok res
  tok=$(kubectl -n "$NS" create token tokentest --audience "$AUD" --duration 10m) || fail "TokenRequest failed"
  res=$(token_review "$tok" "$AUD") || fail "TokenReview call failed"
  [ "$res" = "true system:serviceaccount:$NS:tokentest" ] || fail "TokenReview said '$res'"
  res=$(token_review "$tok" other-audience) || fail "TokenReview call failed"
  [ "${res%% *}" != true ] || fail "token accepted for the wrong audience: '$res'"
  ok
}

check_node() {
  step "image import (no registry)"
  "$CLUSTER" import-image "$CACHE/images/testapp.tar" || fail "import-image failed"
  ok

  step "Deployment from the local image becomes Ready"
  kubectl apply -f - >/dev/null <<EOF || fail "apply failed"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: $TESTAPP_IMAGE
        imagePullPolicy: Never
        args: [serve, ":8080"]
        ports: [{containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: $NS}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
EOF
  kubectl -n "$NS" rollout status deployment/web --timeout=120s >&2 || fail "Deployment web not Ready"
  ok

  step "StatefulSet with a headless Service becomes Ready"
  kubectl apply -f - >/dev/null <<EOF || fail "apply failed"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: $NS}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: db
        image: $TESTAPP_IMAGE
        imagePullPolicy: Never
        args: [serve, ":8080"]
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: $NS}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 8080}]
EOF
  kubectl -n "$NS" rollout status statefulset/db --timeout=120s >&2 || fail "StatefulSet db not Ready"
  ok

  step "Services resolve through CoreDNS and answer from another pod (ClusterIP and headless)"
  kubectl apply -f - >/dev/null <<EOF || fail "apply failed"
apiVersion: batch/v1
kind: Job
metadata: {name: client, namespace: $NS}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: client
        image: $TESTAPP_IMAGE
        imagePullPolicy: Never
        args: [get, "http://web.$NS.svc.cluster.local/", "http://db-0.db.$NS.svc.cluster.local:8080/"]
EOF
  kubectl -n "$NS" wait --for=condition=complete --timeout=120s job/client >&2 \
    || { kubectl -n "$NS" logs job/client >&2 || true; fail "client Job did not complete"; }
  ok

  step "kubectl logs"
  local out
  out=$(kubectl -n "$NS" logs job/client) || fail "kubectl logs job/client failed"
  echo "$out" | grep "hello from web-" >/dev/null || fail "client log lacks the Deployment's answer: $out"
  echo "$out" | grep "hello from db-0" >/dev/null || fail "client log lacks the StatefulSet's answer: $out"
  out=$(kubectl -n "$NS" logs deployment/web) || fail "kubectl logs deployment/web failed"
  echo "$out" | grep "testapp serving on :8080" >/dev/null || fail "server log unexpected: $out"
  ok

  step "privileged DaemonSet pod with a hostPath runs (kubectl exec reads a host file)"
  $external || mkdir -p "$HOSTDIR/prop"
  local marker
  marker="marker-$RANDOM-$(date +%s)"
  $external || echo "$marker" > "$HOSTDIR/marker"
  kubectl apply -f - >/dev/null <<EOF || fail "apply failed"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: hostpath, namespace: $NS}
spec:
  selector: {matchLabels: {app: hostpath}}
  template:
    metadata: {labels: {app: hostpath}}
    spec:
      containers:
      - name: main
        image: $TESTAPP_IMAGE
        imagePullPolicy: Never
        args: [sleep]
        securityContext: {privileged: true}
        volumeMounts:
        - {name: host, mountPath: /host}
        - {name: token, mountPath: /var/run/secrets/sigil, readOnly: true}
      - name: mounter
        image: $TESTAPP_IMAGE
        imagePullPolicy: Never
        args: [mount-tmpfs, /host/prop]
        securityContext: {privileged: true}
        volumeMounts:
        - {name: host, mountPath: /host, mountPropagation: Bidirectional}
      volumes:
      - name: host
        hostPath: {path: $HOSTDIR, type: DirectoryOrCreate}
      - name: token
        projected:
          sources:
          - serviceAccountToken: {audience: $AUD, expirationSeconds: 600, path: token}
EOF
  kubectl -n "$NS" rollout status daemonset/hostpath --timeout=120s >&2 || fail "DaemonSet not ready"
  local pod
  pod=$(kubectl -n "$NS" get pods -l app=hostpath -o jsonpath='{.items[0].metadata.name}')
  if $external; then
    # The host directory is inside the kind node, not here: only check it is mounted.
    kubectl -n "$NS" exec "$pod" -- /testapp ls /host >/dev/null || fail "kubectl exec failed"
  else
    out=$(kubectl -n "$NS" exec "$pod" -- /testapp cat /host/marker) || fail "kubectl exec failed"
    [ "$out" = "$marker" ] || fail "hostPath content '$out', want '$marker'"
  fi
  ok

  step "Bidirectional mount propagation (what CSI drivers need): a pod's mount shows on the host"
  if ! $external; then
    out=$(cat "$HOSTDIR/prop/mounted" 2>/dev/null || true)
    [ "$out" = propagated ] || fail "tmpfs mounted in the pod at /host/prop is not visible at $HOSTDIR/prop"
    grep -q " $HOSTDIR/prop " /proc/self/mountinfo || fail "no host mount at $HOSTDIR/prop"
  fi
  ok

  step "projected service-account token passes TokenReview"
  local tok res
  tok=$(kubectl -n "$NS" exec "$pod" -- /testapp cat /var/run/secrets/sigil/token) || fail "reading the projected token failed"
  res=$(token_review "$tok" "$AUD") || fail "TokenReview call failed"
  [ "$res" = "true system:serviceaccount:$NS:default" ] || fail "TokenReview said '$res'"
  # A bound TokenRequest for the same pod, as a node agent would get.
  tok=$(kubectl -n "$NS" create token default --audience "$AUD" --bound-object-kind Pod \
    --bound-object-name "$pod") || fail "bound TokenRequest failed"
  res=$(kubectl create -o jsonpath='{.status.authenticated} {.status.user.extra.authentication\.kubernetes\.io/pod-name}' -f - <<EOF
apiVersion: authentication.k8s.io/v1
kind: TokenReview
spec: {token: $tok, audiences: [$AUD]}
EOF
  ) || fail "TokenReview call failed"
  [ "$res" = "true [\"$pod\"]" ] || [ "$res" = "true $pod" ] || fail "bound token review said '$res'"
  ok
}

# check_clean: after `down`, nothing of the cluster may remain.
check_clean() {
  step "teardown leaves no processes, mounts, netns, links or rules"
  local left
  left=$(for p in /proc/[0-9]*; do
    c=$(tr '\0' ' ' 2>/dev/null < "$p/cmdline") || continue
    case $c in *"$STATE"*|*"$CACHE/bin/"*|*"$CACHE/build/"*) echo "${p#/proc/}: $c" ;; esac
  done | grep -v "^$$:" || true)
  [ -z "$left" ] || fail "processes remain: $left"
  left=$(awk -v s="$STATE" '{split($0, a, " - "); split(a[2], b, " ")}
    $5 ~ "^/var/lib/kubelet" || index($5, s) == 1 || (b[1] == "nsfs" && $5 ~ /cni-/) {print $5, b[1]}' /proc/self/mountinfo)
  [ -z "$left" ] || fail "mounts remain: $left"
  left=$(ip netns list 2>/dev/null | grep -i cni || true)
  [ -z "$left" ] || fail "netns remain: $left"
  ! ip link show sigil-cni0 >/dev/null 2>&1 || fail "bridge sigil-cni0 remains"
  left=$(ip -o link show type veth 2>/dev/null || true)
  [ -z "$left" ] || fail "veth links remain: $left"
  left=$({ iptables-save; ip6tables-save; } 2>/dev/null | grep -E "^:(KUBE-|CNI-)" || true)
  [ -z "$left" ] || fail "iptables chains remain: $left"
  left=$(find /sys/fs/cgroup -maxdepth 2 -name 'kubepods*' 2>/dev/null || true)
  [ -z "$left" ] || fail "cgroups remain: $left"
  ok
}

t0=$(date +%s)
if [ -n "${SIGIL_E2E_KUBECONFIG:-}" ]; then
  # An existing cluster (e.g. kind via e2e/cluster/kind.sh, which loads the test image).
  export KUBECONFIG=$SIGIL_E2E_KUBECONFIG
  BIN_KUBECTL=$(command -v kubectl || true)
  [ -n "$BIN_KUBECTL" ] || { echo "kubectl not on PATH" >&2; exit 1; }
  kubectl() { "$BIN_KUBECTL" "$@"; }
  CLUSTER=true   # so `"$CLUSTER" import-image` is a no-op: kind.sh already loaded the image
  keep=true
  external=true
  check_api
  [ "$tier" = node ] && check_node
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  summary
  exit 0
fi
log "building (cached after the first run)"
build_args=()
[ "$tier" = api ] && build_args=(--api)
"$E2E/cluster/build.sh" "${build_args[@]}" >/dev/null || { current=build; fail "build.sh failed"; }
t1=$(date +%s)
"$CLUSTER" down >/dev/null 2>&1 || true
current="cluster up --tier $tier"
KUBECONFIG=$("$CLUSTER" up --tier "$tier") || fail "cluster up failed"
export KUBECONFIG
t2=$(date +%s)
log "cluster up in $((t2 - t1)) s (build check $((t1 - t0)) s)"

check_api
[ "$tier" = node ] && check_node

if $keep; then
  log "leaving the cluster up (--keep): KUBECONFIG=$KUBECONFIG"
else
  current="cluster down"
  "$CLUSTER" down || fail "cluster down failed"
  check_clean
fi
log "done in $(($(date +%s) - t0)) s"
summary
