#!/usr/bin/env bash
# Whole-system benchmark in one run: ceilings (SRTP transforms on one core, plain UDP echo per
# backend), the real relay (`sluicectl up` on a temporary config) per backend × workers ×
# fan-out × profile, syscall counts per packet, and optionally rtpengine on the same load;
# then the ratios docs/BENCHMARKS.md reports. Loopback only; needs release binaries:
#
#   cargo build --release -p sluice-relay -p sluice-control -p sluicectl -p sluice-bench --bins
#   scripts/bench-compare.sh [OUTDIR]
#
# Environment (defaults in brackets):
#   BIN        binaries directory [target/release]
#   BACKENDS   [mmsg io_uring]      WORKERS   [1 2]       FANOUTS  [1 10]
#   PROFILES   [AES_CM_128_HMAC_SHA1_80 AEAD_AES_128_GCM]  SIZE [1200]
#   PUBS       publishers at fan-out 1 [4]; at fan-out > 1 there are 2 publishers
#   STEP       find-max step seconds [1]   STEPS  find-max step budget [8]
#   LAT_SECS   length of each run at half the max rate [3]
#   SYSCALLS   1 = count the relay's syscalls with strace in a separate fixed-rate run [1]
#   SC_RATE    offered pps of that run [20000]
#   RTPENGINE  1 = also run rtpengine (userspace, one thread) on the same load [1 if installed]
#   RTPE_FANOUTS  fan-outs of the Sluice vs rtpengine comparison [FANOUTS]
#   CPU_RATE   packets out per second of the packets-per-CPU-second comparison [20000]: at
#              fan-out 1, PUBS publishers at CPU_RATE pps; at fan-out F > 1, 2 publishers at
#              CPU_RATE / F pps (the load docs/BENCHMARKS.md describes). A ratio is printed only
#              when both daemons delivered >= 99 % of what was asked; otherwise the row says why.
#   SLUICE_URING_SETUP  io_uring ring flavour: defer, coop or plain [coop]
#   PERF       1 = `perf record -g` each daemon of the rtpengine comparison for PERF_SECS [4]
#              of an extra run at the same load, split by scripts/bench-perf-split.py
#              (OUTDIR/perf-cpu-KIND-fF-PROFILE.*) [0]
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
STEPS=${STEPS:-8}
LAT_SECS=${LAT_SECS:-3}
SYSCALLS=${SYSCALLS:-1}
SC_RATE=${SC_RATE:-20000}
CPU_RATE=${CPU_RATE:-20000}
if command -v rtpengine >/dev/null; then RTPENGINE=${RTPENGINE:-1}; else RTPENGINE=0; fi
RTPE_FANOUTS=${RTPE_FANOUTS:-$FANOUTS}
PERF=${PERF:-0}
PERF_SECS=${PERF_SECS:-4}
if [[ "$PERF" == 1 ]]; then command -v perf >/dev/null || { echo "PERF=1 needs perf" >&2; exit 2; }; fi
# The io_uring ring flavour (relay/src/io/uring.rs build_ring); inherited by the relay.
export SLUICE_URING_SETUP=${SLUICE_URING_SETUP:-coop}
OUT=${1:-$(mktemp -d /tmp/sluice-bench-compare.XXXXXX)}
mkdir -p "$OUT"
B="$BIN/sluice-bench"
for b in sluice-bench sluicectl sluice-relay sluice-control; do
    [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (build the release binaries first)" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "jq is required" >&2; exit 2; }

UP_PID=""
RT=""
RTPE_PID=""
SHM="/dev/shm/sluice-bench-$$"
cleanup() {
    if [[ -n "$UP_PID" ]]; then kill -TERM "$UP_PID" 2>/dev/null || true; wait "$UP_PID" 2>/dev/null || true; fi
    if [[ -n "$RTPE_PID" ]]; then kill -TERM "$RTPE_PID" 2>/dev/null || true; wait "$RTPE_PID" 2>/dev/null || true; fi
    [[ -n "$RT" ]] && rm -rf "$RT"
    rm -f "$SHM"
}
trap cleanup EXIT INT TERM

# CPU seconds (user + system) a process has used so far, from /proc/PID/stat fields 14 and 15.
cpu_s() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$1/stat"
}

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
        emax=$(jq -r '.baselines.echo.pps // 0' "$OUT/echo-$be-w$w.json" 2>/dev/null || echo 0)
        ehalf=$(awk -v m="$emax" 'BEGIN{r=int(m/2); if (r<100) r=100; print r}')
        "$B" baseline echo --backend "$be" --workers "$w" --publishers "$PUBS" --size "$SIZE" \
            --rate "$ehalf" --duration "$LAT_SECS" --quiet --json "$OUT/echo-$be-w$w-half.json" >/dev/null || true
    done
done

# ---- the relay ------------------------------------------------------------------------
start_relay() { # backend workers
    RT=$(mktemp -d /tmp/sluice-bench-rt.XXXXXX)
    # A free port chosen here: with port 0 the admin API would report port 0.
    local port
    port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat >"$RT/sluice.toml" <<EOF
runtime_dir = "$RT"
[relay]
bind = "127.0.0.1:$port"
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
path = "$SHM"
sessions = 4096
routes = 8192
EOF
    rm -f "$SHM"
    "$BIN/sluicectl" up --config "$RT/sluice.toml" >"$OUT/up-$1-w$2.log" 2>&1 &
    UP_PID=$!
    export SLUICE_RUNTIME_DIR="$RT"
    for _ in $(seq 100); do
        if [[ -s "$RT/control.json" ]] && "$B" run --duration 0.3 --rate 200 --max-loss 50 --quiet >/dev/null 2>&1; then
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
    rm -f "$SHM"
}

for be in $BACKENDS; do
    for w in $WORKERS; do
        start_relay "$be" "$w" || continue
        relay_pid=$(pgrep -n -P "$UP_PID" sluice-relay || true)
        echo "relay $be w$w: pid ${relay_pid:-?} $(jq -r .backend <("$BIN/sluicectl" status --json 2>/dev/null) 2>/dev/null || true)" >&2
        for f in $FANOUTS; do
            pubs=$PUBS; [[ $f -gt 1 ]] && pubs=2
            for p in $PROFILES; do
                tag="relay-$be-w$w-f$f-$p"
                "$B" find-max --publishers "$pubs" --fanout "$f" --profile "$p" --size "$SIZE" \
                    --start-rate $((40000 / f)) "${search[@]}" \
                    --json "$OUT/$tag.json" >/dev/null || true
                max=$(jq -r '.find_max.max_offered_pps // 0' "$OUT/$tag.json" 2>/dev/null || echo 0)
                half=$(awk -v m="$max" 'BEGIN{r=int(m/2); if (r<100) r=100; print r}')
                c0=""; [[ -n "$relay_pid" ]] && c0=$(cpu_s "$relay_pid")
                "$B" run --publishers "$pubs" --fanout "$f" --profile "$p" --size "$SIZE" \
                    --rate "$half" --duration "$LAT_SECS" --quiet --json "$OUT/$tag-half.json" >/dev/null || true
                if [[ -n "$c0" ]]; then
                    echo "$(cpu_s "$relay_pid") $c0" | awk '{printf "%.2f\n", $1 - $2}' >"$OUT/$tag-half.cpu"
                fi
            done
            # Syscalls per packet at a fixed rate (strace slows the relay, so this run is
            # separate from the latency run and only counts).
            if [[ "$SYSCALLS" == 1 && -n "$relay_pid" && $w == 1 ]] && command -v strace >/dev/null; then
                p=${PROFILES%% *}
                tag="sc-$be-f$f"
                strace -c -f -q -o "$OUT/$tag.strace" -p "$relay_pid" &
                spid=$!
                sleep 0.5
                "$B" run --publishers "$pubs" --fanout "$f" --profile "$p" --size "$SIZE" \
                    --rate $((SC_RATE / f)) --duration 2 --quiet --json "$OUT/$tag.json" >/dev/null || true
                kill -INT "$spid" 2>/dev/null || true
                wait "$spid" 2>/dev/null || true
            fi
        done
        stop_relay
    done
done

# ---- packets out per CPU-second: Sluice vs rtpengine, same load -------------------------
if [[ "$RTPENGINE" == 1 ]]; then
    ng_port=$((22000 + $$ % 1000))
    conf="$OUT/rtpengine.conf"
    printf '[rtpengine]\ntable = -1\n' >"$conf"
    rtpengine --config-file="$conf" --foreground --log-stderr --table=-1 --num-threads=1 \
        --interface=127.0.0.1 --listen-ng="127.0.0.1:$ng_port" --port-min=30000 --port-max=30999 \
        --log-level=4 >"$OUT/rtpengine.log" 2>&1 &
    RTPE_PID=$!
    sleep 1
    be=${BACKENDS%% *}
    start_relay "$be" 1 && relay_pid=$(pgrep -n -P "$UP_PID" sluice-relay || true)
    for f in $RTPE_FANOUTS; do for p in $PROFILES; do
        # The same packets out per second at every fan-out: PUBS publishers at CPU_RATE at
        # fan-out 1, 2 publishers at CPU_RATE / f beyond (as the relay section above).
        pubs=$PUBS; [[ $f -gt 1 ]] && pubs=2
        rate=$(( CPU_RATE / f )); [[ $rate -lt 100 ]] && rate=100
        # find-max starts at a quarter of that load, which both daemons carry, and climbs from
        # there; starting above what a daemon carries reports 0.
        start=$(( rate / 4 )); [[ $start -lt 100 ]] && start=100
        for kind in sluice rtpengine; do
            if [[ $kind == sluice ]]; then pid=$relay_pid; args=(); else pid=$RTPE_PID; args=(--target-kind rtpengine --ng "127.0.0.1:$ng_port"); fi
            [[ -n "$pid" ]] || continue
            tag="cpu-$kind-f$f-$p"
            c0=$(cpu_s "$pid")
            "$B" run "${args[@]}" --publishers "$pubs" --fanout "$f" --profile "$p" --size "$SIZE" \
                --rate "$rate" --duration 5 --quiet --json "$OUT/$tag.json" >/dev/null || true
            echo "$(cpu_s "$pid") $c0" | awk '{printf "%.2f\n", $1 - $2}' >"$OUT/$tag.cpu"
            echo "$f" >"$OUT/$tag.fanout"
            "$B" find-max "${args[@]}" --publishers "$pubs" --fanout "$f" --profile "$p" --size "$SIZE" \
                --start-rate "$start" "${search[@]}" --json "$OUT/max-$kind-f$f-$p.json" >/dev/null || true
            if [[ "$PERF" == 1 ]]; then
                # The same load again with perf attached once the sessions exist.
                "$B" run "${args[@]}" --publishers "$pubs" --fanout "$f" --profile "$p" --size "$SIZE" \
                    --rate "$rate" --duration $(( PERF_SECS + 3 )) --quiet --json "$OUT/perf-$tag.json" >/dev/null &
                bp=$!
                sleep 1.5
                pc0=$(cpu_s "$pid")
                perf record -g -o "$OUT/perf-$tag.perf.data" -p "$pid" -- sleep "$PERF_SECS" >"$OUT/perf-$tag.log" 2>&1 || true
                pc1=$(cpu_s "$pid")
                wait "$bp" || true
                perf script -i "$OUT/perf-$tag.perf.data" 2>/dev/null | python3 "$(dirname "$0")/bench-perf-split.py" \
                    --packets $(( rate * f * PERF_SECS )) --cpu-s "$(awk -v a="$pc1" -v b="$pc0" 'BEGIN{print a-b}')" \
                    >"$OUT/perf-$tag.split.txt" || true
                perf report -i "$OUT/perf-$tag.perf.data" --no-children --sort dso --stdio -g none 2>/dev/null \
                    | grep -v '^#' | grep -v '^$' | head -30 >"$OUT/perf-$tag.dso.txt" || true
                perf report -i "$OUT/perf-$tag.perf.data" --no-children --sort sym --stdio -g none 2>/dev/null \
                    | grep -v '^#' | grep -v '^$' | head -60 >"$OUT/perf-$tag.sym.txt" || true
            fi
        done
    done; done
    stop_relay
    kill -TERM "$RTPE_PID" 2>/dev/null || true; wait "$RTPE_PID" 2>/dev/null || true; RTPE_PID=""
fi

# ---- table ----------------------------------------------------------------------------
j() { jq -r "$2 // empty" "$1" 2>/dev/null || true; }
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN{ if (a>0 && b>0) printf "%.2f", a/b; else printf "-" }'; }
# Empty when `delivered` is at least 99 % of `asked`, else why a ratio over it would mislead.
short_of() { awk -v d="${1:-0}" -v a="${2:-0}" 'BEGIN{
    if (a <= 0) print "has no report";
    else if (d < 0.99 * a) printf "delivered %d of %d asked (%.1f %%)", d, a, 100 * d / a }'; }
first_w=${WORKERS%% *}
{
    cat "$OUT/machine.txt"
    echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| ceiling | pps | p50 µs @half | p99 µs @half | generator pps per sender CPU-s |"
    echo "|---|---:|---:|---:|---:|"
    for p in $PROFILES; do echo "| crypto $p (unprotect+protect, 1 core) | $(j "$OUT/crypto-$p.json" .baselines.crypto.pps | cut -d. -f1) | | | |"; done
    for be in $BACKENDS; do for w in $WORKERS; do
        h="$OUT/echo-$be-w$w-half.json"
        gen=$(j "$h" '(.result.offered.packets / ([.generator.senders[].cpu_s] | add))' | cut -d. -f1)
        echo "| echo $be, $w worker(s) | $(j "$OUT/echo-$be-w$w.json" .baselines.echo.pps | cut -d. -f1) | $(j "$h" .baselines.echo.latency.p50_us) | $(j "$h" .baselines.echo.latency.p99_us) | ${gen:--} |"
    done; done
    echo
    echo "| backend | workers | fan-out | profile | max offered pps | max delivered pps | combined ceiling | delivered / ceiling | p50 µs @half | p99 µs @half | added p50 / p99 µs vs echo @half | relay CPU-s per 1M out @half | mean batch @half |"
    echo "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for be in $BACKENDS; do for w in $WORKERS; do for f in $FANOUTS; do for p in $PROFILES; do
        tag="relay-$be-w$w-f$f-$p"
        [[ -f "$OUT/$tag.json" ]] || continue
        h="$OUT/$tag-half.json"
        off=$(j "$OUT/$tag.json" .find_max.max_offered_pps); del=$(j "$OUT/$tag.json" .find_max.max_delivered_pps)
        cr=$(j "$OUT/crypto-$p.json" .baselines.crypto.pps); ec=$(j "$OUT/echo-$be-w$w.json" .baselines.echo.pps)
        p50=$(j "$h" .result.latency.p50_us); p99=$(j "$h" .result.latency.p99_us)
        e50=$(j "$OUT/echo-$be-w$w-half.json" .baselines.echo.latency.p50_us); e99=$(j "$OUT/echo-$be-w$w-half.json" .baselines.echo.latency.p99_us)
        added=$(awk -v a="${p50:-0}" -v b="${e50:-0}" -v c="${p99:-0}" -v d="${e99:-0}" 'BEGIN{ if (a>0 && b>0) printf "%.0f / %.0f", a-b, c-d; else printf "-" }')
        outp=$(j "$h" .result.delivered.packets)
        cpu=$(cat "$OUT/$tag-half.cpu" 2>/dev/null || true)
        per=$(awk -v c="${cpu:-0}" -v k="${outp:-0}" 'BEGIN{ if (k>0 && c>0) printf "%.2f", c*1e6/k; else printf "-" }')
        batch=$(j "$h" '((.target_stats.after.totals.packets_in - .target_stats.before.totals.packets_in) / (.target_stats.after.totals.batches - .target_stats.before.totals.batches))' )
        batch=$(awk -v b="${batch:-0}" 'BEGIN{ if (b>0) printf "%.1f", b; else printf "-" }')
        read -r ceil rat < <(awk -v c="${cr:-0}" -v e="${ec:-0}" -v d="${del:-0}" \
            'BEGIN{ if (c>0 && e>0) { x=1/(1/c+1/e); printf "%.0f %.2f\n", x, d/x } else print "- -" }')
        printf '| %s | %s | %s | %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$be" "$w" "$f" "$p" \
            "${off:-0}" "${del:-0}" "$ceil" "$rat" "${p50:--}" "${p99:--}" "$added" "$per" "$batch"
    done; done; done; done
    echo
    echo "| ratio (max delivered pps, same run) | fan-out | profile | value |"
    echo "|---|---:|---|---:|"
    set -- $BACKENDS
    if [[ $# -ge 2 ]]; then
        for w in $WORKERS; do for f in $FANOUTS; do for p in $PROFILES; do
            a=$(j "$OUT/relay-$2-w$w-f$f-$p.json" .find_max.max_delivered_pps); b=$(j "$OUT/relay-$1-w$w-f$f-$p.json" .find_max.max_delivered_pps)
            echo "| $2 / $1, $w worker(s) | $f | $p | $(ratio "$a" "$b") |"
        done; done; done
    fi
    set -- $WORKERS
    if [[ $# -ge 2 ]]; then
        for be in $BACKENDS; do for f in $FANOUTS; do for p in $PROFILES; do
            a=$(j "$OUT/relay-$be-w$2-f$f-$p.json" .find_max.max_delivered_pps); b=$(j "$OUT/relay-$be-w$1-f$f-$p.json" .find_max.max_delivered_pps)
            echo "| $2 workers / $1, $be | $f | $p | $(ratio "$a" "$b") |"
        done; done; done
    fi
    if ls "$OUT"/sc-*.strace >/dev/null 2>&1; then
        echo
        echo "| syscalls at a fixed rate (1 worker, strace -c -f) | fan-out | packets in+out | syscalls | per packet | top calls |"
        echo "|---|---:|---:|---:|---:|---|"
        for be in $BACKENDS; do for f in $FANOUTS; do
            s="$OUT/sc-$be-f$f.strace"; [[ -f $s ]] || continue
            pk=$(j "$OUT/sc-$be-f$f.json" '(.result.offered.packets + .result.delivered.packets)')
            calls=$(awk '$NF=="total"{print $(NF-2)}' "$s")
            top=$(awk '$1 ~ /^[0-9.]+$/ && $NF != "total" {print $NF":"$4}' "$s" | sort -t: -k2 -nr | head -3 | paste -sd' ' -)
            echo "| $be | $f | ${pk:-0} | ${calls:-0} | $(ratio "$calls" "$pk") | $top |"
        done; done
    fi
    if [[ "$RTPENGINE" == 1 ]]; then
        echo
        echo "| Sluice vs rtpengine (1 thread each, ${CPU_RATE} packets out/s asked for 5 s) | fan-out | profile | delivered of asked | daemon CPU-s | packets out per CPU-s | find-max delivered pps |"
        echo "|---|---:|---|---:|---:|---:|---:|"
        for f in $RTPE_FANOUTS; do for p in $PROFILES; do
            why=""
            for kind in sluice rtpengine; do
                r="$OUT/cpu-$kind-f$f-$p.json"
                d=$(j "$r" .result.delivered.packets); c=$(cat "$OUT/cpu-$kind-f$f-$p.cpu" 2>/dev/null || true)
                # Asked = publisher rate x send window x fan-out.
                asked=$(j "$r" "(.result.target_pps * .result.duration_s * $f)" | cut -d. -f1)
                short=$(short_of "${d:-0}" "${asked:-0}")
                [[ -n "$short" ]] && why="${why:+$why; }$kind $short"
                mx=$(j "$OUT/max-$kind-f$f-$p.json" .find_max.max_delivered_pps | cut -d. -f1)
                [[ "${mx:-0}" == 0 ]] && mx="none passed"
                echo "| $kind | $f | $p | ${d:-0} of ${asked:-?} | ${c:--} | $(ratio "$d" "$c") | $mx |"
            done
            if [[ -n "$why" ]]; then
                echo "| **Sluice / rtpengine packets per CPU-s** | $f | $p | | | no ratio: $why | |"
            else
                ds=$(j "$OUT/cpu-sluice-f$f-$p.json" .result.delivered.packets); cs=$(cat "$OUT/cpu-sluice-f$f-$p.cpu" 2>/dev/null || echo 0)
                dr=$(j "$OUT/cpu-rtpengine-f$f-$p.json" .result.delivered.packets); cr=$(cat "$OUT/cpu-rtpengine-f$f-$p.cpu" 2>/dev/null || echo 0)
                a=$(awk -v d="${ds:-0}" -v c="${cs:-0}" 'BEGIN{ if (c>0) print d/c; else print 0 }'); b=$(awk -v d="${dr:-0}" -v c="${cr:-0}" 'BEGIN{ if (c>0) print d/c; else print 0 }')
                echo "| **Sluice / rtpengine packets per CPU-s** | $f | $p | | | $(ratio "$a" "$b") | |"
            fi
        done; done
    fi
} | tee "$OUT/table.md"
echo "reports: $OUT" >&2
