#!/usr/bin/env bash
# Builds the control-plane binaries envtest needs (kube-apiserver, etcd) from the Go module proxy,
# because setup-envtest downloads release archives and these machines reach no release page.
# Binaries are cached per version in the user's cache directory, so fresh clones and CI reuse them,
# and linked with the machine's kubectl into the directory given as $1 (the Makefile uses bin/k8s).
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
dest=${1:?usage: build-envtest-assets.sh DEST_DIR}

goos=$(go env GOOS)
goarch=$(go env GOARCH)
cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/cmk-operator/envtest
cache=$cache_root/kube-${KUBE_VERSION}-etcd-${ETCD_VERSION}-${goos}-${goarch}

log() { printf 'envtest-assets: %s\n' "$*" >&2; }

# shellcheck source=hack/k8s-build.sh
. "$(dirname "${BASH_SOURCE[0]}")/k8s-build.sh"

mkdir -p "$cache"
if [ ! -x "$cache/kube-apiserver" ]; then
  log "building kube-apiserver v${KUBE_VERSION} from the Go module proxy (a few minutes the first time)"
  build_kubernetes_cmd cmd/kube-apiserver "$cache/kube-apiserver.tmp"
  mv "$cache/kube-apiserver.tmp" "$cache/kube-apiserver"
fi
if [ ! -x "$cache/etcd" ]; then
  log "building etcd v${ETCD_VERSION} from the Go module proxy"
  build_etcd "$cache/etcd.tmp"
  mv "$cache/etcd.tmp" "$cache/etcd"
fi

# The machine's kubectl is used as it is; where there is none, one of the same release as the
# apiserver is built the same way.
kubectl_bin=$(command -v kubectl || true)
if [ -z "$kubectl_bin" ]; then
  kubectl_bin=$cache/kubectl
  if [ ! -x "$kubectl_bin" ]; then
    log "no kubectl on PATH: building kubectl v${KUBE_VERSION} from the Go module proxy"
    build_kubernetes_cmd cmd/kubectl "$cache/kubectl.tmp"
    mv "$cache/kubectl.tmp" "$kubectl_bin"
  fi
fi

mkdir -p "$dest"
ln -sfn "$cache/kube-apiserver" "$dest/kube-apiserver"
ln -sfn "$cache/etcd" "$dest/etcd"
ln -sfn "$kubectl_bin" "$dest/kubectl"
log "ready in $dest ($cache)"
