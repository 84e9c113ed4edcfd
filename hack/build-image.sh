#!/usr/bin/env bash
# Builds the manager image without a container engine: a docker-archive tarball of one
# FROM-scratch layer (the static manager, the build machine's CA bundle for HTTPS to a cloud KMS,
# and passwd/group entries for the non-root user 65532), loadable with `ctr images import`,
# `docker load`, `podman load` and `kind load image-archive`.
#
#   hack/build-image.sh OUTPUT.tar IMAGE[:TAG] [PACKAGE [USER]]
#
# PACKAGE (default: the manager, ".") is the Go main package to build, run as /NAME (the
# package's last element; /manager for "."), as USER (default 65532:65532). make e2e builds
# its sandbox image from ./hack/pause this way.
#
# The same sources give the same tarball, byte for byte: files have fixed owners, modes and
# times, and the binary is built with -trimpath.
set -euo pipefail

out=${1:?usage: build-image.sh OUTPUT.tar IMAGE[:TAG] [PACKAGE [USER]]}
tag=${2:?usage: build-image.sh OUTPUT.tar IMAGE[:TAG]}
pkg=${3:-.}
user=${4:-65532:65532}
name=manager
[ "$pkg" = . ] || name=$(basename "$pkg")
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
go=${GO:-go}
arch=${GOARCH:-$("$go" env GOARCH)}
cabundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if [ ! -s "$cabundle" ]; then
  echo "build-image.sh: no CA bundle at $cabundle (apt-get install ca-certificates, or set CA_BUNDLE)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 022
rootfs=$work/rootfs image=$work/image
mkdir -p "$rootfs/etc/ssl/certs" "$image"

CGO_ENABLED=0 GOOS=linux GOARCH=$arch "$go" build -C "$root" -trimpath -ldflags "-s -w" -o "$rootfs/$name" "$pkg"
cp "$cabundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
chmod 0755 "$rootfs/$name"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/ssl/certs/ca-certificates.crt"

det=(--sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu)
tar "${det[@]}" -C "$rootfs" -cf "$work/layer.tar" etc "$name"
layer=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir "$image/$layer"
mv "$work/layer.tar" "$image/$layer/layer.tar"

# The image config (OCI image spec, config.json): who runs what, and the layer's digest.
config=$(printf '{"architecture":"%s","os":"linux","config":{"User":"%s","Entrypoint":["/%s"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"hack/build-image.sh"}]}' "$arch" "$user" "$name" "$layer")
digest=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
printf '%s' "$config" >"$image/$digest.json"
# docker-archive's manifest.json, as `docker save` writes it.
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$digest" "$tag" "$layer" >"$image/manifest.json"
chmod -R a+rX,go-w "$image"

mkdir -p "$(dirname "$out")"
tar "${det[@]}" -C "$image" -cf "$out.tmp" manifest.json "$digest.json" "$layer"
mv "$out.tmp" "$out"
echo "$out: $tag (config sha256:$digest)"
