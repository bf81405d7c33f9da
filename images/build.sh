#!/usr/bin/env bash
# images/build.sh [--out DIR] [--profile release|debug] [--tag TAG] [--prefix REPO_PREFIX] [--only NAME]
#
# Builds the four Sigil images, and the spiffe-demo example's (examples/spiffe-demo), from source with no Docker engine and no registry: one docker-archive per
# image (the `docker save` layout, see e2e/cluster/mkimage.sh), loadable with
#   ctr -n k8s.io images import OUT/sigil-server.tar      (containerd)
#   kind load image-archive OUT/sigil-server.tar          (kind)
#   docker load -i OUT/sigil-server.tar                   (Docker)
# Default names are what the chart's default values resolve to: docker.io/library/sigil-<name>:<version>
# (`sigil-server:0.1.0` as containerd and Docker spell it). With a registry: --prefix registry.example/sigil/
# then push the archives with skopeo/crane, and set image.registry/repository in the chart.
#
# What is in an image: the stripped binary and the shared libraries it links (glibc's loader, libc, libm,
# libgcc_s; from this machine's Debian 12), /etc/passwd and /etc/group naming root and the non-root user
# 65532 ("nonroot", as distroless does), an empty /tmp. No shell, no package manager. Reproducible: the
# archive depends only on the binary and those files (sorted tar, mtime 0, root-owned), so rebuilding the
# same commit with the same toolchain gives the same digest (printed).
#
# Default users: server, operator and spiffe-demo run as 65532 (non-root). The agent runs as uid 0 with no
# capabilities (it reads other pods' /proc/<pid> entries and owns the hostPath socket directory the CSI
# driver mounts); the CSI driver as root, privileged (mount propagation into /var/lib/kubelet/pods).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$REPO/target/images
profile=release
tag=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -1)
prefix=docker.io/library/
only=""
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "images/build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $profile in release|debug) ;; *) echo "images/build.sh: --profile is release or debug" >&2; exit 2 ;; esac
log() { echo "[images $(date -u +%H:%M:%S)] $*" >&2; }

# name package binary user
IMAGES=(
  "server sigil-server sigil-server 65532:65532"
  "agent sigil-agent sigil-agent 0:0"
  "operator sigil-operator sigil-operator 65532:65532"
  "csi-driver sigil-csi-driver sigil-csi-driver 0:0"
  "spiffe-demo spiffe-demo spiffe-demo 65532:65532"
)

cargo_flags=(--locked)
[ "$profile" = release ] && cargo_flags+=(--release)
for spec in "${IMAGES[@]}"; do
  read -r name pkg bin _ <<<"$spec"
  [ -n "$only" ] && [ "$only" != "$name" ] && continue
  cargo_flags+=(-p "$pkg" --bin "$bin")
done
log "cargo build ${cargo_flags[*]}"
(cd "$REPO" && cargo build -q "${cargo_flags[@]}")
target=${CARGO_TARGET_DIR:-$REPO/target}/$profile

mkdir -p "$out"
for spec in "${IMAGES[@]}"; do
  read -r name _ bin user <<<"$spec"
  [ -n "$only" ] && [ "$only" != "$name" ] && continue
  rootfs=$(mktemp -d)
  install -D -m 0755 "$target/$bin" "$rootfs/usr/local/bin/$bin"
  strip "$rootfs/usr/local/bin/$bin"
  # The loader and every library the binary links, at the same paths.
  for lib in $(ldd "$target/$bin" | grep -o '/[^ ]*' | sort -u); do
    install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
  mkdir -p "$rootfs/etc" "$rootfs/tmp"
  chmod 1777 "$rootfs/tmp"
  printf 'root:x:0:0:root:/:/nonexistent\nnonroot:x:65532:65532:nonroot:/:/nonexistent\n' > "$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
  ref=${prefix}sigil-$name:$tag
  MKIMAGE_USER=$user "$REPO/e2e/cluster/mkimage.sh" "$out/sigil-$name.tar" "$ref" "$rootfs" "/usr/local/bin/$bin" >/dev/null
  rm -rf "$rootfs"
  log "$ref -> $out/sigil-$name.tar ($(du -h "$out/sigil-$name.tar" | cut -f1), sha256 $(sha256sum "$out/sigil-$name.tar" | cut -c1-16), user $user)"
done
echo "$out"
