#!/usr/bin/env bash
# Build every cargo-fuzz target in fuzz/ and run each for a bounded time from its committed
# seed corpus; fail on the first crash, leak, timeout or out-of-memory (docs/FUZZING.md).
#
#   scripts/fuzz-ci.sh                 # every target, FUZZ_SECONDS (default 20) each
#   FUZZ_SECONDS=5 scripts/fuzz-ci.sh rtp token   # some targets, shorter
#
# Needs cargo-fuzz and a C++ compiler; uses RUSTC_BOOTSTRAP=1 so a stable toolchain can pass
# the sanitizer flags. New corpus entries go to a scratch directory, never into fuzz/corpus.
# With 14 targets at 20 s the runs take about 5 minutes (plus the build: ~3 min cold).
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECONDS:-20}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-ci: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
    exit 1
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build

scratch="$(mktemp -d -p "${TMPDIR:-/tmp}")"
trap 'rm -rf "$scratch"' EXIT

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "corpus/$t"
    log="$scratch/$t.log"
    echo "fuzz-ci: $t for ${secs}s"
    if cargo fuzz run "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^Done' "$log" | sed "s/^/  $t: /" || true
    else
        echo "fuzz-ci: $t FAILED; last lines of its log:" >&2
        tail -n 40 "$log" >&2
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz-ci: crashes in: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz-ci: ${#targets[@]} targets, no crash"
