# Shared by the measurement scripts (soak.sh, upgrade_bench.sh, garbage-bench.sh); source it
# from the repository root.

# BIN_DIR: as given, else target/release when it holds all four binaries, else target/debug.
# Exits with status 2 (naming the script, $1) when a binary is missing.
sluice_bin_dir() {
    if [[ -z "${BIN_DIR:-}" ]]; then
        BIN_DIR=target/debug
        if [[ -x target/release/sluicectl && -x target/release/sluice-control \
              && -x target/release/sluice-relay && -x target/release/sluice-bench ]]; then
            BIN_DIR=target/release
        fi
    fi
    local b
    for b in sluicectl sluice-control sluice-relay sluice-bench; do
        [[ -x "$BIN_DIR/$b" ]] || { echo "$1: $BIN_DIR/$b missing (cargo build --release --bins)" >&2; exit 2; }
    done
    command -v python3 >/dev/null || { echo "$1: python3 is needed to read JSON" >&2; exit 2; }
}

# Write "$OUT/sluice.toml" for a loopback appliance on a free UDP port, with runtime dir
# "$OUT/run" and shm "$OUT/shm"; export SLUICE_RUNTIME_DIR so sluicectl and the bench find
# it. Arguments: workers, backend, then any further `[relay]` lines.
sluice_config() {
    local workers=$1 backend=$2
    shift 2
    mkdir -p "$OUT/run"
    local port
    port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    {
        echo "runtime_dir = \"$OUT/run\""
        echo "[relay]"
        echo "bind = \"127.0.0.1:$port\""
        echo "workers = $workers"
        [[ -n "$backend" ]] && echo "backend = \"$backend\""
        local line
        for line in "$@"; do echo "$line"; done
        echo "[control]"
        echo "admin_listen = \"127.0.0.1:0\""
        echo "[shm]"
        echo "path = \"$OUT/shm\""
    } >"$OUT/sluice.toml"
    export SLUICE_RUNTIME_DIR="$OUT/run"
}
