# Builds Kubernetes and etcd commands from the Go module proxy. Sourced by
# build-envtest-assets.sh and build-node-assets.sh, after they set KUBE_VERSION, ETCD_VERSION and
# a log function.

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

