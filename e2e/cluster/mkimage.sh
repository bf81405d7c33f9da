#!/usr/bin/env bash
# mkimage.sh OUT.tar IMAGE_REF ROOTFS_DIR ENTRYPOINT...
#
# Writes a docker-archive (the `docker save` layout: manifest.json, an image
# config and one layer tar) holding ROOTFS_DIR as its single layer, tagged
# IMAGE_REF (use a full reference such as docker.io/library/app:1). No daemon,
# no registry: `ctr -n k8s.io images import OUT.tar` and `kind load
# image-archive OUT.tar` both read it. The archive is reproducible (sorted,
# mtime 0, root-owned). MKIMAGE_USER=uid:gid sets the image's default user.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 OUT.tar IMAGE_REF ROOTFS_DIR ENTRYPOINT..." >&2
  exit 2
fi
out=$1 ref=$2 rootfs=$3
shift 3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# shellcheck disable=SC2054 # the commas belong to --pax-option
tar_flags=(--sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)
tar "${tar_flags[@]}" -C "$rootfs" -cf "$work/layer.tar" .
layer_sha=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir "$work/$layer_sha"
mv "$work/layer.tar" "$work/$layer_sha/layer.tar"

entrypoint=$(printf '"%s",' "$@")
entrypoint="[${entrypoint%,}]"
user=""
[ -n "${MKIMAGE_USER:-}" ] && user="\"User\":\"$MKIMAGE_USER\","
printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{%s"Entrypoint":%s,"Env":["PATH=/usr/local/bin:/usr/bin:/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"e2e/cluster/mkimage.sh"}]}' \
  "$user" "$entrypoint" "$layer_sha" > "$work/config.json"
config_sha=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/$config_sha.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
  "$config_sha" "$ref" "$layer_sha" > "$work/manifest.json"
tar "${tar_flags[@]}" -C "$work" -cf "$out.tmp" manifest.json "$config_sha.json" "$layer_sha"
mv "$out.tmp" "$out"
echo "image $ref -> $out ($(du -h "$out" | cut -f1))"
