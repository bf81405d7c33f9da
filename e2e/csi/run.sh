#!/usr/bin/env bash
# e2e/csi/run.sh [--keep] [--driver PATH]
#
# Node-tier check of sigil-csi-driver on the Sigil test cluster (e2e/cluster/cluster):
#   1. the driver runs as a privileged DaemonSet (deploy/daemonset.yaml, image built here without a
#      registry) and registers itself with the kubelet: the node's CSINode lists csi.spiffe.io
#      (no node-driver-registrar sidecar);
#   2. a pod with the inline volume `csi: {driver: csi.spiffe.io, readOnly: true}` sees the agent socket
#      directory at its mount path, read-only (its own mountinfo says `ro`, also in a container whose
#      volumeMount does not ask for readOnly);
#   3. a kubelet restart (the kubelet re-publishes) stacks no mount;
#   4. deleting the pod leaves no mount (and no target directory) on the host.
# Then the driver is removed, its registration socket is gone, and `cluster down` runs (unless --keep).
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=../cluster/tier-env.sh
. "$E2E/cluster/tier-env.sh"
NS=sigil-csi-e2e
DRIVER_NS=sigil-system
IMAGE=docker.io/sigil-e2e/sigil-csi-driver:e2e
SOCKDIR=/run/sigil-e2e-csi/agent-sockets
KUBELET_DIR=/var/lib/kubelet

keep=false
driver=""
while [ $# -gt 0 ]; do
  case $1 in
    --keep) keep=true; shift ;;
    --driver) driver=$2; shift 2 ;;
    *) echo "usage: $0 [--keep] [--driver PATH]" >&2; exit 2 ;;
  esac
done

passed=0
current=""
log() { echo "[csi-e2e $(date -u +%H:%M:%S)] $*" >&2; }
step() { current=$1; log "--- $1"; }
ok() { passed=$((passed + 1)); log "PASS: $current"; }
fail() {
  echo "[csi-e2e] FAIL: $current: $*" >&2
  if [ -n "${KUBECONFIG:-}" ]; then
    kubectl get pods -A -o wide >&2 2>/dev/null || true
    kubectl -n "$NS" get events --sort-by=.lastTimestamp 2>/dev/null | tail -20 >&2 || true
    kubectl -n "$DRIVER_NS" logs ds/sigil-csi-driver --tail=40 >&2 2>/dev/null || true
  fi
  if ! $keep; then "$CLUSTER" down >&2 2>/dev/null || true; fi
  exit 1
}

step "build the driver image (no registry)"
if [ -z "$driver" ]; then
  (cd "$REPO" && nice -n 15 cargo build -q -p sigil-csi-driver) || fail "cargo build failed"
  driver=$REPO/target/debug/sigil-csi-driver
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs"
cp "$driver" "$work/rootfs/sigil-csi-driver"
strip "$work/rootfs/sigil-csi-driver" 2>/dev/null || true
# A glibc binary: copy its loader and libraries at their paths.
for lib in $(ldd "$driver" | grep -o '/[^ ]*' | sort -u); do
  mkdir -p "$work/rootfs$(dirname "$lib")"
  cp -L "$lib" "$work/rootfs$lib"
done
"$E2E/cluster/mkimage.sh" "$work/driver.tar" "$IMAGE" "$work/rootfs" /sigil-csi-driver >/dev/null \
  || fail "mkimage failed"
ok

step "cluster up (node tier) and image import"
KUBECONFIG=$("$CLUSTER" up --tier node) || fail "cluster up failed"
export KUBECONFIG
"$CLUSTER" import-image "$work/driver.tar" >/dev/null || fail "import driver image failed"
"$CLUSTER" import-image "$CACHE/images/testapp.tar" >/dev/null || fail "import testapp image failed"
ok

step "driver DaemonSet runs and the kubelet registers it (CSINode lists csi.spiffe.io)"
mkdir -p "$SOCKDIR"
echo "sigil-e2e-marker" > "$SOCKDIR/marker"
kubectl create namespace "$DRIVER_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f "$REPO/csi-driver/deploy/csidriver.yaml" >/dev/null || fail "CSIDriver apply failed"
sed -e "s|image: sigil-csi-driver:0.1.0|image: $IMAGE|" \
    -e "s|imagePullPolicy: IfNotPresent|imagePullPolicy: Never|" \
    -e "s|path: /run/spire/agent-sockets|path: $SOCKDIR|" \
    -e "s|- -health-port=9809|- -health-port=9809\n            - -log-level=debug|" \
    "$REPO/csi-driver/deploy/daemonset.yaml" | kubectl apply -f - >/dev/null || fail "DaemonSet apply failed"
kubectl -n "$DRIVER_NS" rollout status ds/sigil-csi-driver --timeout=120s >/dev/null || fail "DaemonSet not ready"
node=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
drivers=""
for _ in $(seq 60); do
  drivers=$(kubectl get csinode "$node" -o jsonpath='{.spec.drivers[*].name}' 2>/dev/null || true)
  case " $drivers " in *" csi.spiffe.io "*) break ;; esac
  sleep 1
done
case " $drivers " in *" csi.spiffe.io "*) ;; *) fail "CSINode $node lists '$drivers'" ;; esac
[ -S "$KUBELET_DIR/plugins_registry/csi.spiffe.io-reg.sock" ] || fail "no registration socket"
# The kubelet lists the driver in CSINode just before it calls NotifyRegistrationStatus, so give the log line a
# moment. Capture first, then grep: `kubectl logs | grep -q` fails under pipefail when grep exits early (SIGPIPE).
registered=false
for _ in $(seq 20); do
  driver_log=$(kubectl -n "$DRIVER_NS" logs ds/sigil-csi-driver 2>/dev/null || true)
  if grep -q "registered with the kubelet" <<<"$driver_log"; then registered=true; break; fi
  sleep 0.5
done
$registered || fail "driver did not log a successful registration"
ok

step "a pod with the inline volume sees the socket directory, read-only"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f - >/dev/null <<EOF || fail "pod apply failed"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: $NS}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: $TESTAPP_IMAGE
      imagePullPolicy: Never
      command: ["/testapp", "sleep"]
      volumeMounts: [{name: spiffe, mountPath: /spiffe-workload-api, readOnly: true}]
    - name: app-no-ro-flag
      image: $TESTAPP_IMAGE
      imagePullPolicy: Never
      command: ["/testapp", "sleep"]
      volumeMounts: [{name: spiffe, mountPath: /spiffe-workload-api}]
  volumes:
    - name: spiffe
      csi: {driver: csi.spiffe.io, readOnly: true}
EOF
kubectl -n "$NS" wait --for=condition=Ready pod/client --timeout=120s >/dev/null || fail "pod not Ready"
uid=$(kubectl -n "$NS" get pod client -o jsonpath='{.metadata.uid}')
for c in app app-no-ro-flag; do
  out=$(kubectl -n "$NS" exec client -c "$c" -- /testapp cat /spiffe-workload-api/marker) || fail "$c: cat failed"
  [ "$out" = "sigil-e2e-marker" ] || fail "$c: marker reads '$out'"
  line=$(kubectl -n "$NS" exec client -c "$c" -- /testapp cat /proc/self/mountinfo | awk '$5 == "/spiffe-workload-api"')
  [ -n "$line" ] || fail "$c: /spiffe-workload-api is not a mount point in the container"
  opts=$(echo "$line" | tail -1 | awk '{print $6}')
  case ",$opts," in *,ro,*) ;; *) fail "$c: /spiffe-workload-api mounted '$opts', want ro" ;; esac
  log "$c: /spiffe-workload-api mount options $opts"
done
target="$KUBELET_DIR/pods/$uid/volumes/kubernetes.io~csi/spiffe/mount"
host_opts=$(awk -v t="$target" '$5 == t {print $6}' /proc/self/mountinfo | tail -1)
[ -n "$host_opts" ] || fail "no host mount at $target"
case ",$host_opts," in *,ro,*) ;; *) fail "host-side bind is '$host_opts', want ro" ;; esac
n=$(awk -v t="$target" '$5 == t' /proc/self/mountinfo | wc -l)
[ "$n" -eq 1 ] || fail "$n mounts stacked at $target, want 1"
ok

step "a kubelet restart re-publishes without stacking mounts"
# The anchor stacked mounts on every kubelet restart (the kubelet calls NodePublishVolume again for
# running pods). Restart the kubelet with the same command line the cluster started it with.
STATE=${SIGIL_CLUSTER_DIR:-/tmp/sigil-cluster}
kpid=$(cat "$STATE/run/kubelet.pid") || fail "no kubelet pid file"
mapfile -d '' kcmd < "/proc/$kpid/cmdline"
publishes_before=$(kubectl -n "$DRIVER_NS" logs ds/sigil-csi-driver | grep -c "published" || true)
kill -TERM "$kpid"
for _ in $(seq 50); do kill -0 "$kpid" 2>/dev/null || break; sleep 0.2; done
kill -0 "$kpid" 2>/dev/null && fail "kubelet did not stop"
echo "=== $(date -u +%FT%TZ) restarted by e2e/csi/run.sh" >> "$STATE/logs/kubelet.log"
setsid "${kcmd[@]}" >> "$STATE/logs/kubelet.log" 2>&1 < /dev/null &
echo $! > "$STATE/run/kubelet.pid"
republished=false
for _ in $(seq 90); do
  n=$(kubectl -n "$DRIVER_NS" logs ds/sigil-csi-driver 2>/dev/null | grep -c "published" || true)
  if [ "$n" -gt "$publishes_before" ]; then republished=true; break; fi
  sleep 1
done
n=$(awk -v t="$target" '$5 == t' /proc/self/mountinfo | wc -l)
[ "$n" -eq 1 ] || fail "$n mounts at $target after the kubelet restart, want 1"
if $republished; then
  kubectl -n "$DRIVER_NS" logs ds/sigil-csi-driver | grep "published" | tail -1 | grep -q AlreadyMounted \
    || fail "the republish after the restart was not recognised as already mounted"
  log "the kubelet re-published after its restart; the driver answered AlreadyMounted"
else
  log "the kubelet did not call NodePublishVolume again within 90 s (mount count checked anyway)"
fi
kubectl -n "$NS" wait --for=condition=Ready pod/client --timeout=60s >/dev/null || fail "pod not Ready after the restart"
ok

step "deleting the pod leaves no mount on the host"
kubectl -n "$NS" delete pod client --wait=true --timeout=60s >/dev/null || fail "pod delete failed"
for _ in $(seq 30); do
  grep -q " $KUBELET_DIR/pods/$uid/" /proc/self/mountinfo || break
  sleep 1
done
if grep " $KUBELET_DIR/pods/$uid/" /proc/self/mountinfo >&2; then fail "mounts of pod $uid remain"; fi
[ ! -e "$target" ] || fail "target directory $target remains"
grep -q "sigil-e2e-marker" "$SOCKDIR/marker" || fail "socket directory content changed"
ok

step "removing the driver deregisters it"
kubectl -n "$DRIVER_NS" delete ds sigil-csi-driver --wait=true --timeout=60s >/dev/null || fail "DaemonSet delete failed"
for _ in $(seq 30); do
  [ -S "$KUBELET_DIR/plugins_registry/csi.spiffe.io-reg.sock" ] || break
  sleep 1
done
[ ! -S "$KUBELET_DIR/plugins_registry/csi.spiffe.io-reg.sock" ] || fail "registration socket left behind"
kubectl delete -f "$REPO/csi-driver/deploy/csidriver.yaml" >/dev/null 2>&1 || true
ok

if ! $keep; then "$CLUSTER" down >/dev/null || fail "cluster down failed"; fi
rm -rf /run/sigil-e2e-csi
echo "csi-e2e: $passed passed, 0 failed"
