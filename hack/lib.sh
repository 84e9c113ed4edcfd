# Shared by dev.sh and demo.sh: start a local control plane and the manager, stop them on exit.
# Source it after setting WORKDIR (where the kubeconfig and logs go).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KUBECTL="$ROOT/bin/k8s/kubectl"
pids=()

cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_control_plane() {
  mkdir -p "$WORKDIR"
  rm -f "$WORKDIR/kubeconfig"
  "$ROOT/bin/controlplane" --write-kubeconfig "$WORKDIR/kubeconfig" --assets "$ROOT/bin/k8s" \
    --crds "$ROOT/config/crd/bases" >"$WORKDIR/controlplane.log" 2>&1 &
  pids+=($!)
  local i
  for i in $(seq 120); do
    [ -f "$WORKDIR/kubeconfig" ] && break
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then
      echo "The control plane did not start:" >&2
      cat "$WORKDIR/controlplane.log" >&2
      exit 1
    fi
    sleep 0.5
  done
  [ -f "$WORKDIR/kubeconfig" ] || { echo "The control plane did not start within 60s" >&2; cat "$WORKDIR/controlplane.log" >&2; exit 1; }
  export KUBECONFIG="$WORKDIR/kubeconfig"
}

# start_manager runs the manager in the background, logging to $WORKDIR/manager.log.
start_manager() {
  "$ROOT/bin/manager" --kms-namespace=cmk-system --health-probe-bind-address=0 "$@" >"$WORKDIR/manager.log" 2>&1 &
  pids+=($!)
}
