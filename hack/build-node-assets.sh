#!/usr/bin/env bash
# Builds the rest of a Kubernetes node beside the envtest assets, for `make e2e`'s single-node
# cluster: kube-controller-manager, kube-scheduler, kubelet and kube-proxy of the same release,
# from the Go module proxy (no release page is reachable here). Cached per version in the user's
# cache directory like the envtest assets, and linked into the directory given as $1.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-1.37.2}
dest=${1:?usage: build-node-assets.sh DEST_DIR}

cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/cmk-operator/node
cache=$cache_root/kube-${KUBE_VERSION}-$(go env GOOS)-$(go env GOARCH)

log() { printf 'node-assets: %s\n' "$*" >&2; }
# shellcheck source=hack/k8s-build.sh
. "$(dirname "${BASH_SOURCE[0]}")/k8s-build.sh"

mkdir -p "$cache" "$dest"
# kube-proxy last: its link is what make takes for all four being there.
for cmd in kube-controller-manager kube-scheduler kubelet kube-proxy; do
  if [ ! -x "$cache/$cmd" ]; then
    log "building $cmd v${KUBE_VERSION} from the Go module proxy"
    build_kubernetes_cmd "cmd/$cmd" "$cache/$cmd.tmp"
    mv "$cache/$cmd.tmp" "$cache/$cmd"
  fi
  ln -sfn "$cache/$cmd" "$dest/$cmd"
done
log "ready in $dest ($cache)"
