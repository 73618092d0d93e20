#!/usr/bin/env bash
# ICE-TCP against UDP through sluice-bench with SRTP (docs/BENCHMARKS.md "ICE-TCP against UDP",
# sluice-bench figures): control and a relay with relay.tcp.enabled on loopback, the same load
# over UDP and over ICE-TCP (`run --transport tcp`) in turn, at fan-out 1 and 10, ROUNDS rounds.
# The relay's CPU time (utime + stime from /proc/PID/stat) is read before and after each run;
# prints ns of relay CPU per packet delivered and the ratio TCP / UDP per round and fan-out.
#
#   cargo build --release -p sluice-relay -p sluice-control -p sluice-bench --bins
#   bench/ice-tcp.sh [OUTDIR]
#
# Environment: BIN (release binaries, default target/release), ROUNDS [3], WORKERS [1],
# RATE1 [10000] (publisher pps at fan-out 1), RATE10 [1000] (at fan-out 10: the same packets
# out), DURATION [5] seconds, PUBS [2], PROFILE [AES_CM_128_HMAC_SHA1_80], SIZE [1200].
set -euo pipefail
BIN=${BIN:-target/release}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-1}
RATE1=${RATE1:-10000}
RATE10=${RATE10:-1000}
DURATION=${DURATION:-5}
PUBS=${PUBS:-2}
PROFILE=${PROFILE:-AES_CM_128_HMAC_SHA1_80}
SIZE=${SIZE:-1200}
OUT=${1:-$(mktemp -d /tmp/sluice-ice-tcp.XXXXXX)}
mkdir -p "$OUT"
RT=$(mktemp -d /tmp/sluice-ice-tcp-rt.XXXXXX)
SHM=/dev/shm/sluice-ice-tcp-bench-$$
CTL="" REL=""
cleanup() {
    [[ -n "$REL" ]] && kill -TERM "$REL" 2>/dev/null && wait "$REL" 2>/dev/null
    [[ -n "$CTL" ]] && kill -TERM "$CTL" 2>/dev/null && wait "$CTL" 2>/dev/null
    rm -rf "$RT" "$SHM"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cpu_s() { awk '{ printf "%.3f\n", ($14 + $15) / 100 }' "/proc/$1/stat"; }
echo "# machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) CPUs, kernel $(uname -r), $(date -u '+%F %H:%M UTC'), load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/machine.txt"
cat >"$RT/sluice.toml" <<EOF2
runtime_dir = "$RT"
[relay]
bind = "127.0.0.1:$PORT"
workers = $WORKERS
backend = "mmsg"
recv_buffer_bytes = 8388608
send_buffer_bytes = 8388608
[relay.tcp]
enabled = true
[control]
admin_listen = "unix:$RT/admin.sock"
state_dir = "$RT/state"
audit_log = "$RT/audit/audit.log"
slow_path = "$RT/slow-path.sock"
[shm]
path = "$SHM"
sessions = 4096
routes = 8192
EOF2
export SLUICE_RUNTIME_DIR="$RT"
"$BIN/sluice-control" --config "$RT/sluice.toml" >"$OUT/control.log" 2>&1 &
CTL=$!
for _ in $(seq 100); do [[ -s "$RT/control.json" && -e "$SHM" ]] && break; sleep 0.1; done
"$BIN/sluice-relay" --config "$RT/sluice.toml" --no-pin >"$OUT/relay.log" 2>&1 &
REL=$!
for _ in $(seq 100); do
    "$BIN/sluice-bench" run --duration 0.3 --rate 200 --max-loss 50 --quiet >/dev/null 2>&1 && break
    sleep 0.2
done
for r in $(seq "$ROUNDS"); do for f in 1 10; do for t in udp tcp; do
    rate=$RATE1; [[ $f == 10 ]] && rate=$RATE10
    tag="$t-f$f-r$r"
    c0=$(cpu_s "$REL")
    "$BIN/sluice-bench" run --transport "$t" --publishers "$PUBS" --fanout "$f" \
        --profile "$PROFILE" --size "$SIZE" --rate "$rate" --duration "$DURATION" \
        --quiet --json "$OUT/$tag.json" >/dev/null || true
    echo "$(cpu_s "$REL") $c0" | awk '{ printf "%.3f\n", $1 - $2 }' >"$OUT/$tag.cpu"
done; done; done

j() { jq -r "$2" "$1" 2>/dev/null || echo 0; }
echo "| round | fan-out | transport | delivered | loss % | p50 µs | p99 µs | relay CPU-s | relay ns per packet out |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do for f in 1 10; do for t in udp tcp; do
    x="$OUT/$t-f$f-r$r"
    d=$(j "$x.json" .result.delivered.packets); l=$(j "$x.json" .result.loss_ratio)
    p50=$(j "$x.json" .result.latency.p50_us); p99=$(j "$x.json" .result.latency.p99_us)
    c=$(cat "$x.cpu")
    awk -v r="$r" -v f="$f" -v t="$t" -v d="$d" -v l="$l" -v a="$p50" -v b="$p99" -v c="$c" 'BEGIN {
        printf "| %s | %s | %s | %d | %.3f | %.0f | %.0f | %.2f | %.0f |\n", r, f, t, d, 100 * l, a, b, c, (d > 0) ? c * 1e9 / d : 0 }'
done; done; done | tee "$OUT/table.md"
echo
echo "| round | fan-out | ICE-TCP / UDP relay CPU per packet |"
echo "|---|---|---|"
for r in $(seq "$ROUNDS"); do for f in 1 10; do
    per() { awk -v d="$(j "$OUT/$1-f$f-r$r.json" .result.delivered.packets)" -v c="$(cat "$OUT/$1-f$f-r$r.cpu")" 'BEGIN{print (d>0)?c/d:0}'; }
    awk -v r="$r" -v f="$f" -v a="$(per tcp)" -v b="$(per udp)" 'BEGIN{ printf "| %s | %s | %.2f |\n", r, f, (b>0)?a/b:0 }'
done; done | tee "$OUT/ratio.md"
echo "results in $OUT" >&2
