#!/usr/bin/env bash
# kind.sh: run Sigil's e2e suites on kind (Docker) instead of e2e/cluster/cluster.
#
#   e2e/cluster/kind.sh up            create kind cluster "sigil" (node image $KIND_NODE_IMAGE,
#                                     default kindest/node:$K8S_VERSION), build and load the test
#                                     images; prints the kubeconfig path on stdout
#   e2e/cluster/kind.sh load ARG...   load image archives (*.tar) or local Docker images into the node
#   e2e/cluster/kind.sh down          delete the kind cluster
#   e2e/cluster/kind.sh helm [ARG...] the chart tier (e2e/helm/run.sh) on kind: the same install and checks,
#                                     images loaded with `kind load`, node checks through `docker exec`,
#                                     the server's PVC from kind's default StorageClass
#
# Then: KUBECONFIG=$(e2e/cluster/kind.sh up) cargo test ...   or
#       SIGIL_E2E_KUBECONFIG=$(e2e/cluster/kind.sh up) e2e/smoke/run.sh --tier node
# Needs docker, kind and go on PATH. Nothing here runs in Sigil's own CI (no Docker there).
set -euo pipefail
E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=versions.env
. "$E2E/cluster/versions.env"
NAME=${SIGIL_KIND_NAME:-sigil}
CACHE=${SIGIL_E2E_CACHE:-$HOME/.cache/sigil-e2e}
NODE_IMAGE=${KIND_NODE_IMAGE:-kindest/node:$K8S_VERSION}
KCFG=$CACHE/kind-$NAME.kubeconfig
log() { echo "[kind $(date -u +%H:%M:%S)] $*" >&2; }

load() {
  local a
  for a in "$@"; do
    if [ -f "$a" ]; then
      log "loading archive $a"
      kind load image-archive --name "$NAME" "$a" >&2
    else
      log "loading docker image $a"
      kind load docker-image --name "$NAME" "$a" >&2
    fi
  done
}

case ${1:-} in
  up)
    command -v kind >/dev/null || { echo "kind not found (https://kind.sigs.k8s.io)" >&2; exit 1; }
    mkdir -p "$CACHE"
    if ! kind get clusters 2>/dev/null | grep -qx "$NAME"; then
      log "creating kind cluster $NAME ($NODE_IMAGE)"
      # The kind node already runs containerd, CoreDNS and kube-proxy; /var/lib/kubelet
      # inside it has shared propagation, so CSI drivers work as on the built cluster.
      kind create cluster --name "$NAME" --image "$NODE_IMAGE" --wait 180s >&2
    fi
    kind get kubeconfig --name "$NAME" > "$KCFG"
    "$E2E/cluster/build.sh" --images >/dev/null
    load "$CACHE/images/testapp.tar"
    echo "$KCFG"
    ;;
  load) shift; load "$@" ;;
  helm) shift; SIGIL_E2E_KIND=$NAME exec "$E2E/helm/run.sh" "$@" ;;
  down) kind delete cluster --name "$NAME" >&2 ;;
  *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
