#!/usr/bin/env bash
# L4 benchmark: direct vs through a pair of Ambit ztunnels (release build), measured in the same run; with
# `--compare <upstream ztunnel binary>` also the upstream binary's pair, alternating with Ambit's round by round,
# and Ambit/upstream ratios per figure (per round and the median).
#   sudo scripts/bench.sh [ambit-bench args, e.g. --duration 10 --rounds 5 --compare /path/to/upstream/ztunnel]
# The upstream binary must be built with its `testing` feature (FAKE_CA); this script does not build it.
# Results: a table on stdout and target/bench/l4-<time>.{json,md} (l4-latest.* too).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root (network namespaces, iptables)" >&2; exit 1; }
for tool in ip iptables curl iperf3 wrk ss; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench.sh: '$tool' missing (apt-get install iproute2 iptables curl iperf3 wrk)" >&2; exit 1; }
done
command -v haproxy >/dev/null 2>&1 || echo "bench.sh: no haproxy: the 'relay' reference is skipped (apt-get install haproxy)" >&2

# --compare goes through to ambit-bench with the other arguments; check its binary before the build.
compare=""
prev=""
for arg in "$@"; do
  [ "$prev" = "--compare" ] && compare=$arg
  prev=$arg
done
if [ -n "$compare" ]; then
  [ -x "$compare" ] || { echo "bench.sh: --compare $compare: not an executable" >&2; exit 1; }
else
  echo "bench.sh: NO UPSTREAM BINARY GIVEN (--compare PATH): Ambit is measured against direct only" >&2
fi

echo "== building (release): ztunnel, ambit-bench, e2e-http"
cargo build --release -p ambit-ztunnel --bin ztunnel -p ambit-e2e --bin ambit-bench --bin e2e-http
target=${CARGO_TARGET_DIR:-$root/target}

echo "== running"
exec "$target/release/ambit-bench" --ztunnel "${AMBIT_ZTUNNEL_BIN:-$target/release/ztunnel}" \
  --http "$target/release/e2e-http" --out "$target/bench" "$@"
