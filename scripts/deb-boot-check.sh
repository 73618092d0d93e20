#!/usr/bin/env bash
# The operator's path end to end, under real systemd: install the sluice .deb into a fresh
# Debian 12 root, make the one edit OPERATIONS.md asks for (public_addresses), enable the units,
# boot that root as a container (systemd-nspawn, systemd as PID 1, its own network namespace),
# and check that
#   - both units come up active as the sluice user and `sluicectl status` finds the system
#     instance by itself (exit 0, instance /run/sluice);
#   - a browser on another host reaches it: headless Chromium in a second network namespace,
#     joined to the container only by a veth pair, publishes through WHIP to the container's
#     address and watches through WHEP; ICE uses the announced candidate (the container's
#     address, not 127.0.0.1) and the watcher decodes video;
#   - `systemctl stop` stops both cleanly.
#
# Usage: scripts/deb-boot-check.sh [PATH.deb]   (default: build it with scripts/package-deb.sh)
# Needs root, debootstrap, systemd-nspawn (systemd-container), iproute2, and for the browser
# stage Chromium + node with tests/webrtc's playwright-core. Prints "SKIP: <why>" and exits 0
# when one is missing, so the rest of CI still runs; CI installs all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
skip() { echo "SKIP: deb-boot-check: $*"; exit 0; }
fail() { echo "deb-boot-check FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, network namespaces, a container)"
command -v debootstrap >/dev/null 2>&1 || skip "debootstrap missing (apt-get install debootstrap)"
command -v systemd-nspawn >/dev/null 2>&1 || skip "systemd-nspawn missing (apt-get install systemd-container)"
command -v ip >/dev/null 2>&1 || skip "ip missing (apt-get install iproute2)"
chromium="${SLUICE_CHROMIUM:-/usr/bin/chromium}"
browser=yes
[ -x "$chromium" ] || browser="no: $chromium not installed (apt-get install chromium)"
if [ "$browser" = yes ] && ! (cd tests/webrtc && node browser.mjs check >/dev/null 2>&1); then
    browser="no: playwright-core not installed (npm ci --prefix tests/webrtc)"
fi

deb="${1:-$(scripts/package-deb.sh)}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
root="$(mktemp -d /var/tmp/sluice-boot-root.XXXXXX)"
ns="sluice-client-$$"
machine="sluiceci$$"
machine="${machine:0:11}"   # the host end of the veth is ve-<machine>, 15 characters at most
host_if="ve-$machine"
client_ip=10.231.7.1
box_ip=10.231.7.2
nspawn_pid=
cleanup() {
    if [ -n "$nspawn_pid" ]; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$root" "$root".*.log "$root".*.log.err
}
trap cleanup EXIT
chmod 0755 "$root"
if [ -n "${SLUICE_BOOT_ROOT_TEMPLATE:-}" ]; then
    # A root made earlier by the same debootstrap line, copied (for repeated local runs).
    cp -a "$SLUICE_BOOT_ROOT_TEMPLATE/." "$root/"
else
    echo "deb-boot-check: debootstrap bookworm (with systemd as init) into $root" >&2
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,libssl3,procps,iproute2 \
        bookworm "$root" "$mirror" >/dev/null
fi
cp "$deb" "$root/tmp/sluice.deb"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
in_root dpkg -i /tmp/sluice.deb >/dev/null
# The operator's edit (OPERATIONS.md): the address browsers reach, then enable the units.
sed -i "s/^public_addresses = \[\]/public_addresses = [\"$box_ip\"]/" "$root/etc/sluice/sluice.toml"
in_root sluice-control --config /etc/sluice/sluice.toml --check-config >/dev/null || fail "--check-config"
in_root systemctl enable sluice-control.service sluice-relay.service >/dev/null 2>&1 \
    || fail "systemctl enable"
# The container's side of the veth, configured by systemd itself at boot.
cat >"$root/etc/systemd/system/ci-net.service" <<EOF
[Unit]
Description=CI: address the container's veth
Before=sluice-control.service sluice-relay.service
[Service]
Type=oneshot
ExecStart=/usr/sbin/ip link set lo up
ExecStart=/usr/sbin/ip link set host0 up
ExecStart=/usr/sbin/ip addr add $box_ip/30 dev host0
RemainAfterExit=yes
[Install]
WantedBy=multi-user.target
EOF
in_root systemctl enable ci-net.service >/dev/null 2>&1 || fail "enable ci-net"

# The "other host": a network namespace whose only link is the container's veth (nspawn
# creates the pair in our namespace; its end moves over before anything is addressed).
ip netns add "$ns"
ip -n "$ns" link set lo up
log="$root.boot.log"
systemd-nspawn --register=no --keep-unit -q --console=pipe \
    --machine="$machine" --network-veth -D "$root" -b >"$log" 2>&1 &
nspawn_pid=$!
for _ in $(seq 100); do ip link show "$host_if" >/dev/null 2>&1 && break; sleep 0.1; done
ip link show "$host_if" >/dev/null 2>&1 || { cat "$log" >&2; fail "no veth $host_if"; }
ip link set "$host_if" netns "$ns"
ip -n "$ns" addr add "$client_ip/30" dev "$host_if"
ip -n "$ns" link set "$host_if" up
# The container's PID 1 (systemd), to run commands inside it.
init=
for _ in $(seq 100); do
    init="$(pgrep -P "$nspawn_pid" -x systemd || true)"
    [ -n "$init" ] && break
    sleep 0.1
done
[ -n "$init" ] || { cat "$log" >&2; fail "systemd did not start in the container"; }
inside() { nsenter --target "$init" --mount --uts --ipc --net --pid -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }

ok=
for _ in $(seq 150); do
    if inside systemctl is-active --quiet sluice-control.service sluice-relay.service; then ok=1; break; fi
    sleep 0.2
done
if [ -z "$ok" ]; then
    inside systemctl --no-pager status sluice-control.service sluice-relay.service >&2 || true
    inside journalctl --no-pager -u sluice-control -u sluice-relay >&2 || true
    fail "the units did not become active"
fi
ok=
for _ in $(seq 100); do
    if status="$(inside sluicectl status 2>&1)"; then ok=1; break; fi
    sleep 0.2
done
[ -n "$ok" ] || fail "sluicectl status: $status"
printf '%s\n' "$status" | grep -q '^instance     /run/sluice ' || fail "status did not name /run/sluice: $status"
for unit in sluice-control sluice-relay; do
    user="$(inside systemctl show -p User --value "$unit.service")"
    [ "$user" = sluice ] || fail "$unit runs as '$user'"
done
echo "deb-boot-check: units active under systemd, sluicectl status finds /run/sluice" >&2

# Reachable from the other host: health over the veth.
health="$(ip netns exec "$ns" python3 -c 'import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)
except Exception as e:
    print(e)' "http://$box_ip:8443/healthz")"
[ "$health" = 200 ] || fail "GET http://$box_ip:8443/healthz from the other host: $health"

if [ "$browser" = yes ]; then
    inside sluicectl app add ci >/dev/null || fail "sluicectl app add"
    pub="$(inside sluicectl token mint --app ci --room boot --role host)" || fail "token mint host"
    view="$(inside sluicectl token mint --app ci --room boot --role viewer)" || fail "token mint viewer"
    base="http://$box_ip:8443"
    out="$root.browser.log"
    # Plain HTTP to a non-loopback origin is not a secure context; the flag stands in for the
    # certificate a deployment would have (the media path is the same).
    if ! (cd tests/webrtc && SLUICE_CHROMIUM_ARGS="--unsafely-treat-insecure-origin-as-secure=$base" \
            ip netns exec "$ns" node browser.mjs run "$base" "$pub" "$view" boot 30 40 >"$out" 2>"$out.err"); then
        cat "$out.err" "$out" >&2
        inside journalctl --no-pager -u sluice-control -u sluice-relay | tail -50 >&2 || true
        fail "the browser on the other host did not decode 30 frames"
    fi
    pair="$(sed -n 's/^RESULT //p' "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["watcher"]["pair"]["remote"], r["frames"])')"
    case "$pair" in
        "$box_ip:"*) ;;
        *) fail "the watcher's selected remote candidate is not $box_ip: $pair" ;;
    esac
    echo "deb-boot-check: a browser on another host published and watched (remote candidate, frames: $pair)" >&2
else
    echo "SKIP: deb-boot-check browser stage: $browser"
fi

inside systemctl stop sluice-relay.service sluice-control.service || fail "systemctl stop"
for unit in sluice-control sluice-relay; do
    result="$(inside systemctl show -p Result --value "$unit.service")"
    [ "$result" = success ] || fail "$unit stopped with result $result"
done
echo "deb-boot-check: $(basename "$deb") boots under systemd, serves a browser on another host, stops cleanly"
