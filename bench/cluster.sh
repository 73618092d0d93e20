#!/usr/bin/env bash
# Cascade and scale-out figures in one run (docs/BENCHMARKS.md "Cascade and scale-out across
# nodes"): three loopback nodes (`sluicectl up` each on its own runtime directory, shm
# file and media port, one relay worker each), then
#   1. cascade overhead: `run --targets A,B --cascade`: two publishers on A, the subscribers of
#      one on A and of the other on B, fed from A over a static trunk; each relay's CPU per
#      delivered packet, from the same run;
#   2. scale-out: `find-max` with 0 loss on A alone (one publisher, FANOUT subscribers) and
#      over A, B and C with `--cascade` (three publishers on A, FANOUT subscribers of each on
#      one node): the highest delivered rate each sustained, and their ratio.
# The daemons run under `taskset -c RELAY_CPUS`, the bench under `taskset -c BENCH_CPUS`.
# Loopback only; needs release binaries:
#
#   cargo build --release -p sluice-relay -p sluice-control -p sluicectl -p sluice-bench --bins
#   bench/cluster.sh [OUTDIR]
#
# Environment (defaults in brackets): BIN [target/release], RELAY_CPUS [1], BENCH_CPUS [0],
# FANOUT [1000], CASCADE_FANOUT [500], CASCADE_RATE (total publisher pps) [100],
# DURATION (seconds of the cascade run) [10], STEP (find-max step seconds) [2], STEPS [10],
# START (find-max first rate, total publisher pps) [20].
set -euo pipefail

BIN=${BIN:-target/release}
RELAY_CPUS=${RELAY_CPUS:-1}
BENCH_CPUS=${BENCH_CPUS:-0}
FANOUT=${FANOUT:-1000}
CASCADE_FANOUT=${CASCADE_FANOUT:-500}
CASCADE_RATE=${CASCADE_RATE:-100}
DURATION=${DURATION:-10}
STEP=${STEP:-2}
STEPS=${STEPS:-10}
START=${START:-20}
OUT=${1:-$(mktemp -d /tmp/sluice-cluster-bench.XXXXXX)}
mkdir -p "$OUT"
for b in sluice-bench sluicectl sluice-relay sluice-control; do
    [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (build the release binaries first)" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "jq is required" >&2; exit 2; }
B=(taskset -c "$BENCH_CPUS" "$BIN/sluice-bench")

PIDS=()
DIRS=()
URLS=()
TOKENS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for d in "${DIRS[@]}"; do rm -rf "$d"; rm -f "/dev/shm/$(basename "$d")"; done
}
trap cleanup EXIT INT TERM

echo "# machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) CPUs, kernel $(uname -r)" | tee "$OUT/machine.txt"
echo "# date: $(date -u +%FT%TZ), load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"

start_node() { # index
    local rt port
    rt=$(mktemp -d /tmp/sluice-cluster-node.XXXXXX)
    DIRS+=("$rt")
    # A free port chosen here: with port 0 the admin API would report port 0.
    port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat >"$rt/sluice.toml" <<EOF
runtime_dir = "$rt"
[relay]
bind = "127.0.0.1:$port"
workers = 1
backend = "mmsg"
# The transmit queue holds 8 x batch datagrams and one datagram's fan-out must fit in it
# (docs/IO.md): 128 lets one publisher reach 1,000 subscribers (64 would stop at 512).
batch = 128
recv_buffer_bytes = 8388608
send_buffer_bytes = 8388608
[control]
admin_listen = "127.0.0.1:0"
state_dir = "$rt/state"
audit_log = "$rt/audit/audit.log"
slow_path = "$rt/slow-path.sock"
[shm]
path = "/dev/shm/$(basename "$rt")"
sessions = 4096
routes = 8192
EOF
    taskset -c "$RELAY_CPUS" "$BIN/sluicectl" up --config "$rt/sluice.toml" >"$OUT/up-$1.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 150); do
        if [[ -s "$rt/control.json" ]]; then
            local url token
            url=$(jq -r .admin_url "$rt/control.json")
            token=$(jq -r .admin_token "$rt/control.json")
            if "${B[@]}" run --api "$url" --token="$token" --duration 0.3 --rate 200 --max-loss 50 --quiet >/dev/null 2>&1; then
                URLS+=("$url")
                TOKENS+=("$token")
                return 0
            fi
        fi
        sleep 0.2
    done
    echo "node $1 did not come up; see $OUT/up-$1.log" >&2
    return 1
}

for i in 0 1 2; do start_node "$i"; done
join() { local IFS=,; echo "$*"; }

# 1. Cascade overhead.
"${B[@]}" run --targets "$(join "${URLS[0]}" "${URLS[1]}")" --tokens="$(join "${TOKENS[0]}" "${TOKENS[1]}")" \
    --cascade --publishers 2 --fanout "$CASCADE_FANOUT" --rate "$CASCADE_RATE" \
    --duration "$DURATION" --quiet --json "$OUT/cascade.json" | tee "$OUT/cascade.txt"

# 2. Scale-out: one node, then three.
search=(--start-rate "$START" --step-duration "$STEP" --max-steps "$STEPS" --precision 5 --loss 0 --quiet)
"${B[@]}" find-max --targets "${URLS[0]}" --tokens="${TOKENS[0]}" --publishers 1 --fanout "$FANOUT" \
    "${search[@]}" --json "$OUT/single.json" | tee "$OUT/single.txt"
"${B[@]}" find-max --targets "$(join "${URLS[@]}")" --tokens="$(join "${TOKENS[@]}")" --cascade \
    --publishers 3 --fanout "$FANOUT" "${search[@]}" --json "$OUT/three.json" | tee "$OUT/three.txt"

echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
origin=$(jq '.nodes[0].relay_cpu_ns_per_delivered' "$OUT/cascade.json")
edge=$(jq '.nodes[1].relay_cpu_ns_per_delivered' "$OUT/cascade.json")
single=$(jq '.find_max.max_delivered_pps' "$OUT/single.json")
three=$(jq '.find_max.max_delivered_pps' "$OUT/three.json")
{
    echo "cascade: relay CPU per delivered packet: origin $origin ns, edge $edge ns, edge/origin $(awk -v e="$edge" -v o="$origin" 'BEGIN{printf "%.3f", e/o}')"
    echo "scale-out at 0 loss: one node $single delivered pps, three nodes $three, ratio $(awk -v t="$three" -v s="$single" 'BEGIN{printf "%.2f", t/s}')"
} | tee "$OUT/summary.txt"
