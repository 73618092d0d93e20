#!/usr/bin/env bash
# The xdp backend against mmsg over a veth pair between two network namespaces (the setup of
# docs/BENCHMARKS.md "AF_XDP over veth"): control and the relay (one worker) in one namespace,
# sluice-bench in the other, the same offered load at fan-out 1 and 10, both backends in turn,
# ROUNDS rounds alternating. Prints packets out per relay CPU-second per run and the ratio
# xdp / mmsg per round. Needs root (namespaces, XDP).
#
#   cargo build --release -p sluice-relay -p sluice-control -p sluice-bench --bins
#   bench/xdp-veth.sh [OUTDIR]
#
# Environment: BIN (release binaries, default target/release), ROUNDS [3], RATE1 [40000]
# (publisher pps at fan-out 1), RATE10 [4000] (at fan-out 10: the same packets out), DURATION
# [5] seconds, PUBS [4], PROFILE [AES_CM_128_HMAC_SHA1_80], SIZE [1200].
set -euo pipefail
BIN=${BIN:-target/release}
ROUNDS=${ROUNDS:-3}
RATE1=${RATE1:-40000}
RATE10=${RATE10:-4000}
DURATION=${DURATION:-5}
PUBS=${PUBS:-4}
PROFILE=${PROFILE:-AES_CM_128_HMAC_SHA1_80}
SIZE=${SIZE:-1200}
OUT=${1:-$(mktemp -d /tmp/sluice-xdp-veth.XXXXXX)}
mkdir -p "$OUT"
NR=sxb-relay-$$ NP=sxb-peers-$$
RT=$(mktemp -d /tmp/sluice-xdp-rt.XXXXXX)
SHM=/dev/shm/sluice-xdp-bench-$$
CTL="" REL=""
cleanup() {
    [[ -n "$REL" ]] && kill -TERM "$REL" 2>/dev/null && wait "$REL" 2>/dev/null
    [[ -n "$CTL" ]] && kill -TERM "$CTL" 2>/dev/null && wait "$CTL" 2>/dev/null
    ip netns del "$NR" 2>/dev/null; ip netns del "$NP" 2>/dev/null
    rm -rf "$RT" "$SHM"
}
trap cleanup EXIT
ip netns add "$NR"; ip netns add "$NP"
ip link add vxr netns "$NR" type veth peer name vxp netns "$NP"
ip -n "$NR" addr add 10.203.0.1/24 dev vxr; ip -n "$NP" addr add 10.203.0.2/24 dev vxp
for ns in "$NR" "$NP"; do ip -n "$ns" link set lo up; done
ip -n "$NR" link set vxr up; ip -n "$NP" link set vxp up

cpu_s() { awk '{ printf "%.3f\n", ($14 + $15) / 100 }' "/proc/$1/stat"; }
echo "# machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) CPUs, kernel $(uname -r), $(date -u +%F)" | tee "$OUT/machine.txt"

cat >"$RT/sluice.toml" <<EOF2
runtime_dir = "$RT"
[relay]
bind = "10.203.0.1:4443"
workers = 1
backend = "mmsg"
recv_buffer_bytes = 8388608
send_buffer_bytes = 8388608
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
ip netns exec "$NR" "$BIN/sluice-control" --config "$RT/sluice.toml" >"$OUT/control.log" 2>&1 &
CTL=$!
for _ in $(seq 100); do [[ -s "$RT/control.json" && -e "$SHM" ]] && break; sleep 0.1; done

run_backend() { # backend round
    ip netns exec "$NR" "$BIN/sluice-relay" --config "$RT/sluice.toml" --backend "$1" --no-pin \
        >"$OUT/relay-$1-$2.log" 2>&1 &
    REL=$!
    for _ in $(seq 100); do
        ip netns exec "$NP" "$BIN/sluice-bench" run --bind 10.203.0.2 --duration 0.3 --rate 200 \
            --max-loss 50 --quiet >/dev/null 2>&1 && break
        sleep 0.2
    done
    for f in 1 10; do
        local rate=$RATE1; [[ $f == 10 ]] && rate=$RATE10
        local tag="$1-f$f-r$2"
        local c0; c0=$(cpu_s "$REL")
        ip netns exec "$NP" "$BIN/sluice-bench" run --bind 10.203.0.2 --publishers "$PUBS" \
            --fanout "$f" --profile "$PROFILE" --size "$SIZE" --rate "$rate" \
            --duration "$DURATION" --quiet --json "$OUT/$tag.json" >/dev/null || true
        echo "$(cpu_s "$REL") $c0" | awk '{ printf "%.3f\n", $1 - $2 }' >"$OUT/$tag.cpu"
    done
    kill -TERM "$REL"; wait "$REL" || true; REL=""
}
for r in $(seq "$ROUNDS"); do
    for be in mmsg xdp; do run_backend "$be" "$r"; done
done

j() { jq -r "$2" "$1" 2>/dev/null || echo 0; }
echo "| round | fan-out | backend | offered | delivered | loss % | relay CPU-s | packets out per relay CPU-s |"
echo "|---|---|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do for f in 1 10; do for be in mmsg xdp; do
    t="$OUT/$be-f$f-r$r"
    o=$(j "$t.json" .result.offered.packets); d=$(j "$t.json" .result.delivered.packets)
    l=$(j "$t.json" .result.loss_ratio); c=$(cat "$t.cpu")
    awk -v r="$r" -v f="$f" -v b="$be" -v o="$o" -v d="$d" -v c="$c" -v l="$l" 'BEGIN {
        loss = 100 * l
        printf "| %s | %s | %s | %d | %d | %.3f | %.2f | %.0f |\n", r, f, b, o, d, loss, c, (c > 0) ? d / c : 0 }'
done; done; done | tee "$OUT/table.md"
echo
echo "| round | fan-out | xdp / mmsg packets out per relay CPU-s |"
echo "|---|---|---|"
for r in $(seq "$ROUNDS"); do for f in 1 10; do
    a=$(awk -v d="$(j "$OUT/xdp-f$f-r$r.json" .result.delivered.packets)" -v c="$(cat "$OUT/xdp-f$f-r$r.cpu")" 'BEGIN{print (c>0)?d/c:0}')
    b=$(awk -v d="$(j "$OUT/mmsg-f$f-r$r.json" .result.delivered.packets)" -v c="$(cat "$OUT/mmsg-f$f-r$r.cpu")" 'BEGIN{print (c>0)?d/c:0}')
    awk -v r="$r" -v f="$f" -v a="$a" -v b="$b" 'BEGIN{ printf "| %s | %s | %.2f |\n", r, f, (b>0)?a/b:0 }'
done; done | tee "$OUT/ratio.md"
echo "results in $OUT" >&2
