#!/usr/bin/env bash
# make dev: a local control plane and the manager in the foreground, for trying the operator by
# hand from another shell. Ctrl-C stops both.
set -euo pipefail
WORKDIR=${WORKDIR:-$(cd "$(dirname "$0")/.." && pwd)/.dev}
. "$(dirname "$0")/lib.sh"

start_control_plane
cat <<MSG

Control plane is up, with the CustomerMasterKey CRD installed. From another shell:

    export KUBECONFIG=$KUBECONFIG
    kubectl apply -k config/samples/
    kubectl get cmk -o wide

The manager runs below with the embedded KMS (Ctrl-C stops everything).

MSG
"$ROOT/bin/manager" --kms-namespace=cmk-system --health-probe-bind-address=0 "$@" &
pids+=($!)
wait "${pids[-1]}"
