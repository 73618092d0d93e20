#!/usr/bin/env bash
# Sluice vs Janus with the same WebRTC load in one run: `sluice-bench webrtc` joins each server
# as publishers and viewers (real ICE and DTLS-SRTP), sends the same SRTP load through it, and
# the server's CPU time over the run is read from /proc/PID/stat. Reports packets out per
# server CPU-second; a ratio only when both servers delivered >= 99 % of what was asked.
#
#   cargo build --release -p sluice-relay -p sluice-control -p sluicectl -p sluice-bench --bins
#   sudo scripts/bench-webrtc-compare.sh [OUTDIR]
#
# Root is needed for one veth pair whose first end gets 198.18.N.1/24 (RFC 2544's benchmarking
# range; removed at exit): Janus (libnice) gathers no loopback candidates, so both servers and
# the bench use that address. Nothing leaves the host.
#
# Environment (defaults in brackets):
#   BIN       binaries directory [target/release]
#   PUBS      publishers [2]     FANOUTS  viewers per publisher [1 10]
#   OUT_RATE  packets out per second asked at every fan-out [20000]: PUBS publishers at
#             OUT_RATE / fan-out pps in total
#   SIZE      datagram size [1200]   SECS  seconds of media [10]
#   PROFILE   SRTP profile negotiated by DTLS [AES_CM_128_HMAC_SHA1_80]
#   BACKEND   Sluice relay backend [mmsg]; one relay worker
set -euo pipefail

BIN=${BIN:-target/release}
PUBS=${PUBS:-2}
FANOUTS=${FANOUTS:-1 10}
OUT_RATE=${OUT_RATE:-20000}
SIZE=${SIZE:-1200}
SECS=${SECS:-10}
PROFILE=${PROFILE:-AES_CM_128_HMAC_SHA1_80}
BACKEND=${BACKEND:-mmsg}
JANUS_LIB=${JANUS_LIB:-/usr/lib/x86_64-linux-gnu/janus}
OUT=${1:-$(mktemp -d /tmp/sluice-bench-webrtc.XXXXXX)}
mkdir -p "$OUT"
B="$BIN/sluice-bench"
for b in sluice-bench sluicectl sluice-relay sluice-control; do
    [[ -x "$BIN/$b" ]] || { echo "missing $BIN/$b (build the release binaries first)" >&2; exit 2; }
done
command -v jq >/dev/null || { echo "jq is required" >&2; exit 2; }
command -v janus >/dev/null || { echo "janus is required (apt-get install janus)" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "run as root (a veth pair for the ICE candidates)" >&2; exit 2; }

DEV="slwb$$"
N=$(( $$ % 250 + 1 ))
IP="198.18.$N.1"
UP_PID=""; JANUS_PID=""; RT=""
SHM="/dev/shm/sluice-bench-webrtc-$$"
cleanup() {
    [[ -n "$UP_PID" ]] && { kill -TERM "$UP_PID" 2>/dev/null || true; wait "$UP_PID" 2>/dev/null || true; }
    [[ -n "$JANUS_PID" ]] && { kill -TERM "$JANUS_PID" 2>/dev/null || true; wait "$JANUS_PID" 2>/dev/null || true; }
    [[ -n "$RT" ]] && rm -rf "$RT"
    rm -f "$SHM"
    ip link del "$DEV" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
ip link add "$DEV" type veth peer name "${DEV}p"
ip addr add "$IP/24" dev "$DEV"
ip link set "${DEV}p" up
ip link set "$DEV" up

cpu_s() { # CPU seconds (user + system) of the given PIDs, from /proc/PID/stat fields 14, 15
    for p in "$@"; do cat "/proc/$p/stat"; done |
        awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); t += $12 + $13 } END { printf "%.2f\n", t / hz }'
}
free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind((sys.argv[2], 0)); print(s.getsockname()[1])' "$1" "$2"; }

echo "# machine: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(nproc) CPUs, kernel $(uname -r)" | tee "$OUT/machine.txt"
echo "# date: $(date -u +%FT%TZ), load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
echo "# janus: $(janus --version 2>/dev/null | head -1)" | tee -a "$OUT/machine.txt"

# ---- Sluice: control + one relay worker on $IP ------------------------------------------
RT=$(mktemp -d /tmp/sluice-bench-webrtc-rt.XXXXXX)
cat >"$RT/sluice.toml" <<EOF
runtime_dir = "$RT"
[relay]
bind = "$IP:$(free_port SOCK_DGRAM "$IP")"
workers = 1
backend = "$BACKEND"
recv_buffer_bytes = 8388608
send_buffer_bytes = 8388608
[control]
admin_listen = "127.0.0.1:0"
state_dir = "$RT/state"
audit_log = "$RT/audit/audit.log"
slow_path = "$RT/slow-path.sock"
bootstrap_app = "demo"
public_addresses = ["$IP"]
slow_path_per_source_rate = 20000
dtls_max_handshakes_per_ip = 64
max_sessions_per_room = 1000
[shm]
path = "$SHM"
sessions = 1024
routes = 4096
EOF
chmod 600 "$RT/sluice.toml"
"$BIN/sluicectl" up --config "$RT/sluice.toml" >"$OUT/up.log" 2>&1 &
UP_PID=$!
for _ in $(seq 150); do [[ -s "$RT/control.json" ]] && break; sleep 0.2; done
sleep 1
relay_pid=$(pgrep -n -P "$UP_PID" sluice-relay)
control_pid=$(pgrep -n -P "$UP_PID" sluice-control)

# ---- Janus: the videoroom plugin and the HTTP transport, ICE on $IP ---------------------
JD="$OUT/janus"; mkdir -p "$JD"
jport=$(free_port SOCK_STREAM 127.0.0.1)
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
printf 'general: { base_path = "/janus"\n http = true\n port = %s\n ip = "127.0.0.1"\n https = false }\nadmin: { admin_http = false }\n' "$jport" >"$JD/janus.transport.http.jcfg"
printf 'general: {\n}\n' >"$JD/janus.plugin.videoroom.jcfg"
janus -C "$JD/janus.jcfg" -F "$JD" >"$OUT/janus.log" 2>&1 &
JANUS_PID=$!
for _ in $(seq 150); do python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$jport/janus/info', timeout=2)" 2>/dev/null && break; sleep 0.2; done

# ---- the same load through each -------------------------------------------------------
for f in $FANOUTS; do
    rate=$(( OUT_RATE / f )); [[ $rate -lt 100 ]] && rate=100
    for kind in sluice janus; do
        if [[ $kind == sluice ]]; then
            pids=("$relay_pid" "$control_pid"); args=(--target-kind sluice); env=(SLUICE_RUNTIME_DIR="$RT")
        else
            pids=("$JANUS_PID"); args=(--target-kind janus --janus-url "http://127.0.0.1:$jport/janus"); env=()
        fi
        tag="$kind-f$f"
        c0=$(cpu_s "${pids[@]}")
        env "${env[@]}" "$B" webrtc "${args[@]}" --bind "$IP" --room "bench$f" --publishers "$PUBS" --fanout "$f" \
            --profile "$PROFILE" --size "$SIZE" --rate "$rate" --duration "$SECS" --drain-ms 1000 \
            --quiet --json "$OUT/$tag.json" >"$OUT/$tag.txt" 2>&1 || true
        echo "$(cpu_s "${pids[@]}") $c0" | awk '{printf "%.2f\n", $1 - $2}' >"$OUT/$tag.cpu"
    done
done

# ---- table ----------------------------------------------------------------------------
j() { jq -r "$2 // empty" "$1" 2>/dev/null || true; }
{
    cat "$OUT/machine.txt"
    echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| server | fan-out | joins ok / failed | handshakes/s | join p50 / p99 ms | 1st media p50 / p99 ms | delivered of asked | loss | p50 / p99 µs | server CPU-s | packets out per CPU-s |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for f in $FANOUTS; do
        declare -A per=()
        why=""
        for kind in sluice janus; do
            r="$OUT/$kind-f$f.json"; c=$(cat "$OUT/$kind-f$f.cpu" 2>/dev/null || echo 0)
            d=$(j "$r" .result.delivered.packets); asked=$(j "$r" "(.result.target_pps * .result.duration_s * $f)" | cut -d. -f1)
            p=$(awk -v d="${d:-0}" -v c="$c" 'BEGIN{ if (c>0) printf "%.0f", d/c; else print 0 }')
            per[$kind]=$p
            short=$(awk -v d="${d:-0}" -v a="${asked:-0}" 'BEGIN{ if (a<=0) print "has no report"; else if (d < 0.99*a) printf "delivered %d of %d asked", d, a }')
            [[ -n "$short" ]] && why="${why:+$why; }$kind $short"
            printf '| %s | %s | %s / %s | %.1f | %.1f / %.1f | %.1f / %.1f | %s of %s | %s | %.0f / %.0f | %s | %s |\n' "$kind" "$f" \
                "$(j "$r" .webrtc.handshakes)" "$(j "$r" .webrtc.failed)" "$(j "$r" .webrtc.handshakes_per_s)" \
                "$(j "$r" .webrtc.join_ms.p50)" "$(j "$r" .webrtc.join_ms.p99)" \
                "$(j "$r" .webrtc.first_media_ms.p50)" "$(j "$r" .webrtc.first_media_ms.p99)" \
                "${d:-0}" "${asked:-?}" "$(j "$r" .result.loss_ratio)" \
                "$(j "$r" .result.latency.p50_us)" "$(j "$r" .result.latency.p99_us)" "$c" "$p"
        done
        if [[ -n "$why" ]]; then
            echo "| **Sluice / Janus packets per CPU-s** | $f | | | | | | | | | no ratio: $why |"
        else
            echo "| **Sluice / Janus packets per CPU-s** | $f | | | | | | | | | $(awk -v a="${per[sluice]}" -v b="${per[janus]}" 'BEGIN{ if (a>0 && b>0) printf "%.2f", a/b; else print "-" }') |"
        fi
    done
} | tee "$OUT/table.md"
echo "reports: $OUT" >&2
