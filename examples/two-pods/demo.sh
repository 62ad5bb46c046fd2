#!/usr/bin/env bash
# Two "pods" (network namespaces joined by a veth), each with its own Ambit ztunnel in dedicated mode and
# upstream ztunnel's redirect rule. `curl` in pod a reaches an HTTP server in pod b; on the wire between them
# there is only mTLS to port 15008. Run as root:  sudo examples/two-pods/demo.sh
# Leaves nothing behind (namespaces, processes, temp files) when it exits, even on Ctrl-C.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
A=ambit-demo-a
B=ambit-demo-b
work=$(mktemp -d /tmp/ambit-demo.XXXXXX)
pids=()

need() { command -v "$1" >/dev/null 2>&1 || { echo "demo: '$1' is missing (apt-get install $2)" >&2; exit 1; }; }
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }
need ip iproute2; need iptables iptables; need curl curl; need python3 python3

cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
ip netns del "$A" 2>/dev/null || true
ip netns del "$B" 2>/dev/null || true

bin=${AMBIT_ZTUNNEL_BIN:-}
if [ -z "$bin" ]; then
  echo "== building ztunnel (release)"
  (cd "$root" && cargo build --release -q -p ambit-ztunnel)
  bin="${CARGO_TARGET_DIR:-$root/target}/release/ztunnel"
fi

echo "== two pods: $A 10.66.0.2  <-veth->  $B 10.66.0.3"
ip netns add "$A"; ip netns add "$B"
ip link add veth-a netns "$A" type veth peer name veth-b netns "$B"
ip -n "$A" addr add 10.66.0.2/24 dev veth-a; ip -n "$B" addr add 10.66.0.3/24 dev veth-b
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set veth-a up; ip -n "$B" link set veth-b up

cat > "$work/mesh.yaml" <<YAML
workloads:
- {uid: Kubernetes//Pod/demo/client, name: client, namespace: demo, serviceAccount: client, trustDomain: cluster.local,
   clusterId: Kubernetes, workloadIps: [10.66.0.2], protocol: HBONE, canonicalName: client, workloadName: client}
- {uid: Kubernetes//Pod/demo/server, name: server, namespace: demo, serviceAccount: server, trustDomain: cluster.local,
   clusterId: Kubernetes, workloadIps: [10.66.0.3], protocol: HBONE, canonicalName: server, workloadName: server}
YAML

start_ztunnel() { # netns name
  local ns=$1 name=$2
  ip netns exec "$ns" env PROXY_MODE=dedicated PROXY_WORKLOAD_INFO="demo/$name/$name" XDS_ADDRESS= CA_ADDRESS= \
    LOCAL_XDS_PATH="$work/mesh.yaml" LOCAL_CA_DIR="$work/ca" PACKET_MARK=1337 RUST_LOG=info \
    "$bin" >"$work/ztunnel-$name.log" 2>&1 &
  pids+=($!)
  # upstream's dedicated-mode capture: the pod's outgoing TCP (not loopback, not ztunnel's own) goes to 15001
  ip netns exec "$ns" iptables -t nat -A OUTPUT -p tcp ! -o lo -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
}
start_ztunnel "$A" client
start_ztunnel "$B" server
ip netns exec "$B" python3 -m http.server 8080 --bind 10.66.0.3 --directory "$here" >"$work/http.log" 2>&1 &
pids+=($!)

for ns in "$A" "$B"; do
  for _ in $(seq 100); do
    ip netns exec "$ns" curl -sf http://127.0.0.1:15021/healthz/ready >/dev/null 2>&1 && break
    sleep 0.1
  done
done

for _ in $(seq 100); do  # the server answers locally (loopback is never captured)
  ip netns exec "$B" curl -sf http://10.66.0.3:8080/hello.txt >/dev/null 2>&1 && break
  sleep 0.1
done

echo "== curl in pod a -> http://10.66.0.3:8080/hello.txt (captured, tunnelled over HBONE)"
if ! ip netns exec "$A" curl -sS --max-time 5 http://10.66.0.3:8080/hello.txt; then
  echo "demo: the request failed; the ztunnels' logs:" >&2
  tail -n 20 "$work"/ztunnel-*.log "$work/http.log" >&2
  exit 1
fi
echo
echo "== pod b's ztunnel saw it (reporter=destination, mutual_tls):"
ip netns exec "$B" curl -s http://127.0.0.1:15020/metrics | grep '^istio_tcp_connections_opened_total{reporter="destination"' \
  | sed 's/,/,\n    /g' | grep -E 'reporter|source_principal|destination_workload=|connection_security_policy|}'
echo
echo "== access log of pod b's ztunnel:"
grep -h 'connection complete' "$work/ztunnel-server.log" | tail -n 1
