#!/usr/bin/env bash
# Soak test (issue 6): run sluice-bench for a long time at half of the measured maximum load
# against `sluicectl up`, and record the resident memory (RSS) of both daemons every interval.
# Not part of CI. Usage:
#
#   scripts/soak.sh [DURATION_SECS] [OUT_DIR]
#
# Environment (all optional):
#   SOAK_DURATION   seconds of load (default 3600; the first argument wins)
#   SOAK_INTERVAL   seconds between RSS samples (default 60)
#   SOAK_RATE       packets/s to offer; skips the find-max search when set
#   SOAK_PROFILE    SRTP profile (default AEAD_AES_128_GCM)
#   SOAK_PUBLISHERS, SOAK_FANOUT, SOAK_SIZE   bench load shape (default 4, 2, 1200)
#   SOAK_WORKERS    relay workers (default 0 = one per CPU)
#   BIN_DIR         directory with sluicectl, sluice-control, sluice-relay, sluice-bench
#                   (default target/release when it has all four, else target/debug)
#
# Output in OUT_DIR (default soak-<UTC timestamp>): rss.csv (unix_time, elapsed_s,
# control_rss_kb, relay_rss_kb, control_hwm_kb, relay_hwm_kb), findmax.json, soak.json (bench
# report), up.log, bench.log, summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-${SOAK_DURATION:-3600}}
OUT=${2:-soak-$(date -u +%Y%m%dT%H%M%SZ)}
INTERVAL=${SOAK_INTERVAL:-60}
PROFILE=${SOAK_PROFILE:-AEAD_AES_128_GCM}
PUBLISHERS=${SOAK_PUBLISHERS:-4}
FANOUT=${SOAK_FANOUT:-2}
SIZE=${SOAK_SIZE:-1200}
WORKERS=${SOAK_WORKERS:-0}

source scripts/lib.sh
sluice_bin_dir soak

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
sluice_config "$WORKERS" ""

UP_PID=
BENCH_PID=
cleanup() {
    [[ -n "$BENCH_PID" ]] && kill -TERM "$BENCH_PID" 2>/dev/null || true
    [[ -n "$UP_PID" ]] && kill -INT "$UP_PID" 2>/dev/null || true
    [[ -n "$UP_PID" ]] && wait "$UP_PID" 2>/dev/null || true
}
trap cleanup EXIT

"$BIN_DIR/sluicectl" up --config "$OUT/sluice.toml" > "$OUT/up.log" 2>&1 &
UP_PID=$!
for _ in $(seq 1 200); do
    [[ -f "$OUT/run/control.json" ]] && "$BIN_DIR/sluicectl" status --json > "$OUT/status.json" 2>/dev/null \
        && python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["relay"]["pid"] else 1)' "$OUT/status.json" \
        && break
    sleep 0.1
done
json() { python3 -c "import json,sys; v=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
CONTROL_PID=$(json "$OUT/run/control.json" 'v["pid"]')
RELAY_PID=$(json "$OUT/status.json" 'v["relay"]["pid"]')
echo "soak: control pid $CONTROL_PID, relay pid $RELAY_PID, binaries from $BIN_DIR, output in $OUT"

LOAD=(--publishers "$PUBLISHERS" --fanout "$FANOUT" --size "$SIZE" --profile "$PROFILE")
if [[ -n "${SOAK_RATE:-}" ]]; then
    RATE=$SOAK_RATE
    MAX=unknown
else
    "$BIN_DIR/sluice-bench" find-max "${LOAD[@]}" --step-duration 2 --max-steps 10 \
        --quiet --json "$OUT/findmax.json" > "$OUT/findmax.log" 2>&1
    MAX=$(json "$OUT/findmax.json" 'int(v["find_max"]["max_offered_pps"])')
    RATE=$((MAX / 2))
fi
echo "soak: max $MAX pps -> soaking at $RATE pps for $DURATION s, RSS every $INTERVAL s"

rss() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
echo "unix_time,elapsed_s,control_rss_kb,relay_rss_kb,control_hwm_kb,relay_hwm_kb" > "$OUT/rss.csv"
sample() {
    echo "$(date +%s),$1,$(rss "$CONTROL_PID" VmRSS),$(rss "$RELAY_PID" VmRSS),$(rss "$CONTROL_PID" VmHWM),$(rss "$RELAY_PID" VmHWM)" >> "$OUT/rss.csv"
}

"$BIN_DIR/sluice-bench" run "${LOAD[@]}" --rate "$RATE" --duration "$DURATION" \
    --quiet --json "$OUT/soak.json" > "$OUT/bench.log" 2>&1 &
BENCH_PID=$!
START=$(date +%s)
sample 0
while kill -0 "$BENCH_PID" 2>/dev/null; do
    sleep "$INTERVAL" &
    wait $! || true
    kill -0 "$BENCH_PID" 2>/dev/null || break
    sample $(( $(date +%s) - START ))
done
BENCH_STATUS=0
wait "$BENCH_PID" || BENCH_STATUS=$?
BENCH_PID=
sample $(( $(date +%s) - START ))
for p in "$CONTROL_PID" "$RELAY_PID"; do
    kill -0 "$p" 2>/dev/null || { echo "soak: daemon pid $p died during the soak" >&2; BENCH_STATUS=1; }
done

python3 - "$OUT" "$RATE" "$MAX" "$DURATION" "$BENCH_STATUS" > "$OUT/summary.txt" <<'PY'
import csv, json, sys
out, rate, mx, duration, status = sys.argv[1:]
rows = list(csv.DictReader(open(f"{out}/rss.csv")))
def col(k): return [int(r[k] or 0) for r in rows]
print(f"soak: {duration} s at {rate} pps (max {mx}), bench exit status {status}, {len(rows)} RSS samples")
for name in ("control", "relay"):
    v = col(f"{name}_rss_kb")
    print(f"{name}: RSS first {v[0]} kB, last {v[-1]} kB, min {min(v)} kB, max {max(v)} kB, growth {v[-1]-v[0]:+d} kB")
try:
    r = json.load(open(f"{out}/soak.json"))["result"]
    print("bench: offered {} pkts ({:.0f} pps), delivered {} pkts ({:.0f} pps), lost {}, loss {:.6f}, "
          "duplicates {}, reordered {}, auth failures {}".format(
              r["offered"]["packets"], r["offered"]["pps"], r["delivered"]["packets"], r["delivered"]["pps"],
              r["lost"], r["loss_ratio"], r["duplicates"], r["reordered"], r["auth_failures"]))
    l = r["latency"]
    print("latency us: p50 {} p99 {} p99.9 {} max {}".format(l["p50_us"], l["p99_us"], l["p999_us"], l["max_us"]))
except Exception as e:
    print(f"bench report unreadable: {e!r}")
PY
cat "$OUT/summary.txt"
exit "$BENCH_STATUS"
