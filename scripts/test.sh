#!/usr/bin/env bash
# THE test command: installs what a fresh Debian 12 machine lacks, then builds, lints and runs every test,
# including the network-namespace end-to-end tests (root). Exits non-zero on the first failure.
#
#   sudo scripts/test.sh
#
# Environment: CARGO_TARGET_DIR is honoured; AMBIT_TEST_SKIP_APT=1 skips the package step;
# AMBIT_TEST_NO_ROOT=1 lets a non-root user run everything but the package step and the e2e tests.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

started=$(date +%s)
section_start=$started
current="setup"
section() {
  local now
  now=$(date +%s)
  [ "$current" = setup ] || printf -- '---- %s: ok (%ss)\n' "$current" "$((now - section_start))"
  section_start=$now
  current="$*"
  printf '\n==================== %s ====================\n' "$current"
}
fail() { printf '\ntest.sh: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || printf "\ntest.sh: FAILED (exit %s) in: %s\n" "$rc" "$current" >&2' EXIT

is_root=0
[ "$(id -u)" = 0 ] && is_root=1
if [ $is_root = 0 ] && [ "${AMBIT_TEST_NO_ROOT:-}" != 1 ]; then
  fail "run as root (apt-get, network namespaces): sudo scripts/test.sh   (or AMBIT_TEST_NO_ROOT=1 to skip those parts)"
fi

# ---------------------------------------------------------------------------------------------------------------
section "system packages"
# Tools of the e2e tests and the benchmark (with the Python gRPC and WebSocket clients), plus the C toolchain for the BoringSSL backend (cmake; libclang for bindgen).
packages=(ca-certificates build-essential pkg-config git cmake libclang-dev
          iptables nftables iproute2 iputils-ping netcat-openbsd curl iperf3 wrk nghttp2-client tcpdump tshark
          procps util-linux openssl python3-grpcio python3-websockets prometheus
          buildah debootstrap python3-venv containernetworking-plugins)
# buildah + debootstrap: the image test (scripts/image-test.sh builds the Containerfile on a debootstrapped base);
# python3-venv: the Helm chart tests (scripts/helm/test.sh installs Helm's library and kubernetes-validate from PyPI);
# containernetworking-plugins: the CNI plugin chained after the real bridge + host-local (cni/tests/plugin.rs).
# The embedded API server's kubectl test (apiserver/tests/api/kubectl.rs): Debian's kubectl, unless one is installed.
command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
if [ "${AMBIT_TEST_SKIP_APT:-}" = 1 ] || [ $is_root = 0 ]; then
  echo "skipped (${AMBIT_TEST_SKIP_APT:+AMBIT_TEST_SKIP_APT=1}${AMBIT_TEST_SKIP_APT:-not root})"
elif ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get: install these yourself: ${packages[*]}"
else
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "all present"
  else
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] || {
    echo "no cargo: installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy
  }
  export PATH="$HOME/.cargo/bin:$PATH"
fi
cargo --version
rustc --version

# ---------------------------------------------------------------------------------------------------------------
section "build (cargo build --workspace --all-targets)"
cargo build --workspace --all-targets

section "lint (cargo clippy --workspace --all-targets -- -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

section "docs (cargo doc --workspace --no-deps, warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

section "unit and integration tests (cargo test --workspace, e2e excluded)"
cargo test --workspace --exclude ambit-e2e

section "TLS backend parity (core TLS/HBONE tests and whole-ztunnel tunnel test with BoringSSL)"
cargo test -p ambit-core --features tls-boring
cargo test -p ambit-ztunnel --features tls-boring --test direct

section "Helm charts (scripts/helm/test.sh: the real Helm engine renders and lints every chart; Kubernetes schemas; golden files; env and flags cross-checked against the code)"
scripts/helm/test.sh

section "container image (scripts/image-test.sh: Containerfile built with buildah, every binary starts in it)"
if [ $is_root = 1 ]; then
  AMBIT_IMAGE_TEST_REQUIRED=1 scripts/image-test.sh
else
  scripts/image-test.sh
fi

# ---------------------------------------------------------------------------------------------------------------
section "end-to-end tests (network namespaces: ztunnel pair, controller, the local mesh; cargo test -p ambit-e2e)"
if [ $is_root = 1 ]; then
  # The e2e tests find the binaries of the build above (ztunnel, controller, ambit, ambit-node-agent) next to
  # themselves (or AMBIT_ZTUNNEL_BIN, AMBIT_CONTROLLER_BIN, AMBIT_BIN).
  AMBIT_E2E_REQUIRED=1 cargo test -p ambit-e2e -- --test-threads=1
else
  echo "not root: running only the harness's own unit tests; the e2e tests skip"
  cargo test -p ambit-e2e --lib
fi

section "done"
echo "all green in $(( $(date +%s) - started ))s"
