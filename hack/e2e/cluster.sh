#!/usr/bin/env bash
# A real single-node Kubernetes cluster for make e2e: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd, kubelet and kube-proxy on this machine,
# running actual pods, built from the Go module proxy and Debian packages (no Docker engine, no
# registry, no release downloads). The settings without which nothing starts here are marked
# where they are made.
#
#   hack/e2e/cluster.sh up     start it; the admin kubeconfig is $STATE/kubeconfig
#   hack/e2e/cluster.sh load   import image tarballs (arguments) into the node's containerd
#   hack/e2e/cluster.sh down   stop it and remove everything it made
#   hack/e2e/cluster.sh verify-clean   fail, listing them, if a cluster left anything behind
#
# Needs root and the binaries of `make envtest-assets node-assets` (bin/k8s, bin/node); installs
# the Debian packages it needs (containerd, runc, CNI plugins, iptables) when they are missing.
# One cluster per machine: ports, the bridge and iptables chains are fixed. up refuses a host
# that has another cluster's traces (ports, KUBE-/CNI- chains, kubepods cgroups), so that down
# never removes anything that is not its own.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${CMK_E2E_STATE:-/var/lib/cmk-e2e}
K8S=${K8S:-$root/bin/k8s}
NODE=${NODE:-$root/bin/node}
PAUSE_IMAGE=docker.io/cmk-e2e/pause:1
node=cmk-e2e
bridge=cmk-e2e0
pod_cidr=10.244.0.0/24
service_cidr=10.96.0.0/16
api_port=6443

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: the kubelet, containerd and kube-proxy need it"

packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v openssl >/dev/null || missing+=(openssl)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    # A machine whose package lists are missing or stale needs them fetched first.
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"$STATE/logs/apt.log" 2>&1 ||
      { apt-get update >>"$STATE/logs/apt.log" 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$STATE/logs/apt.log" 2>&1; } ||
      die "apt-get install ${missing[*]} failed: $STATE/logs/apt.log"
  fi
}

host_ip() { ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1; }

# pki makes a CA and the certificates every component presents, with openssl.
pki() {
  local d=$STATE/pki ip=$1
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=cmk-e2e-ca -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  cert() { # name CN O [SANs]
    local name=$1 cn=$2 o=$3 san=${4:-}
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$cn${o:+/O=$o}" -keyout "$d/$name.key" -out "$d/$name.csr" 2>/dev/null
    local ext=$d/$name.ext
    {
      echo "basicConstraints=CA:FALSE"
      echo "keyUsage=digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=serverAuth,clientAuth"
      [ -z "$san" ] || echo "subjectAltName=$san"
    } >"$ext"
    openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 2 -extfile "$ext" -out "$d/$name.crt" 2>/dev/null
  }
  cert apiserver kube-apiserver "" "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:localhost,DNS:$(hostname),IP:127.0.0.1,IP:$ip,IP:10.96.0.1"
  cert admin admin system:masters
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  cert kube-proxy system:kube-proxy ""
  cert kubelet "system:node:$node" system:nodes "DNS:$node,DNS:$(hostname),IP:127.0.0.1,IP:$ip"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

kubeconfig() { # name -> $STATE/name.kubeconfig
  local name=$1 ip=$2
  cat >"$STATE/$name.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: cmk-e2e, cluster: {server: "https://$ip:$api_port", certificate-authority: "$STATE/pki/ca.crt"}}]
users: [{name: $name, user: {client-certificate: "$STATE/pki/$name.crt", client-key: "$STATE/pki/$name.key"}}]
contexts: [{name: cmk-e2e, context: {cluster: cmk-e2e, user: $name}}]
current-context: cmk-e2e
KC
}

start() { # name command... ; records the PID, logs to $STATE/logs/name.log
  local name=$1
  shift
  "$@" >"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$STATE/pids/$name"
}

wait_for() { # description seconds command...
  local what=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what did not come up within ${secs}s; logs in $STATE/logs"
}

# Host settings the kubelet and kube-proxy change, saved by up and restored by down.
sysctls=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait)
# Host directories the runtime and the kubelet write to outside $STATE, removed by down if up
# found them absent.
host_dirs=(/run/containerd /var/log/pods /var/log/containers /var/lib/cni /opt/containerd)

# foreign says what on this host would make a cluster here unsafe to start, or to tear down.
foreign() {
  local port
  for port in "$api_port" 2479 2480 10346 10348 10349 10350 10357 10359; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "port $port is in use"; return; fi
  done
  if iptables-save 2>/dev/null | grep -qE '^:(KUBE|CNI)-' || ip6tables-save 2>/dev/null | grep -qE '^:(KUBE|CNI)-'; then
    echo "iptables has KUBE- or CNI- chains (another kube-proxy or CNI runs here)"; return
  fi
  if [ -n "$(find /sys/fs/cgroup -name 'kubepods*' -print -quit 2>/dev/null)" ]; then
    echo "there are kubepods cgroups (this host is already a Kubernetes node)"; return
  fi
  if ip link show "$bridge" >/dev/null 2>&1; then echo "the bridge $bridge exists"; fi
}

up() {
  [ ! -e "$STATE" ] || die "$STATE exists: a cluster is up, or a run was killed (hack/e2e/cluster.sh down first)"
  local why
  why=$(foreign)
  [ -z "$why" ] || die "not starting: $why"
  mkdir -p "$STATE"/{logs,pids,etcd,containerd/root,containerd/state,cni/net.d,kubelet,pod-logs}
  # What down may undo: written before anything is changed, so that a failed up is torn down
  # as far as it went and the host's own state is never taken for the cluster's.
  echo "made by hack/e2e/cluster.sh" >"$STATE/cluster"
  local s d
  for s in "${sysctls[@]}"; do
    [ -e "/proc/sys/${s//.//}" ] && echo "$s=$(sysctl -n "$s")" >>"$STATE/sysctl.saved"
  done
  for d in "${host_dirs[@]}"; do [ -e "$d" ] || echo "$d" >>"$STATE/dirs.ours"; done
  ip netns list 2>/dev/null | awk '{print $1}' >"$STATE/netns.before"
  packages
  for b in "$K8S/kube-apiserver" "$K8S/etcd" "$NODE/kubelet" "$NODE/kube-proxy" "$NODE/kube-controller-manager" "$NODE/kube-scheduler"; do
    [ -x "$b" ] || die "no $b: make envtest-assets node-assets"
  done
  local ip
  ip=$(host_ip)
  [ -n "$ip" ] || die "no IPv4 address with a default route"
  log "node $node at $ip, state in $STATE"
  pki "$ip"
  for c in admin controller-manager scheduler kube-proxy kubelet; do kubeconfig "$c" "$ip"; done
  cp "$STATE/admin.kubeconfig" "$STATE/kubeconfig"

  # Pods reach Services through kube-proxy's rules: forwarding on, bridged traffic through
  # iptables (restored by down).
  sysctl -qw net.ipv4.ip_forward=1
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null || true
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 || die "no net.bridge.bridge-nf-call-iptables: the br_netfilter module is needed"

  start etcd "$K8S/etcd" --data-dir "$STATE/etcd" --listen-client-urls http://127.0.0.1:2479 \
    --advertise-client-urls http://127.0.0.1:2479 --listen-peer-urls http://127.0.0.1:2480
  wait_for etcd 30 curl -sf http://127.0.0.1:2479/health

  start kube-apiserver "$K8S/kube-apiserver" --etcd-servers http://127.0.0.1:2479 --advertise-address "$ip" \
    --secure-port "$api_port" --tls-cert-file "$STATE/pki/apiserver.crt" --tls-private-key-file "$STATE/pki/apiserver.key" \
    --client-ca-file "$STATE/pki/ca.crt" --service-cluster-ip-range "$service_cidr" \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$STATE/pki/sa.pub" \
    --service-account-signing-key-file "$STATE/pki/sa.key" --authorization-mode Node,RBAC --allow-privileged=false \
    --kubelet-client-certificate "$STATE/pki/apiserver-kubelet-client.crt" --kubelet-client-key "$STATE/pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP,Hostname
  wait_for kube-apiserver 60 "$K8S/kubectl" --kubeconfig "$STATE/kubeconfig" get --raw /readyz

  start kube-controller-manager "$NODE/kube-controller-manager" --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --service-account-private-key-file "$STATE/pki/sa.key" --root-ca-file "$STATE/pki/ca.crt" \
    --cluster-signing-cert-file "$STATE/pki/ca.crt" --cluster-signing-key-file "$STATE/pki/ca.key" \
    --use-service-account-credentials --leader-elect=false --bind-address 127.0.0.1 --secure-port 10357
  start kube-scheduler "$NODE/kube-scheduler" --kubeconfig "$STATE/scheduler.kubeconfig" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port 10359

  # containerd with its CRI plugin: its own socket and directories, cgroupfs, the local pause
  # image, and restrict_oom_score_adj: root on these machines lacks CAP_SYS_RESOURCE, so runc
  # cannot lower oom_score_adj, and without it every sandbox fails to start.
  cat >"$STATE/containerd/config.toml" <<TOML
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$STATE/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = false
    Root = "$STATE/containerd/runc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
TOML
  cat >"$STATE/cni/net.d/10-cmk-e2e.conflist" <<CNI
{"cniVersion": "0.4.0", "name": "cmk-e2e", "plugins": [
  {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$STATE/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
CNI
  start containerd containerd --config "$STATE/containerd/config.toml"
  wait_for containerd 30 ctr --address "$STATE/containerd/containerd.sock" version
  "$root/hack/build-image.sh" "$STATE/pause.tar" "$PAUSE_IMAGE" ./hack/pause 65535:65535 >/dev/null
  images "$STATE/pause.tar"

  cat >"$STATE/kubelet/config.yaml" <<KUBELET
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false # these machines have cgroup v1, which the kubelet refuses by default
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$STATE/containerd/containerd.sock
authentication:
  x509: {clientCAFile: "$STATE/pki/ca.crt"}
  webhook: {enabled: true}
  anonymous: {enabled: false}
authorization: {mode: Webhook}
tlsCertFile: "$STATE/pki/kubelet.crt"
tlsPrivateKeyFile: "$STATE/pki/kubelet.key"
failSwapOn: false
port: 10350
healthzPort: 10348
evictionHard: {memory.available: "1%", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
serializeImagePulls: false
podLogsDir: "$STATE/pod-logs"
KUBELET
  start kubelet "$NODE/kubelet" --config "$STATE/kubelet/config.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --root-dir "$STATE/kubelet" --hostname-override "$node" --node-ip "$ip"
  start kube-proxy "$NODE/kube-proxy" --kubeconfig "$STATE/kube-proxy.kubeconfig" --hostname-override "$node" \
    --cluster-cidr "$pod_cidr" --proxy-mode iptables --conntrack-max-per-core 0 --metrics-bind-address 127.0.0.1:10349 \
    --healthz-bind-address 127.0.0.1:10346
  wait_for "node $node" 120 "$K8S/kubectl" --kubeconfig "$STATE/kubeconfig" wait --for=condition=Ready "node/$node" --timeout=1s
  # Pods are refused until the controller-manager has made their namespace's ServiceAccount.
  wait_for "service accounts" 60 "$K8S/kubectl" --kubeconfig "$STATE/kubeconfig" get serviceaccount default
  log "up: export KUBECONFIG=$STATE/kubeconfig"
}

# images imports docker-archive tarballs into the node's containerd, where the kubelet finds them.
images() {
  local t
  for t in "$@"; do
    ctr --address "$STATE/containerd/containerd.sock" -n k8s.io images import "$t" >>"$STATE/logs/images.log" 2>&1 ||
      die "importing $t failed: $STATE/logs/images.log"
  done
}

down() {
  [ -d "$STATE" ] || return 0
  [ -f "$STATE/cluster" ] || die "$STATE was not made by hack/e2e/cluster.sh up: not touching it"
  local kc=$STATE/kubeconfig
  # Pods first, so the kubelet tears down their containers, networking and mounts: their API
  # objects go at once, and the kubelet is given 30 s to stop what ran them.
  if [ -f "$STATE/pids/kubelet" ] && ours "$(cat "$STATE/pids/kubelet")"; then
    "$K8S/kubectl" --kubeconfig "$kc" delete deployments,daemonsets,statefulsets,jobs -A --all --wait=false >/dev/null 2>&1 || true
    "$K8S/kubectl" --kubeconfig "$kc" delete pods -A --all --force --grace-period=0 --timeout=30s >/dev/null 2>&1 || true
    for _ in $(seq 150); do
      [ -z "$(ctr --address "$STATE/containerd/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  local name pid
  for name in kube-proxy kubelet kube-scheduler kube-controller-manager containerd kube-apiserver etcd; do
    [ -f "$STATE/pids/$name" ] || continue
    pid=$(cat "$STATE/pids/$name")
    ours "$pid" || continue # gone, and the PID perhaps someone else's now
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do ours "$pid" || break; sleep 0.2; done
    ours "$pid" && kill -KILL "$pid" 2>/dev/null || true
  done
  # containerd's shims outlive it; theirs name $STATE in their command line.
  for pid in $(pgrep -f "containerd-shim" || true); do
    ours "$pid" && kill -KILL "$pid" 2>/dev/null || true
  done
  # Mounts under the state directory, deepest first.
  awk -v s="$STATE/" 'index($2, s) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  if [ -f "$STATE/netns.before" ]; then
    # What the kubelet did not stop: processes left in the pods' cgroups (a sandbox whose shim
    # was killed), then the cgroups; up refused a host that had any. And the pods' network
    # namespaces: those that were not there before up.
    local procs
    for procs in $(find /sys/fs/cgroup -path '*kubepods*' -name cgroup.procs 2>/dev/null); do
      for pid in $(cat "$procs" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    sleep 0.5
    find /sys/fs/cgroup -depth -type d -path '*kubepods*' -exec rmdir {} \; 2>/dev/null || true
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
      grep -qx "$ns" "$STATE/netns.before" || ip netns delete "$ns" 2>/dev/null || true
    done
    ip link delete "$bridge" 2>/dev/null || true
    # kube-proxy's KUBE- chains and the CNI plugins' CNI- chains, in both families, with every
    # rule in or to them; up refused a host that had any.
    local family table
    for family in iptables ip6tables; do
      for table in filter nat mangle raw; do
        "$family-save" -t "$table" 2>/dev/null | grep -qE '(KUBE|CNI)-' || continue
        "$family-save" -t "$table" | grep -vE '^:(KUBE|CNI)-|^-A .*(KUBE|CNI)-' | "$family-restore" -T "$table" ||
          log "could not remove the KUBE-/CNI- rules of $family $table"
      done
    done
  fi
  rm -f /var/lib/cni/results/cmk-e2e-* 2>/dev/null || true
  if [ -f "$STATE/dirs.ours" ]; then
    while IFS= read -r d; do rm -rf "$d"; done <"$STATE/dirs.ours"
  fi
  if [ -f "$STATE/sysctl.saved" ]; then
    while IFS= read -r kv; do sysctl -qw "$kv" || true; done <"$STATE/sysctl.saved"
  fi
  rm -rf "$STATE"
  log "down: nothing left in $STATE"
}

# ours reports whether pid is a live process of this cluster: every component names $STATE in
# its command line, so a PID recorded by a run long gone is never taken for someone else's.
ours() { [ -n "$1" ] && grep -qsF "$STATE/" "/proc/$1/cmdline"; }

# leftovers lists what a cluster left on the host; nothing when down was complete.
leftovers() {
  local pid
  for pid in $(pgrep -f "$STATE/" || true); do [ "$pid" = $$ ] || echo "process $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"; done
  [ ! -e "$STATE" ] || echo "$STATE"
  awk -v s="$STATE/" 'index($2, s) == 1 {print "mount " $2}' /proc/mounts
  ! ip link show "$bridge" >/dev/null 2>&1 || echo "bridge $bridge"
  iptables-save 2>/dev/null | grep -E '^:(KUBE|CNI)-' | sed 's/^/iptables chain /'
  ip6tables-save 2>/dev/null | grep -E '^:(KUBE|CNI)-' | sed 's/^/ip6tables chain /'
  find /sys/fs/cgroup -name 'kubepods*' 2>/dev/null | sed 's/^/cgroup /'
  ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print "netns " $1}'
}
case ${1:-} in
up) up ;;
load)
  shift
  images "$@"
  ;;
down) down ;;
verify-clean)
  left=$(leftovers)
  [ -z "$left" ] || die "teardown left behind:
$left"
  ;;
*) die "usage: cluster.sh up|load TARBALL...|down|verify-clean" ;;
esac
