#!/usr/bin/env bash
# Install the sluice .deb into a fresh Debian 12 root and check it as an operator would meet it:
# the sluice user, owners and modes of /etc/sluice, the units verified by systemd-analyze, the
# shipped configuration passing --check-config, then both daemons started as the sluice user
# (in a private network namespace, with the directories systemd would create) and
# `sluicectl status` finding the system instance by itself; then remove and purge.
#
# Usage: scripts/deb-check.sh [PATH.deb]   (default: build it with scripts/package-deb.sh)
# Needs root, debootstrap and unshare; prints "SKIP: <why>" and exits 0 without them.
set -euo pipefail
cd "$(dirname "$0")/.."
skip() { echo "SKIP: deb-check: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (chroot, mounts)"
command -v debootstrap >/dev/null 2>&1 || skip "debootstrap missing (apt-get install debootstrap)"
command -v unshare >/dev/null 2>&1 || skip "unshare missing (util-linux)"
deb="${1:-$(scripts/package-deb.sh)}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
root="$(mktemp -d /var/tmp/sluice-deb-root.XXXXXX)"
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"   # the sluice user must reach its binaries
echo "deb-check: debootstrap bookworm into $root" >&2
debootstrap --variant=minbase --include=systemd,libssl3,procps bookworm "$root" "$mirror" >/dev/null
cp "$deb" "$root/tmp/sluice.deb"

# Everything below runs in private mount and network namespaces: nothing leaks to the host.
unshare --mount --net --propagation private /bin/bash -euo pipefail -s "$root" <<'INNER'
root=$1
fail() { echo "deb-check FAILED: $*" >&2; exit 1; }
ip link set lo up
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }

in_root dpkg -i /tmp/sluice.deb >/dev/null
in_root getent passwd sluice >/dev/null || fail "no sluice user"
[ "$(in_root stat -c '%U:%G %a' /etc/sluice)" = "root:sluice 750" ] || fail "/etc/sluice: $(in_root stat -c '%U:%G %a' /etc/sluice)"
[ "$(in_root stat -c '%U:%G %a' /etc/sluice/sluice.toml)" = "root:sluice 640" ] || fail "sluice.toml mode"
[ "$(in_root stat -c '%U:%G %a' /etc/sluice/admin.token)" = "sluice:sluice 600" ] || fail "admin.token mode"
[ -s "$root/etc/sluice/admin.token" ] || fail "empty admin token"
for f in /usr/bin/sluicectl /usr/bin/sluice-relay /usr/bin/sluice-control \
         /usr/lib/systemd/system/sluice-relay.service /usr/lib/systemd/system/sluice-control.service \
         /usr/share/doc/sluice/OPERATIONS.md /usr/share/man/man1/sluicectl.1.gz \
         /usr/share/bash-completion/completions/sluicectl; do
    [ -e "$root$f" ] || fail "$f not installed"
done
# The units' Documentation= points at a file the package installs.
grep -q '^Documentation=file:///usr/share/doc/sluice/OPERATIONS.md' "$root/usr/lib/systemd/system/sluice-relay.service" \
    || fail "Documentation= path"
out="$(in_root systemd-analyze verify sluice-control.service sluice-relay.service 2>&1)" || fail "systemd-analyze: $out"
[ -z "$out" ] || fail "systemd-analyze: $out"

# The operator's one edit: the address browsers reach (here the namespace's loopback).
sed -i 's/^public_addresses = \[\]/public_addresses = ["127.0.0.1"]/' "$root/etc/sluice/sluice.toml"
in_root sluice-control --config /etc/sluice/sluice.toml --check-config >/dev/null || fail "--check-config"

# What systemd's RuntimeDirectory=, StateDirectory=, LogsDirectory= would create.
install -d -m 0750 -o "$(in_root id -u sluice)" -g "$(in_root id -g sluice)" "$root/run/sluice"
install -d -m 0700 -o "$(in_root id -u sluice)" -g "$(in_root id -g sluice)" "$root/var/lib/sluice" "$root/var/log/sluice"
# chroot and env exec the daemon, so $! is the daemon's own pid.
as_sluice=(chroot --userspec=sluice:sluice "$root" /usr/bin/env -i PATH=/usr/bin:/bin SLUICE_LOG=warn)
"${as_sluice[@]}" sluice-control --config /etc/sluice/sluice.toml >"$root/tmp/control.log" 2>&1 &
control=$!
trap 'kill -KILL $control ${relay:-} 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$root/run/sluice/control.json" ] && break; sleep 0.1; done
[ -s "$root/run/sluice/control.json" ] || { cat "$root/tmp/control.log" >&2; fail "control did not start"; }
"${as_sluice[@]}" sluice-relay --config /etc/sluice/sluice.toml >"$root/tmp/relay.log" 2>&1 &
relay=$!
ok=
for _ in $(seq 100); do
    if status="$(in_root sluicectl status 2>&1)"; then ok=1; break; fi
    sleep 0.1
done
[ -n "$ok" ] || { cat "$root/tmp/control.log" "$root/tmp/relay.log" >&2; fail "sluicectl status: $status"; }
printf '%s\n' "$status" | grep -q '^instance     /run/sluice ' || fail "status did not name /run/sluice: $status"
in_root sluicectl --config /etc/sluice/sluice.toml status >/dev/null || fail "status --config"
kill -TERM "$relay" "$control"
wait "$relay" || fail "relay exited $? on SIGTERM: $(cat "$root/tmp/relay.log")"
wait "$control" || fail "control exited $? on SIGTERM: $(cat "$root/tmp/control.log")"
trap - EXIT

in_root dpkg -r sluice >/dev/null
[ ! -e "$root/usr/bin/sluice-relay" ] || fail "binary left after remove"
[ -e "$root/etc/sluice/sluice.toml" ] || fail "conffile removed by remove (only purge may)"
in_root dpkg -P sluice >/dev/null
[ ! -e "$root/etc/sluice" ] || fail "/etc/sluice left after purge: $(ls -la "$root/etc/sluice")"
echo "deb-check: $(basename /tmp/sluice.deb) installs, verifies, starts as sluice and purges cleanly"
INNER
