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

# build_kubernetes_cmd builds one command of k8s.io/kubernetes (cmd/kube-apiserver, cmd/kubectl).
build_kubernetes_cmd() {
  local work cmd=$1 out=$2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  # k8s.io/kubernetes cannot be built with "go install pkg@version": its go.mod points every
  # staging module at ./staging. A throwaway module copies its requirements and maps each of
  # those replaces to the published staging module of the same release.
  local gomod
  gomod=$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v${KUBE_VERSION}" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [ -n "$gomod" ] || { log "could not download k8s.io/kubernetes@v${KUBE_VERSION}"; return 1; }
  {
    echo "module envtestbuild"
    echo
    sed -n '/^go /p' "$gomod"
    echo
    echo "require k8s.io/kubernetes v${KUBE_VERSION}"
    # Every require block and line, verbatim.
    awk '/^require \(/{p=1} p{print} /^\)/{if(p){print ""}; p=0} /^require [^(]/{print}' "$gomod"
    echo "replace ("
    sed -n "s#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 v0.${KUBE_VERSION#1.}#p" "$gomod"
    echo ")"
  } >"$work/go.mod"
  printf 'package tools\n\nimport _ "k8s.io/kubernetes/%s"\n' "$cmd" >"$work/tools.go"
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 || true)
  # Stamp the release, as the Kubernetes build does, so the binaries report v${KUBE_VERSION}.
  local minor=${KUBE_VERSION#*.}
  minor=${minor%%.*}
  local ldflags="-X k8s.io/component-base/version.gitVersion=v${KUBE_VERSION}"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor}"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=v${KUBE_VERSION}"
  (cd "$work" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out" "k8s.io/kubernetes/$cmd")
}

build_etcd() {
  local work out=$1
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  # The etcd server's main package is its module root, but its go.mod has replace directives,
  # which "go install pkg@version" refuses; a throwaway module that requires it builds it.
  printf 'module envtestbuild\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" >"$work/go.mod"
  printf 'package tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >"$work/tools.go"
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 || true)
  (cd "$work" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -o "$out" go.etcd.io/etcd/server/v3)
}

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
