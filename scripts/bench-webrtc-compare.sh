#!/usr/bin/env bash
# Sluice vs Janus with the same WebRTC load in one run: `sluice-bench webrtc` joins each server
# as publishers and viewers (real ICE and DTLS-SRTP), sends the same SRTP load through it, and
# reads the server's CPU time from /proc/PID/stat (`--server-pid`) over the joins and over the
# media apart. Reports packets out per server CPU-second of the media (and of the whole run,
# joins included); a ratio only when both servers delivered >= 99 % of what was asked. Then,
# per server and fan-out, `webrtc --find-max` over one set of joins.
#
#   cargo build --release -p sluice-relay -p sluice-control -p sluicectl -p sluice-bench --bins
#   sudo scripts/bench-webrtc-compare.sh [OUTDIR]
#
# Root is needed for two network namespaces joined by one veth pair (removed at exit): the
# servers (Sluice's control and relay per backend, Janus) on 198.18.N.1 in one, the bench on
# 198.18.N.2 in the other (RFC 2544's benchmarking range; nothing leaves the host). Every
# packet crosses the veth pair, which is what the xdp backend needs (it steers one interface).
#
# Environment (defaults in brackets):
#   BIN       binaries directory [target/release]
#   PUBS      publishers [2]     FANOUTS  viewers per publisher [1 10]
#   OUT_RATE  packets out per second asked at every fan-out [20000]: PUBS publishers at
#             OUT_RATE / fan-out pps in total
#   SIZE      datagram size [1200]   SECS  seconds of media [10]
#   PROFILE   SRTP profile negotiated by DTLS [AES_CM_128_HMAC_SHA1_80]
#   BACKENDS  Sluice relay backends, one Sluice instance each [mmsg]; e.g. "mmsg xdp"
#             (one relay worker each)
#   FIND_MAX  1 = also `webrtc --find-max` per server and fan-out [1]
#   FM_START  its first rate in packets out per second (divided by the fan-out) [10000]
#   FM_MAX    its highest, likewise [400000]    STEP  seconds per step [2]
#   STEPS     step budget [8]                   LOSS  loss threshold in percent [0.1]
#   PERF      1 = `perf record -g` each server for PERF_SECS [4] of an extra fixed-rate run at
#             the last fan-out, after its joins, split by scripts/bench-perf-split.py into
#             OUTDIR/perf-KIND-fF.split.txt (user space, own send path, receivers' stack, ...) [0]
set -euo pipefail

BIN=${BIN:-target/release}
PUBS=${PUBS:-2}
FANOUTS=${FANOUTS:-1 10}
OUT_RATE=${OUT_RATE:-20000}
SIZE=${SIZE:-1200}
SECS=${SECS:-10}
PROFILE=${PROFILE:-AES_CM_128_HMAC_SHA1_80}
BACKENDS=${BACKENDS:-mmsg}
FIND_MAX=${FIND_MAX:-1}
FM_START=${FM_START:-10000}
FM_MAX=${FM_MAX:-400000}
STEP=${STEP:-2}
STEPS=${STEPS:-8}
LOSS=${LOSS:-0.1}
PERF=${PERF:-0}
PERF_SECS=${PERF_SECS:-4}
JANUS_LIB=${JANUS_LIB:-/usr/lib/x86_64-linux-gnu/janus}
OUT=${1:-$(mktemp -d /tmp/sluice-bench-webrtc.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BIN=$(cd "$BIN" && pwd)
B="$BIN/sluice-bench"
for b in sluice-bench sluicectl sluice-relay sluice-control; do
    [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (build the release binaries first)" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "jq is required" >&2; exit 2; }
command -v janus >/dev/null || { echo "janus is required (apt-get install janus)" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "run as root (network namespaces and a veth pair)" >&2; exit 2; }
if [[ "$PERF" == 1 ]]; then command -v perf >/dev/null || { echo "PERF=1 needs perf" >&2; exit 2; }; fi

N=$(( $$ % 250 + 1 ))
IP="198.18.$N.1"
PEER="198.18.$N.2"
NR="slwb-srv-$$"
NP="slwb-peers-$$"
JANUS_PID=""
declare -A RT=() SHM=() RELAY=() CONTROL=()
cleanup() {
    for k in "${!RELAY[@]}"; do kill -TERM "${RELAY[$k]}" 2>/dev/null || true; wait "${RELAY[$k]}" 2>/dev/null || true; done
    for k in "${!CONTROL[@]}"; do kill -TERM "${CONTROL[$k]}" 2>/dev/null || true; wait "${CONTROL[$k]}" 2>/dev/null || true; done
    [[ -n "$JANUS_PID" ]] && { kill -TERM "$JANUS_PID" 2>/dev/null || true; wait "$JANUS_PID" 2>/dev/null || true; }
    for k in "${!RT[@]}"; do rm -rf "${RT[$k]}" "${SHM[$k]}"; done
    ip netns del "$NR" 2>/dev/null || true
    ip netns del "$NP" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
ip netns add "$NR"
ip netns add "$NP"
ip link add vwr netns "$NR" type veth peer name vwp netns "$NP"
ip -n "$NR" addr add "$IP/24" dev vwr
ip -n "$NP" addr add "$PEER/24" dev vwp
for ns in "$NR" "$NP"; do ip -n "$ns" link set lo up; done
ip -n "$NR" link set vwr up
ip -n "$NP" link set vwp up
srv() { ip netns exec "$NR" "$@"; }
peers() { ip netns exec "$NP" "$@"; }

cpu_s() { # CPU seconds (user + system) of the given PIDs, from /proc/PID/stat fields 14, 15
    for p in "$@"; do cat "/proc/$p/stat"; done |
        awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); t += $12 + $13 } END { printf "%.2f\n", t / hz }'
}
free_port() { # SOCK_DGRAM|SOCK_STREAM, on $IP in the servers' namespace
    srv python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind((sys.argv[2], 0)); print(s.getsockname()[1])' "$1" "$IP"
}
answers() { peers python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

echo "# machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) CPUs, kernel $(uname -r)" | tee "$OUT/machine.txt"
echo "# date: $(date -u +%FT%TZ), load before: $(load)" | tee -a "$OUT/machine.txt"
echo "# janus: $(janus --version 2>/dev/null | head -1)" | tee -a "$OUT/machine.txt"

# ---- Sluice: control + one relay worker on $IP, one instance per backend ------------------
# Started directly rather than by `sluicectl up`, which would put a self-signed HTTPS listener
# on a public address that is not loopback (the bench speaks plain HTTP only).
for be in $BACKENDS; do
    rt=$(mktemp -d /tmp/sluice-bench-webrtc-rt.XXXXXX)
    RT[$be]=$rt
    SHM[$be]="/dev/shm/sluice-bench-webrtc-$$-$be"
    cat >"$rt/sluice.toml" <<EOF
runtime_dir = "$rt"
[relay]
bind = "$IP:$(free_port SOCK_DGRAM)"
workers = 1
backend = "$be"
recv_buffer_bytes = 8388608
send_buffer_bytes = 8388608
[control]
admin_listen = "unix:$rt/admin.sock"
public_listen = "$IP:$(free_port SOCK_STREAM)"
state_dir = "$rt/state"
audit_log = "$rt/audit/audit.log"
slow_path = "$rt/slow-path.sock"
bootstrap_app = "demo"
public_addresses = ["$IP"]
slow_path_per_source_rate = 20000
dtls_max_handshakes_per_ip = 64
max_sessions_per_room = 1000
[shm]
path = "${SHM[$be]}"
sessions = 1024
routes = 4096
EOF
    chmod 600 "$rt/sluice.toml"
    # `ip netns exec` execs the program, so $! is the daemon's own PID.
    ip netns exec "$NR" env SLUICE_RUNTIME_DIR="$rt" "$BIN/sluice-control" --config "$rt/sluice.toml" \
        >"$OUT/control-$be.log" 2>&1 &
    CONTROL[$be]=$!
    for _ in $(seq 150); do [[ -s "$rt/control.json" && -e "${SHM[$be]}" ]] && break; sleep 0.2; done
    [[ -s "$rt/control.json" ]] || { echo "sluice-control ($be) did not start; see $OUT/control-$be.log" >&2; exit 1; }
    ip netns exec "$NR" "$BIN/sluice-relay" --config "$rt/sluice.toml" >"$OUT/relay-$be.log" 2>&1 &
    RELAY[$be]=$!
    for _ in $(seq 150); do grep -q 'sluice-relay forwarding' "$OUT/relay-$be.log" && break; sleep 0.2; done
    grep -q 'sluice-relay forwarding' "$OUT/relay-$be.log" || { echo "sluice-relay ($be) did not start; see $OUT/relay-$be.log" >&2; exit 1; }
    sleep 1
done

# ---- Janus: the videoroom plugin and the HTTP transport on $IP, ICE on $IP ---------------
JD="$OUT/janus"; mkdir -p "$JD"
jport=$(free_port SOCK_STREAM)
JURL="http://$IP:$jport/janus"
dis() { local s=""; for x in "$@"; do s="${s:+$s,}libjanus_$x.so"; done; echo "$s"; }
cat >"$JD/janus.jcfg" <<EOF
general: {
  configs_folder = "$JD"
  plugins_folder = "$JANUS_LIB/plugins"
  transports_folder = "$JANUS_LIB/transports"
  events_folder = "$JANUS_LIB/events"
  loggers_folder = "$JANUS_LIB/loggers"
  debug_level = 3
}
plugins: { disable = "$(dis audiobridge duktape echotest lua nosip recordplay sip streaming textroom videocall voicemail)" }
transports: { disable = "$(dis mqtt nanomsg pfunix rabbitmq websockets)" }
loggers: { disable = "libjanus_jsonlog.so" }
events: { broadcast = false
  disable = "$(dis gelfevh mqttevh nanomsgevh rabbitmqevh sampleevh wsevh)" }
nat: { ice_enforce_list = "$IP"
  ignore_mdns = true }
EOF
printf 'general: { base_path = "/janus"\n http = true\n port = %s\n ip = "%s"\n https = false }\nadmin: { admin_http = false }\n' "$jport" "$IP" >"$JD/janus.transport.http.jcfg"
printf 'general: {\n}\n' >"$JD/janus.plugin.videoroom.jcfg"
ip netns exec "$NR" janus -C "$JD/janus.jcfg" -F "$JD" >"$OUT/janus.log" 2>&1 &
JANUS_PID=$!
for _ in $(seq 150); do answers "$JURL/info" && break; sleep 0.2; done

# Servers in the order each fan-out runs them: every Sluice backend, then Janus.
KINDS=""; for be in $BACKENDS; do KINDS="$KINDS sluice-$be"; done; KINDS="$KINDS janus"
server() { # kind -> sets pids, args, env
    if [[ $1 == janus ]]; then
        pids=("$JANUS_PID"); args=(--target-kind janus --janus-url "$JURL"); env=()
    else
        local be=${1#sluice-}
        pids=("${RELAY[$be]}" "${CONTROL[$be]}"); args=(--target-kind sluice); env=(SLUICE_RUNTIME_DIR="${RT[$be]}")
    fi
}
webrtc() { # kind tag room fan-out ARGS...: one bench run, whole-run server CPU in $OUT/tag.cpu
    local kind=$1 tag=$2 room=$3 f=$4; shift 4
    server "$kind"
    local c0; c0=$(cpu_s "${pids[@]}")
    peers env "${env[@]}" "$B" webrtc "${args[@]}" --bind "$PEER" --room "$room" --publishers "$PUBS" \
        --fanout "$f" --profile "$PROFILE" --size "$SIZE" --drain-ms 1000 \
        --server-pid "$(IFS=,; echo "${pids[*]}")" --json "$OUT/$tag.json" "$@" >"$OUT/$tag.txt" 2>&1 || true
    echo "$(cpu_s "${pids[@]}") $c0" | awk '{printf "%.2f\n", $1 - $2}' >"$OUT/$tag.cpu"
}

# ---- the same load through each, interleaved per fan-out --------------------------------
for f in $FANOUTS; do
    rate=$(( OUT_RATE / f )); [[ $rate -lt 100 ]] && rate=100
    for kind in $KINDS; do
        webrtc "$kind" "$kind-f$f" "bench$f" "$f" --rate "$rate" --duration "$SECS" --quiet
    done
    if [[ "$FIND_MAX" == 1 ]]; then
        start=$(( FM_START / f )); [[ $start -lt 100 ]] && start=100
        max=$(( FM_MAX / f ))
        for kind in $KINDS; do
            webrtc "$kind" "fm-$kind-f$f" "fm$f" "$f" --find-max --start-rate "$start" --max-rate "$max" \
                --step-duration "$STEP" --max-steps "$STEPS" --loss "$LOSS"
        done
    fi
done

# ---- profiles: the same fixed load, perf attached after the joins ------------------------
if [[ "$PERF" == 1 ]]; then
    f=${FANOUTS##* }
    rate=$(( OUT_RATE / f )); [[ $rate -lt 100 ]] && rate=100
    for kind in $KINDS; do
        server "$kind"
        tag="perf-$kind-f$f"
        peers env "${env[@]}" "$B" webrtc "${args[@]}" --bind "$PEER" --room "perf$f" --publishers "$PUBS" \
            --fanout "$f" --profile "$PROFILE" --size "$SIZE" --rate "$rate" --duration $(( PERF_SECS + 4 )) \
            --drain-ms 1000 --server-pid "$(IFS=,; echo "${pids[*]}")" --json "$OUT/$tag.json" >"$OUT/$tag.txt" 2>&1 &
        bp=$!
        # The bench says "set up N sessions" once every join is done and media starts.
        for _ in $(seq 300); do grep -q '^set up' "$OUT/$tag.txt" 2>/dev/null && break; sleep 0.1; done
        sleep 1
        c0=$(cpu_s "${pids[@]}")
        perf record -g -o "$OUT/$tag.perf.data" -p "$(IFS=,; echo "${pids[*]}")" -- sleep "$PERF_SECS" \
            >"$OUT/$tag.perf.log" 2>&1 || true
        c1=$(cpu_s "${pids[@]}")
        wait "$bp" || true
        # Where the CPU went per packet out (the asked rate over the recording).
        perf script -i "$OUT/$tag.perf.data" 2>/dev/null | python3 "$(dirname "$0")/bench-perf-split.py" \
            --packets $(( rate * f * PERF_SECS )) --cpu-s "$(awk -v a="$c1" -v b="$c0" 'BEGIN{print a-b}')" \
            >"$OUT/$tag.split.txt" || true
        perf report -i "$OUT/$tag.perf.data" --no-children --sort comm,dso --stdio -g none 2>/dev/null \
            | grep -v '^#' | grep -v '^$' | head -40 >"$OUT/$tag.dso.txt" || true
        perf report -i "$OUT/$tag.perf.data" --no-children --sort sym --stdio -g none 2>/dev/null \
            | grep -v '^#' | grep -v '^$' | head -60 >"$OUT/$tag.sym.txt" || true
    done
fi

# ---- tables ----------------------------------------------------------------------------
j() { jq -r "$2 // empty" "$1" 2>/dev/null || true; }
per_cpu() { awk -v d="${1:-0}" -v c="${2:-0}" 'BEGIN{ if (c>0) printf "%.0f", d/c; else print 0 }'; }
ratio() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN{ if (a>0 && b>0) printf "%.2f", a/b; else print "-" }'; }
{
    cat "$OUT/machine.txt"
    echo "# load after: $(load)"
    echo
    echo "Fixed rate: PUBS=$PUBS publishers, $OUT_RATE packets out/s asked, $SECS s of media. CPU-s: joins / media / whole run (joins, media, teardown)."
    echo
    echo "| server | fan-out | joins ok / failed | handshakes/s | join p50 / p99 ms | 1st media p50 / p99 ms | delivered of asked | loss | p50 / p99 µs | server CPU-s joins / media / run | out per media CPU-s | out per run CPU-s |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for f in $FANOUTS; do
        declare -A media=() whole=() short=()
        for kind in $KINDS; do
            r="$OUT/$kind-f$f.json"; c=$(cat "$OUT/$kind-f$f.cpu" 2>/dev/null || echo 0)
            d=$(j "$r" .result.delivered.packets); asked=$(j "$r" "(.result.target_pps * .result.duration_s * $f)" | cut -d. -f1)
            mc=$(j "$r" '(.server_cpu.cpu.user_s + .server_cpu.cpu.system_s)')
            jc=$(j "$r" '(.webrtc.join_cpu.user_s + .webrtc.join_cpu.system_s)')
            media[$kind]=$(per_cpu "$d" "$mc"); whole[$kind]=$(per_cpu "$d" "$c")
            short[$kind]=$(awk -v d="${d:-0}" -v a="${asked:-0}" 'BEGIN{ if (a<=0) print "has no report"; else if (d < 0.99*a) printf "delivered %d of %d asked", d, a }')
            printf '| %s | %s | %s / %s | %.1f | %.1f / %.1f | %.1f / %.1f | %s of %s | %s | %.0f / %.0f | %.2f / %.2f / %s | %s | %s |\n' "$kind" "$f" \
                "$(j "$r" .webrtc.handshakes)" "$(j "$r" .webrtc.failed)" "$(j "$r" .webrtc.handshakes_per_s)" \
                "$(j "$r" .webrtc.join_ms.p50)" "$(j "$r" .webrtc.join_ms.p99)" \
                "$(j "$r" .webrtc.first_media_ms.p50)" "$(j "$r" .webrtc.first_media_ms.p99)" \
                "${d:-0}" "${asked:-?}" "$(j "$r" .result.loss_ratio)" \
                "$(j "$r" .result.latency.p50_us)" "$(j "$r" .result.latency.p99_us)" \
                "${jc:-0}" "${mc:-0}" "$c" "${media[$kind]}" "${whole[$kind]}"
        done
        pairs=""
        for be in $BACKENDS; do pairs="$pairs sluice-$be/janus"; done
        [[ " $BACKENDS " == *" mmsg "* && " $BACKENDS " == *" xdp "* ]] && pairs="$pairs sluice-xdp/sluice-mmsg"
        for p in $pairs; do
            a=${p%/*}; b=${p#*/}
            why=""
            for k in "$a" "$b"; do [[ -n "${short[$k]}" ]] && why="${why:+$why; }$k ${short[$k]}"; done
            if [[ -n "$why" ]]; then
                echo "| **$a / $b packets per CPU-s** | $f | | | | | | | | | no ratio: $why | |"
            else
                echo "| **$a / $b packets per CPU-s** | $f | | | | | | | | | $(ratio "${media[$a]}" "${media[$b]}") | $(ratio "${whole[$a]}" "${whole[$b]}") |"
            fi
        done
        unset media whole short
    done
    if [[ "$FIND_MAX" == 1 ]]; then
        echo
        echo "find-max over one set of joins: loss <= $LOSS %, $STEP s steps, at most $STEPS, from $FM_START / fan-out pps."
        echo
        echo "| server | fan-out | joins ok / failed | max publisher pps | max delivered pps | ceiling found | steps | loss at max | p99 µs at max | out per media CPU-s at max |"
        echo "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"
        for f in $FANOUTS; do
            declare -A best=() fmwhy=()
            for kind in $KINDS; do
                r="$OUT/fm-$kind-f$f.json"
                mo=$(j "$r" .find_max.max_offered_pps); md=$(j "$r" .find_max.max_delivered_pps)
                cf=$(j "$r" '.find_max.ceiling_found | tostring')
                best[$kind]=${md:-0}
                if [[ ! -s "$r" ]]; then fmwhy[$kind]="has no report"
                elif awk -v m="${md:-0}" 'BEGIN{ exit !(m <= 0) }'; then fmwhy[$kind]="no step passed"
                elif [[ "$cf" != true ]]; then fmwhy[$kind]="reached no ceiling (a lower bound)"
                else fmwhy[$kind]=""; fi
                printf '| %s | %s | %s / %s | %.0f | %.0f | %s | %s | %s | %s | %s |\n' "$kind" "$f" \
                    "$(j "$r" .webrtc.handshakes)" "$(j "$r" .webrtc.failed)" "${mo:-0}" "${md:-0}" "${cf:-?}" \
                    "$(j "$r" '.find_max.steps | length')" "$(j "$r" .result.loss_ratio)" \
                    "$(j "$r" '.result.latency.p99_us | floor')" "$(j "$r" '.server_cpu.delivered_per_cpu_s | floor')"
            done
            for be in $BACKENDS; do
                a="sluice-$be"; why=""
                for k in "$a" janus; do [[ -n "${fmwhy[$k]}" ]] && why="${why:+$why; }$k ${fmwhy[$k]}"; done
                if [[ -n "$why" ]]; then
                    echo "| **$a / janus max delivered** | $f | | | | | | | | no ratio: $why |"
                else
                    echo "| **$a / janus max delivered** | $f | | | $(ratio "${best[$a]}" "${best[janus]}") | | | | | |"
                fi
            done
            unset best fmwhy
        done
    fi
} | tee "$OUT/table.md"
echo "reports: $OUT" >&2
