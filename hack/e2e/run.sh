#!/usr/bin/env bash
# make e2e: a real single-node cluster (hack/e2e/cluster.sh), the manager image loaded into it,
# the operator deployed exactly as docs/operations.md tells users (kubectl apply -k config/default), and
# the e2e suite (test/e2e, Go tests against the cluster's kubeconfig). The cluster is torn down
# whatever happens; on failure the component and pod logs are kept in $ARTIFACTS first.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export CMK_E2E_STATE=${CMK_E2E_STATE:-/var/lib/cmk-e2e}
STATE=$CMK_E2E_STATE
ARTIFACTS=${ARTIFACTS:-$root/bin/e2e-artifacts}
IMAGE_TAR=${IMAGE_TAR:-$root/bin/cmk-operator-image.tar}
kubectl=$root/bin/k8s/kubectl
cluster=$root/hack/e2e/cluster.sh

keep_artifacts() {
  mkdir -p "$ARTIFACTS"
  cp -r "$STATE/logs" "$ARTIFACTS/components" 2>/dev/null || true
  KUBECONFIG=$STATE/kubeconfig "$kubectl" get all,cmk,events -A -o wide >"$ARTIFACTS/objects.txt" 2>&1 || true
  local pod
  for pod in $(KUBECONFIG=$STATE/kubeconfig "$kubectl" get pods -A -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{"\n"}{end}' 2>/dev/null); do
    KUBECONFIG=$STATE/kubeconfig "$kubectl" logs -n "${pod%/*}" "${pod#*/}" --all-containers --previous >"$ARTIFACTS/${pod//\//_}.previous.log" 2>&1 || true
    KUBECONFIG=$STATE/kubeconfig "$kubectl" logs -n "${pod%/*}" "${pod#*/}" --all-containers >"$ARTIFACTS/${pod//\//_}.log" 2>&1 || true
  done
  echo "e2e: failed; logs kept in $ARTIFACTS" >&2
}

finish() {
  local rc=$?
  [ "$rc" = 0 ] || keep_artifacts
  "$cluster" down || rc=1
  "$cluster" verify-clean || rc=1
  exit "$rc"
}

[ "$(id -u)" = 0 ] || { echo "e2e: run as root: the cluster's kubelet, containerd and kube-proxy need it" >&2; exit 1; }
# One run at a time: a second would tear down the first one's cluster.
exec 9>/run/cmk-e2e.lock
flock -n 9 || { echo "e2e: another make e2e is running on this machine" >&2; exit 1; }
rm -rf "$ARTIFACTS"
"$cluster" down # a cluster left by a run that was killed
trap finish EXIT
trap 'exit 130' INT TERM # so that an interrupted run tears down too
start=$(date +%s)
"$cluster" up
"$cluster" load "$IMAGE_TAR"
export KUBECONFIG=$STATE/kubeconfig
"$kubectl" apply -k "$root/config/default"
"$kubectl" -n cmk-system rollout status deployment/cmk-operator --timeout=120s
echo "e2e: cluster up and the operator deployed in $(($(date +%s) - start)) s" >&2
(cd "$root" && go test -tags e2e ./test/e2e/ -count=1 -v -timeout 30m)
