#!/usr/bin/env bash
# Builds the one image (Containerfile) with buildah, offline from any registry, and checks that every binary in it
# starts (`--version`, as the image's non-root user) and that the tools the node agent runs are there.
#
#   scripts/image-test.sh [BIN_DIR]        # default: ${CARGO_TARGET_DIR:-target}/debug
#
# No registry is reachable here, so the Debian base is made with debootstrap from the Debian mirror
# (AMBIT_DEBIAN_MIRROR, default deb.debian.org) and kept in buildah's storage as localhost/ambit-base:bookworm;
# the Containerfile is then built with BASE pointing at it, exactly as it is built against debian:bookworm-slim.
# Without buildah (or debootstrap, for a first run) the test says SKIPPED and exits 0, unless
# AMBIT_IMAGE_TEST_REQUIRED=1, when it fails.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin_dir=${1:-$target/debug}
bins=(ztunnel waypoint controller ambit-node-agent ambit-cni ambit ambit-apiserver)
base=localhost/ambit-base:bookworm
image=localhost/ambit:image-test
mirror=${AMBIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}

skip() {
  if [ "${AMBIT_IMAGE_TEST_REQUIRED:-}" = 1 ]; then
    echo "image-test: FAILED: $*" >&2
    exit 1
  fi
  echo "image-test: SKIPPED: $*"
  exit 0
}

command -v buildah >/dev/null 2>&1 || skip "buildah is not installed (apt-get install buildah)"
[ "$(id -u)" = 0 ] || skip "needs root (buildah's storage and chroot isolation)"
for b in "${bins[@]}"; do
  [ -x "$bin_dir/$b" ] || { echo "image-test: $bin_dir/$b is missing: build the workspace first" >&2; exit 1; }
done

work=$(mktemp -d "$target/image-test.XXXXXX")
ctr=""
cleanup() {
  [ -z "$ctr" ] || { buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true; }
  buildah rmi -f "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The base: Debian bookworm minbase, once per machine.
if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null 2>&1 || skip "no $base yet and debootstrap is not installed to make it"
  echo "image-test: making $base with debootstrap from $mirror"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    echo "image-test: debootstrap failed" >&2
    exit 1
  }
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  bctr=$(buildah from scratch)
  buildah copy --quiet "$bctr" "$work/rootfs" / >/dev/null
  buildah config --cmd /bin/bash "$bctr"
  buildah commit --quiet --rm "$bctr" "$base" >/dev/null
  rm -rf "$work/rootfs"
fi

# The context: the binaries, hard-linked (or copied) so the build sees only them.
mkdir "$work/context"
for b in "${bins[@]}"; do
  ln "$bin_dir/$b" "$work/context/$b" 2>/dev/null || cp "$bin_dir/$b" "$work/context/$b"
done
echo "image-test: building $image from Containerfile"
buildah bud --quiet --isolation chroot --network host --pull-never --layers=false \
  --build-arg BASE="$base" -f "$root/Containerfile" -t "$image" "$work/context" >/dev/null

user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$image")
entry=$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$image")
[ "$user" = "65532:65532" ] || { echo "image-test: image user is '$user', want 65532:65532" >&2; exit 1; }
[ "$entry" = "[/usr/local/bin/ztunnel]" ] || { echo "image-test: entrypoint is $entry" >&2; exit 1; }

# Run each binary inside the image's root filesystem, as the image's user: it starts with only what the image has.
ctr=$(buildah from --pull-never "$image")
mnt=$(buildah mount "$ctr")
failed=0
for b in "${bins[@]}"; do
  if out=$(chroot --userspec=65532:65532 "$mnt" "/usr/local/bin/$b" --version 2>&1); then
    printf 'image-test: %-18s %s\n' "$b" "$(printf '%s' "$out" | head -1)"
  else
    printf 'image-test: %s --version FAILED in the image:\n%s\n' "$b" "$out" >&2
    failed=1
  fi
done
# What the node agent execs inside pods' network namespaces.
for tool in "iptables-restore --version" "ip -V" "nsenter --version"; do
  if out=$(chroot "$mnt" /bin/sh -c "$tool" 2>/dev/null); then
    printf 'image-test: %-18s %s\n' "${tool%% *}" "$(printf '%s' "$out" | head -1)"
  else
    printf 'image-test: %s is not usable in the image: %s\n' "$tool" "$out" >&2
    failed=1
  fi
done
[ $failed = 0 ] || exit 1
size=$(buildah images --format '{{.Size}}' "$image" 2>/dev/null | head -1)
echo "image-test: ok (${#bins[@]} binaries start in the image; its size: ${size:-unknown})"
