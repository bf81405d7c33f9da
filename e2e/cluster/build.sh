#!/usr/bin/env bash
# build.sh: build (or find in the cache) every part of the Sigil test cluster.
#
#   e2e/cluster/build.sh            # build what is missing, print progress
#   e2e/cluster/build.sh --api      # only what the api tier needs (etcd, kube)
#   e2e/cluster/build.sh --images   # only the test image archives that need no root (for kind.sh)
#
# Everything comes from the Go module proxy (pinned in e2e/k8s-build/*/go.mod and
# e2e/cluster/versions.env) and Debian's packages. Outputs are cached under
# $SIGIL_E2E_CACHE (default ~/.cache/sigil-e2e), keyed by version and by a hash
# of our wrapper sources, so a second run only checks and prints. Go's own
# module and build caches (~/go/pkg/mod, ~/.cache/go-build) make rebuilds after
# a version bump incremental.
#
# The machine is shared: builds run under `nice` (SIGIL_E2E_NICE, default 15)
# with at most SIGIL_E2E_GO_P (default 2) parallel compiles.
set -euo pipefail

E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=versions.env
. "$E2E/cluster/versions.env"
CACHE=${SIGIL_E2E_CACHE:-$HOME/.cache/sigil-e2e}
OUT=$CACHE/build   # versioned build outputs
BIN=$CACHE/bin     # stable names (symlinks into $OUT) used by e2e/cluster/cluster
IMAGES=$CACHE/images
NICE=(nice -n "${SIGIL_E2E_NICE:-15}")
export GOFLAGS="-p=${SIGIL_E2E_GO_P:-2} -buildvcs=false"
export CGO_ENABLED=0
TIMES=$CACHE/build-times.log

only_api=false
only_images=false
for a in "$@"; do
  case $a in
    --api) only_api=true ;;
    --images) only_images=true ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

mkdir -p "$OUT" "$BIN" "$IMAGES"
log() { echo "[build $(date -u +%H:%M:%S)] $*" >&2; }
die() { echo "[build] ERROR: $*" >&2; exit 1; }
command -v go >/dev/null || die "go is not on PATH (Go 1.25+ needed)"

# timed NAME CMD...: run CMD, log and record its duration.
timed() {
  local name=$1 start end
  shift
  start=$(date +%s)
  "$@"
  end=$(date +%s)
  log "$name built in $((end - start)) s"
  echo "$(date -u +%FT%TZ) $name $((end - start))s" >> "$TIMES"
}

# src_hash DIR: short hash of a wrapper module's sources (go.mod, go.sum, *.go).
src_hash() {
  (cd "$1" && shopt -s nullglob && cat go.mod go.su[m] ./*.go | sha256sum | cut -c1-12)
}

link() { ln -sfn "$1" "$BIN/$2"; }

ensure_debs() {
  local missing=() p
  for p in $DEB_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "debian packages present: $DEB_PACKAGES"
    return
  fi
  log "installing debian packages: ${missing[*]}"
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Kubernetes: one multi-call binary (sigil.test/e2e/kube) = kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl.
build_kube() {
  local dir=$E2E/k8s-build/kube key out ld p minor
  key=kube-$K8S_VERSION-$(src_hash "$dir")
  out=$OUT/$key/kube
  if [ ! -x "$out" ]; then
    log "building Kubernetes $K8S_VERSION multi-call binary (cold: ~25-40 min on 2 shared cores)"
    minor=${K8S_VERSION#v1.}
    minor=${minor%%.*}
    ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
      ld="$ld -X $p.gitTreeState=clean -X $p.buildDate=2026-01-01T00:00:00Z"
    done
    mkdir -p "$OUT/$key"
    (cd "$dir" && timed "kube-$K8S_VERSION" "${NICE[@]}" go build -ldflags "$ld" -o "$out.tmp" .)
    mv "$out.tmp" "$out"
  else
    log "kube $K8S_VERSION cached ($out)"
  fi
  for p in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    link "$out" "$p"
  done
}

build_etcd() {
  local dir=$E2E/k8s-build/etcd key out
  key=etcd-$ETCD_VERSION-$(src_hash "$dir")
  out=$OUT/$key/etcd
  if [ ! -x "$out" ]; then
    log "building etcd $ETCD_VERSION"
    mkdir -p "$OUT/$key"
    (cd "$dir" && timed "etcd-$ETCD_VERSION" "${NICE[@]}" go build -ldflags "-s -w" -o "$out.tmp" .)
    mv "$out.tmp" "$out"
  else
    log "etcd $ETCD_VERSION cached"
  fi
  link "$out" etcd
}

# go_install KEY PKG@VERSION... : `go install` (no replace directives in these
# modules, so the checksum database pins them) into $OUT/KEY.
go_install() {
  local key=$1 ld=$2
  shift 2
  if [ ! -f "$OUT/$key/.done" ]; then
    log "go install $*"
    rm -rf "${OUT:?}/${key:?}"
    mkdir -p "$OUT/$key"
    GOBIN=$OUT/$key timed "$key" "${NICE[@]}" go install -ldflags "$ld" "$@"
    touch "$OUT/$key/.done"
  else
    log "$key cached"
  fi
}

build_containerd() {
  local key=containerd-$CONTAINERD_VERSION m=github.com/containerd/containerd/v2
  go_install "$key" "-s -w -X $m/version.Version=$CONTAINERD_VERSION" \
    "$m/cmd/containerd@$CONTAINERD_VERSION" \
    "$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "$m/cmd/ctr@$CONTAINERD_VERSION"
  link "$OUT/$key/containerd" containerd
  link "$OUT/$key/containerd-shim-runc-v2" containerd-shim-runc-v2
  link "$OUT/$key/ctr" ctr
}

# helm: the chart tier's client (lint, template, install/upgrade/test/uninstall).
build_helm() {
  local key=helm-$HELM_VERSION m=helm.sh/helm/v4
  go_install "$key" "-s -w -X $m/internal/version.version=$HELM_VERSION" "$m/cmd/helm@$HELM_VERSION"
  link "$OUT/$key/helm" helm
}

build_coredns() {
  local key=coredns-$COREDNS_VERSION
  go_install "$key" "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  link "$OUT/$key/coredns" coredns
}

# The pause binary: Kubernetes' own build/pause/linux/pause.c (shipped in the
# k8s.io/kubernetes module zip), linked statically.
build_pause() {
  local key=pause-$PAUSE_VERSION out src
  out=$OUT/$key/pause
  if [ ! -x "$out" ]; then
    src=$(cd "$E2E/k8s-build/kube" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
    [ -f "$src" ] || die "pause.c not found at $src"
    command -v gcc >/dev/null || die "gcc is needed for the static pause binary"
    mkdir -p "$OUT/$key"
    timed "$key" gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-sigil" -o "$out.tmp" "$src"
    mv "$out.tmp" "$out"
  else
    log "pause $PAUSE_VERSION cached"
  fi
  link "$out" pause
}

build_testapp() {
  local dir=$E2E/smoke/testapp key out
  key=testapp-$(src_hash "$dir")
  out=$OUT/$key/testapp
  if [ ! -x "$out" ]; then
    log "building smoke testapp"
    mkdir -p "$OUT/$key"
    (cd "$dir" && timed testapp "${NICE[@]}" go build -ldflags "-s -w" -o "$out.tmp" .)
    mv "$out.tmp" "$out"
  fi
  link "$out" testapp
}

# image NAME REF BINARY ENTRYPOINT...: docker-archive $IMAGES/NAME.tar holding
# BINARY at /ENTRYPOINT[0], rebuilt when the binary changes.
image() {
  local name=$1 ref=$2 bin=$3 rootfs stamp want
  shift 3
  stamp=$IMAGES/$name.tar.src
  want="$ref $(readlink -f "$bin") $(sha256sum < "$E2E/cluster/mkimage.sh" | cut -c1-12)"
  if [ -f "$IMAGES/$name.tar" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    log "image $ref cached"
    return
  fi
  rootfs=$(mktemp -d)
  install -D -m 0755 "$bin" "$rootfs$1"
  mkdir -p "$rootfs/etc" "$rootfs/tmp"
  printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n' > "$rootfs/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' > "$rootfs/etc/group"
  "$E2E/cluster/mkimage.sh" "$IMAGES/$name.tar" "$ref" "$rootfs" "$@" >&2
  rm -rf "$rootfs"
  echo "$want" > "$stamp"
}

total_start=$(date +%s)
log "cache: $CACHE"
if $only_images; then
  build_testapp
  image testapp "$TESTAPP_IMAGE" "$BIN/testapp" /testapp
  echo "$IMAGES"
  exit 0
fi
build_etcd
build_kube
build_helm
if ! $only_api; then
  ensure_debs
  build_containerd
  build_coredns
  build_pause
  build_testapp
  image pause "$PAUSE_IMAGE" "$BIN/pause" /pause
  image testapp "$TESTAPP_IMAGE" "$BIN/testapp" /testapp
  image coredns "$COREDNS_IMAGE" "$BIN/coredns" /coredns
fi
log "all parts ready in $(( $(date +%s) - total_start )) s; binaries in $BIN, images in $IMAGES"
echo "$BIN"
