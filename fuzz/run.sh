#!/usr/bin/env bash
# Builds and runs the libFuzzer targets on the stable toolchain, then merges what they found into the checked-in
# corpora, minimised with `-set_cover_merge=1` (the `-merge=1` variant that keeps the fewest inputs with the same
# coverage features).
#
#   fuzz/run.sh TARGET|all SECONDS      e.g. fuzz/run.sh all 120, fuzz/run.sh dns_query 1800
#
# Stable Rust has no `-Zsanitizer`, and needs none here: SanitizerCoverage is an LLVM pass that `-Cpasses` runs,
# and libfuzzer-sys links libFuzzer, which reads those counters. Without AddressSanitizer a finding is a Rust
# panic (or abort, OOM, timeout), which is what safe Rust parsers can fail with. The binaries build in their own
# target dir ($CARGO_TARGET_DIR, default /work/fuzz-target) so these RUSTFLAGS never touch the shared one.
# Environment: FUZZ_JOBS (parallel fuzzing processes per target, default 1), FUZZ_ARGS (extra libFuzzer flags),
# FUZZ_CORPUS_CAP (bytes of corpus kept per target, smallest inputs first, default 120000).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
target=${1:?usage: run.sh TARGET|all SECONDS}
secs=${2:?usage: run.sh TARGET|all SECONDS}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/fuzz-target}
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"

all=$(sed -n 's/^name = "\([a-z0-9_]*\)"$/\1/p' "$here/targets/Cargo.toml" | grep -v '^ambit-fuzz-targets$')
if [ "$target" = all ]; then
    targets=$all
elif grep -qx "$target" <<<"$all"; then
    targets=$target
else
    echo "unknown target $target; one of: all" $all >&2
    exit 2
fi

# --target keeps RUSTFLAGS off build scripts and proc macros (which must not be instrumented).
cargo build --manifest-path "$here/targets/Cargo.toml" --release --target "$triple" --bins
bindir=$CARGO_TARGET_DIR/$triple/release

summary=()
status=0
for t in $targets; do
    bin=$bindir/$t
    corpus=$here/corpus/$t
    artifacts=$here/crashes/$t
    mkdir -p "$corpus" "$artifacts"
    scratch=$(mktemp -d)
    cp -r "$corpus"/. "$scratch"/
    log=$(mktemp)
    echo "== $t: fuzzing for $secs s"
    set +e
    # -timeout: one input may take at most 25 s (the machine is shared and loaded); -rss_limit_mb bounds memory.
    jobs=()
    if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
        jobs=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
    fi
    "$bin" -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1 \
        "${jobs[@]}" -artifact_prefix="$artifacts/" ${FUZZ_ARGS:-} "$scratch" >"$log" 2>&1
    rc=$?
    set -e
    # With -jobs>1 libFuzzer writes fuzz-N.log files next to the working directory; keep one log.
    [ -f fuzz-0.log ] && cat fuzz-*.log >>"$log" && rm -f fuzz-*.log
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | awk '{s+=$1} END {print s+0}')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    crash=$(grep -o "$artifacts/[a-z]*-[0-9a-f]*" "$log" | head -1 || true)
    if [ "$rc" -ne 0 ] || [ -n "$crash" ]; then
        status=1
        echo "!! $t: libFuzzer exited $rc; log $log"
        grep -m1 -A30 -E 'panicked at|ERROR: libFuzzer|deadly signal' "$log" || tail -30 "$log"
        if [ -n "$crash" ] && [ -f "$crash" ]; then
            "$bin" -minimize_crash=1 -max_total_time=60 -exact_artifact_path="$crash.min" "$crash" \
                >"$log.min" 2>&1 || true
            echo "!! $t: crash $crash (minimised: $crash.min)"
        fi
    fi
    # Merge the scratch corpus back, minimised.
    merged=$(mktemp -d)
    "$bin" -set_cover_merge=1 -timeout=25 -rss_limit_mb=2048 "$merged" "$corpus" "$scratch" >"$log.merge" 2>&1 || true
    if [ -n "$(ls -A "$merged")" ]; then
        find "$corpus" -mindepth 1 -delete
        cp "$merged"/* "$corpus"/
    fi
    # Keep the checked-in corpora small: the smallest inputs first, up to FUZZ_CORPUS_CAP bytes per target.
    cap=${FUZZ_CORPUS_CAP:-120000}
    total=0
    while read -r size f; do
        if [ $((total + size)) -gt "$cap" ]; then rm -f "$f"; else total=$((total + size)); fi
    done < <(find "$corpus" -type f -printf '%s %p\n' | sort -n)
    files=$(find "$corpus" -type f | wc -l)
    bytes=$(du -sb "$corpus" | cut -f1)
    line=$(printf '%-22s %6ss  execs %10s  cov %6s  ft %6s  corpus %4s files %8s bytes  exit %s' \
        "$t" "$secs" "$execs" "${cov:-?}" "${ft:-?}" "$files" "$bytes" "$rc")
    echo "$line"
    summary+=("$line")
    rm -rf "$scratch" "$merged" "$log.merge"
    [ "$rc" -eq 0 ] && rm -f "$log"
    rmdir "$artifacts" 2>/dev/null || true
done
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
