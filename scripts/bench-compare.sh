#!/usr/bin/env bash
# Whole-system benchmark: ceilings (crypto, plain UDP echo per backend) and the real relay
# (sluicectl up with a temporary config) per backend × workers × fan-out × profile, then a
# table of the ratios docs/BENCHMARKS.md reports. Loopback only; needs release binaries:
#
#   cargo build --release -p sluice-relay -p sluice-control -p sluicectl -p sluice-bench \
#       --bins --example io_echo_bench
#   scripts/bench-compare.sh [OUTDIR]
#
# Environment (defaults in brackets):
#   BIN        binaries directory [target/release]
#   BACKENDS   [mmsg io_uring]      WORKERS   [1 2]       FANOUTS  [1 10]
#   PROFILES   [AES_CM_128_HMAC_SHA1_80 AEAD_AES_128_GCM]  SIZE [1200]
#   PUBS       publishers at fan-out 1 [4]; at fan-out > 1 there are 2 publishers
#   STEP       find-max step seconds [1]   STEPS  find-max step budget [10]
#   LAT_SECS   length of the latency run at half the max rate [3]
#   SYSCALLS   1 = also count the relay's syscalls with strace during the latency run [1]
# JSON reports go to OUTDIR (default: a new temp dir); the table is printed at the end and
# written to OUTDIR/table.md. Compare numbers within one run only: the machine is shared.
set -euo pipefail

BIN=${BIN:-target/release}
BACKENDS=${BACKENDS:-mmsg io_uring}
WORKERS=${WORKERS:-1 2}
FANOUTS=${FANOUTS:-1 10}
PROFILES=${PROFILES:-AES_CM_128_HMAC_SHA1_80 AEAD_AES_128_GCM}
SIZE=${SIZE:-1200}
PUBS=${PUBS:-4}
STEP=${STEP:-1}
STEPS=${STEPS:-10}
LAT_SECS=${LAT_SECS:-3}
SYSCALLS=${SYSCALLS:-1}
OUT=${1:-$(mktemp -d /tmp/sluice-bench-compare.XXXXXX)}
mkdir -p "$OUT"
B="$BIN/sluice-bench"
for b in sluice-bench sluicectl sluice-relay sluice-control; do
    [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (build the release binaries first)" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "jq is required" >&2; exit 2; }

UP_PID=""
RT=""
cleanup() {
    if [[ -n "$UP_PID" ]]; then kill -TERM "$UP_PID" 2>/dev/null || true; wait "$UP_PID" 2>/dev/null || true; fi
    [[ -n "$RT" ]] && rm -rf "$RT"
    rm -f "/dev/shm/sluice-bench-$$"
}
trap cleanup EXIT INT TERM

echo "# machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) CPUs, kernel $(uname -r)" | tee "$OUT/machine.txt"
echo "# date: $(date -u +%FT%TZ), load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"

search=(--step-duration "$STEP" --max-steps "$STEPS" --precision 5 --loss 0.1 --quiet)

# ---- ceilings -------------------------------------------------------------------------
for p in $PROFILES; do
    "$B" baseline crypto --profile "$p" --size "$SIZE" --duration 2 --json "$OUT/crypto-$p.json" >/dev/null
done
for be in $BACKENDS; do
    for w in $WORKERS; do
        "$B" baseline echo --backend "$be" --workers "$w" --publishers "$PUBS" --size "$SIZE" \
            --find-max --start-rate 50000 "${search[@]}" --json "$OUT/echo-$be-w$w.json" >/dev/null || true
    done
done

# ---- the relay ------------------------------------------------------------------------
start_relay() { # backend workers
    RT=$(mktemp -d /tmp/sluice-bench-rt.XXXXXX)
    cat >"$RT/sluice.toml" <<EOF
runtime_dir = "$RT"
[relay]
bind = "127.0.0.1:0"
workers = $2
backend = "$1"
recv_buffer_bytes = 8388608
send_buffer_bytes = 8388608
[control]
admin_listen = "127.0.0.1:0"
state_dir = "$RT/state"
audit_log = "$RT/audit/audit.log"
slow_path = "$RT/slow-path.sock"
[shm]
path = "/dev/shm/sluice-bench-$$"
sessions = 4096
routes = 8192
EOF
    rm -f "/dev/shm/sluice-bench-$$"
    "$BIN/sluicectl" up --config "$RT/sluice.toml" >"$OUT/up-$1-w$2.log" 2>&1 &
    UP_PID=$!
    export SLUICE_RUNTIME_DIR="$RT"
    for _ in $(seq 100); do
        if [[ -s "$RT/control.json" ]] && "$B" run --duration 0.2 --rate 100 --quiet >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "relay ($1, $2 workers) did not come up; see $OUT/up-$1-w$2.log" >&2
    return 1
}
stop_relay() {
    kill -TERM "$UP_PID" 2>/dev/null || true
    wait "$UP_PID" 2>/dev/null || true
    UP_PID=""
    rm -rf "$RT"; RT=""
    rm -f "/dev/shm/sluice-bench-$$"
}

for be in $BACKENDS; do
    for w in $WORKERS; do
        start_relay "$be" "$w" || continue
        relay_pid=$(pgrep -n -P "$UP_PID" sluice-relay || true)
        for f in $FANOUTS; do
            pubs=$PUBS; [[ $f -gt 1 ]] && pubs=2
            for p in $PROFILES; do
                tag="relay-$be-w$w-f$f-$p"
                "$B" find-max --publishers "$pubs" --fanout "$f" --profile "$p" --size "$SIZE" \
                    --receivers 1 --start-rate $((40000 / f)) "${search[@]}" \
                    --json "$OUT/$tag.json" >/dev/null || true
                max=$(jq -r '.find_max.max_offered_pps // 0' "$OUT/$tag.json" 2>/dev/null || echo 0)
                half=$(awk -v m="$max" 'BEGIN{r=int(m/2); if (r<100) r=100; print r}')
                if [[ "$SYSCALLS" == 1 && -n "$relay_pid" ]] && command -v strace >/dev/null; then
                    strace -c -f -q -o "$OUT/$tag-half.strace" -p "$relay_pid" &
                    spid=$!
                    sleep 0.3
                fi
                "$B" run --publishers "$pubs" --fanout "$f" --profile "$p" --size "$SIZE" \
                    --rate "$half" --duration "$LAT_SECS" --quiet --json "$OUT/$tag-half.json" >/dev/null || true
                if [[ -n "${spid:-}" ]]; then kill -INT "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; spid=""; fi
            done
        done
        stop_relay
    done
done

# ---- table ----------------------------------------------------------------------------
j() { jq -r "$2 // empty" "$1" 2>/dev/null || true; }
{
    cat "$OUT/machine.txt"
    echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| ceiling | pps |"
    echo "|---|---:|"
    for p in $PROFILES; do echo "| crypto $p (protect+unprotect, 1 core) | $(j "$OUT/crypto-$p.json" .baselines.crypto.pps | cut -d. -f1) |"; done
    for be in $BACKENDS; do for w in $WORKERS; do
        echo "| echo $be, $w worker(s) | $(j "$OUT/echo-$be-w$w.json" .baselines.echo.pps | cut -d. -f1) |"
    done; done
    echo
    echo "| backend | workers | fan-out | profile | max offered pps | max delivered pps | combined ceiling | delivered / ceiling | p50 µs @half | p99 µs @half | syscalls/pkt @half |"
    echo "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    for be in $BACKENDS; do for w in $WORKERS; do for f in $FANOUTS; do for p in $PROFILES; do
        tag="relay-$be-w$w-f$f-$p"
        [[ -f "$OUT/$tag.json" ]] || continue
        off=$(j "$OUT/$tag.json" .find_max.max_offered_pps); del=$(j "$OUT/$tag.json" .find_max.max_delivered_pps)
        cr=$(j "$OUT/crypto-$p.json" .baselines.crypto.pps); ec=$(j "$OUT/echo-$be-w$w.json" .baselines.echo.pps)
        p50=$(j "$OUT/$tag-half.json" .result.latency.p50_us); p99=$(j "$OUT/$tag-half.json" .result.latency.p99_us)
        pk=$(j "$OUT/$tag-half.json" '(.result.offered.packets + .result.delivered.packets)')
        sc=""
        if [[ -f "$OUT/$tag-half.strace" && -n "$pk" ]]; then
            calls=$(awk '$NF=="total"{print $(NF-2)}' "$OUT/$tag-half.strace")
            sc=$(awk -v c="${calls:-0}" -v k="$pk" 'BEGIN{ if (k>0) printf "%.3f", c/k }')
        fi
        read -r ceil ratio < <(awk -v c="${cr:-0}" -v e="${ec:-0}" -v d="${del:-0}" \
            'BEGIN{ if (c>0 && e>0) { x=1/(1/c+1/e); printf "%.0f %.2f\n", x, d/x } else print "- -" }')
        printf '| %s | %s | %s | %s | %.0f | %.0f | %s | %s | %s | %s | %s |\n' "$be" "$w" "$f" "$p" \
            "${off:-0}" "${del:-0}" "$ceil" "$ratio" "${p50:--}" "${p99:--}" "${sc:--}"
    done; done; done; done
} | tee "$OUT/table.md"
echo "reports: $OUT" >&2
