#!/usr/bin/env bash
# Measure a zero-loss relay upgrade with the bench: control and a relay run from BIN_DIR,
# `sluice-bench run` sends for DURATION seconds, and `sluicectl upgrade` replaces the relay
# UPGRADES times during the run (evenly spaced). Prints the bench summary and each upgrade.
#
#   scripts/upgrade_bench.sh [RATE_PPS] [DURATION_SECS] [UPGRADES]     (defaults 10000 20 3)
# Environment: BIN_DIR (default target/release when complete, else target/debug),
# BACKEND (auto), WORKERS (2), PUBLISHERS (4), FANOUT (2), PROFILE (AEAD_AES_128_GCM),
# OUT (a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-10000}
DURATION=${2:-20}
UPGRADES=${3:-3}
BACKEND=${BACKEND:-auto}
WORKERS=${WORKERS:-2}
source scripts/lib.sh
sluice_bin_dir upgrade_bench
OUT=${OUT:-$(mktemp -d /tmp/sluice-upgrade-bench.XXXXXX)}
sluice_config "$WORKERS" "$BACKEND"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    # The relay running now may have been started by sluicectl upgrade: relay.pid tracks it.
    [[ -f "$OUT/relay.pid" ]] && kill -TERM "$(cat "$OUT/relay.pid")" 2>/dev/null || true
}
trap cleanup EXIT
"$BIN_DIR/sluice-control" --config "$OUT/sluice.toml" 2> "$OUT/control.log" &
PIDS+=($!)
for _ in $(seq 1 100); do [[ -f "$OUT/run/control.json" ]] && break; sleep 0.1; done
"$BIN_DIR/sluice-relay" --config "$OUT/sluice.toml" > /dev/null 2> "$OUT/relay.log" &
echo $! > "$OUT/relay.pid"
for _ in $(seq 1 100); do [[ -S "$OUT/run/relay-handover.sock" ]] && break; sleep 0.1; done

"$BIN_DIR/sluice-bench" run --publishers "${PUBLISHERS:-4}" --fanout "${FANOUT:-2}" --profile "${PROFILE:-AEAD_AES_128_GCM}" \
    --rate "$RATE" --duration "$DURATION" --quiet --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1 &
BENCH=$!
STEP=$(python3 -c "print($DURATION / ($UPGRADES + 1))")
for i in $(seq 1 "$UPGRADES"); do
    sleep "$STEP"
    "$BIN_DIR/sluicectl" upgrade --handover "$OUT/run/relay-handover.sock" --json \
        2>> "$OUT/relay.log" | tee -a "$OUT/upgrades.jsonl"
    python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["new_pid"])' \
        "$OUT/upgrades.jsonl" > "$OUT/relay.pid"
done
wait "$BENCH" || true
"$BIN_DIR/sluicectl" --json stats > "$OUT/stats.json" 2>/dev/null || true
cat "$OUT/bench.log"
python3 - "$OUT/bench.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["result"]
print("offered {} delivered {} expected {} lost {} loss_ratio {} duplicates {} reordered {} auth_failures {}".format(
    r["offered"]["packets"], r["delivered"]["packets"], r["expected"], r["lost"], r["loss_ratio"],
    r["duplicates"], r["reordered"], r["auth_failures"]))
PY
echo "output in $OUT"
