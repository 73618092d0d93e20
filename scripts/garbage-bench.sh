#!/usr/bin/env bash
# Legitimate throughput while garbage floods the media port (issue 6, docs/SECURITY.md
# "Garbage under load"). Not part of CI. Starts `sluicectl up` on a generated config, then for
# each garbage rate runs `sluice-bench run` (one publisher -> one subscriber) with
# `--garbage-rate`, and prints delivered/loss/latency, the relay's drop counters and the
# relay's CPU per datagram it read, against a garbage-free run at the same legitimate rate
# measured in the same session (the baseline).
#
#   scripts/garbage-bench.sh [OUT_DIR]
#
# Environment (all optional):
#   RATES      garbage datagrams/s to try            [0 250000 500000 1000000]
#   REPS       runs per rate                         [2]
#   LEGIT      legitimate packets/s                  [50000]
#   BACKEND    relay backend                         [mmsg]
#   WORKERS    relay workers                         [2]
#   RCVBUF     relay.recv_buffer_bytes               [4194304 = the default]
#   NICE       nice level for daemons and bench      [-10 when root, else 0]
#   BIN_DIR    binaries    [target/release when complete, else target/debug]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-garbage-$(date -u +%Y%m%dT%H%M%SZ)}
RATES=${RATES:-0 250000 500000 1000000}
REPS=${REPS:-2}
LEGIT=${LEGIT:-50000}
BACKEND=${BACKEND:-mmsg}
WORKERS=${WORKERS:-2}
RCVBUF=${RCVBUF:-4194304}
if [[ $(id -u) == 0 ]]; then NICE=${NICE:--10}; else NICE=${NICE:-0}; fi
source scripts/lib.sh
sluice_bin_dir garbage-bench
BIN=$BIN_DIR
command -v curl >/dev/null || { echo "garbage-bench: needs curl" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
sluice_config "$WORKERS" "$BACKEND" "recv_buffer_bytes = $RCVBUF"
nice -n "$NICE" "$BIN/sluicectl" up --config "$OUT/sluice.toml" >"$OUT/up.log" 2>&1 &
UP=$!
trap 'kill -INT $UP 2>/dev/null; wait $UP 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
    "$BIN/sluicectl" status --json >"$OUT/status.json" 2>/dev/null \
        && python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["relay"]["pid"] else 1)' "$OUT/status.json" \
        && break
    sleep 0.1
done
RPID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["relay"]["pid"])' "$OUT/status.json")
MURL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics_url"])' "$OUT/status.json")
TCK=$(getconf CLK_TCK)
cpu() { awk -v t="$TCK" '{printf "%.2f", ($14 + $15) / t}' "/proc/$RPID/stat"; }
metric() { curl -s "$MURL" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {printf "%d", s}'; }

echo "# $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)"
echo "# $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg); backend $BACKEND, $WORKERS worker(s), recv buffer $RCVBUF, legit $LEGIT pps"
echo "| garbage asked | garbage sent/s | legit offered | delivered | loss | p50 µs | p99 µs | relay read | rate_limited | unknown_source | slow path up | relay CPU-s | relay µs per datagram read |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
sleep 1
for R in $RATES; do
    for rep in $(seq 1 "$REPS"); do
        tag="r$R-$rep"
        g=(); [[ "$R" != 0 ]] && g=(--garbage-rate "$R")
        c0=$(cpu); p0=$(metric sluice_relay_rx_packets_total); l0=$(metric 'sluice_relay_drops_total{reason="rate_limited"}')
        u0=$(metric 'sluice_relay_drops_total{reason="unknown_source"}'); s0=$(metric sluice_relay_slow_path_up_total)
        nice -n "$NICE" "$BIN/sluice-bench" run --rate "$LEGIT" --duration 5 --quiet "${g[@]}" \
            --json "$OUT/$tag.json" >"$OUT/$tag.log" 2>&1 || true
        c1=$(cpu); p1=$(metric sluice_relay_rx_packets_total); l1=$(metric 'sluice_relay_drops_total{reason="rate_limited"}')
        u1=$(metric 'sluice_relay_drops_total{reason="unknown_source"}'); s1=$(metric sluice_relay_slow_path_up_total)
        python3 - "$OUT/$tag.json" "$OUT/$tag.log" "$R" "$((p1 - p0))" "$((l1 - l0))" "$((u1 - u0))" "$((s1 - s0))" "$c0" "$c1" <<'PY'
import json, re, sys
f, log, asked, read, limited, unknown, up, c0, c1 = sys.argv[1:]
r = json.load(open(f))["result"]
m = re.search(r"garbage: \d+ datagrams in [\d.]+ s \((\d+)/s\)", open(log).read())
cpu = float(c1) - float(c0)
per = cpu / int(read) * 1e6 if int(read) else 0
print(f"| {asked} | {m.group(1) if m else 0} | {r['offered']['pps']:.0f} | {r['delivered']['pps']:.0f} | "
      f"{r['loss_ratio'] * 100:.2f} % | {r['latency']['p50_us']:.0f} | {r['latency']['p99_us']:.0f} | "
      f"{read} | {limited} | {unknown} | {up} | {cpu:.2f} | {per:.2f} |")
PY
    done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg); reports in $OUT"
