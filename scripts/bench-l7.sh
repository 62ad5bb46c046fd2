#!/usr/bin/env bash
# L7 benchmark: direct, ztunnel pair (l4), ztunnel -> Ambit waypoint -> ztunnel (l7), ztunnel -> waypoint -> plain
# server (waypoint-plain), and nginx / HAProxy as plain HTTP reverse proxies in the waypoint's place (release build).
#   sudo scripts/bench-l7.sh [--install] [ambit-bench-l7 args, e.g. --rounds 3 --duration 8 --connections 8,64]
# --install first runs `apt-get install -y wrk nginx-light haproxy` (run `apt-get update` once before if needed).
# Results: a table on stdout and target/bench/l7-<time>.{json,md} (l7-latest.* too).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ "$(id -u)" = 0 ] || { echo "bench-l7.sh: run as root (network namespaces, iptables)" >&2; exit 1; }
if [ "${1:-}" = --install ]; then
  shift
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk nginx-light haproxy linux-perf
fi
for tool in ip iptables curl wrk ss; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench-l7.sh: '$tool' missing (apt-get install iproute2 iptables curl wrk)" >&2; exit 1; }
done
command -v nginx >/dev/null 2>&1 || echo "bench-l7.sh: no nginx: the 'nginx' mode is skipped (apt-get install nginx-light, or --install)" >&2
command -v haproxy >/dev/null 2>&1 || echo "bench-l7.sh: no haproxy: the 'haproxy' mode is skipped (apt-get install haproxy, or --install)" >&2
command -v perf >/dev/null 2>&1 || echo "bench-l7.sh: no perf: only schedstat CPU counts (apt-get install linux-perf)" >&2

echo "== building (release): ztunnel, waypoint, ambit-bench-l7, e2e-http"
cargo build --release -p ambit-ztunnel -p ambit-waypoint -p ambit-e2e --bins
target=${CARGO_TARGET_DIR:-$root/target}

echo "== running"
exec "$target/release/ambit-bench-l7" --ztunnel "${AMBIT_ZTUNNEL_BIN:-$target/release/ztunnel}" \
  --waypoint "${AMBIT_WAYPOINT_BIN:-$target/release/waypoint}" \
  --http "$target/release/e2e-http" --out "$target/bench" "$@"
