#!/usr/bin/env bash
# Verify the systemd units and the sysusers snippet with systemd's own tools.
#
# `systemd-analyze verify` needs every ExecStart= binary to exist, so the units are checked
# inside a throwaway root (--root) holding: the host's system units (for the targets the units
# depend on), our units in /etc/systemd/system, /usr/bin/sluice-{control,relay} (the built
# binaries when present, else executable stubs) and /etc/sluice/sluice.toml.
# systemd-analyze only *warns* about unknown keys, so any diagnostic output fails the check.
# Prints "SKIP: ..." and exits 0 when systemd-analyze is not installed (apt-get install systemd).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "SKIP: systemd-analyze not installed" >&2
    exit 0
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/etc/systemd/system" "$root/etc/sluice" "$root/usr/lib/systemd"
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/" 2>/dev/null || mkdir -p "$root/usr/lib/systemd/system"
for b in sluice-control sluice-relay sluicectl; do
    if [ -x "$repo/target/debug/$b" ]; then
        cp "$repo/target/debug/$b" "$root/usr/bin/$b"
    else
        printf '#!/bin/sh\nexit 0\n' >"$root/usr/bin/$b"
        chmod 0755 "$root/usr/bin/$b"
    fi
done
# ExecReload= of sluice-control uses kill(1).
printf '#!/bin/sh\nexit 0\n' >"$root/usr/bin/kill"
chmod 0755 "$root/usr/bin/kill"
cp "$here/sluice-control.service" "$here/sluice-relay.service" "$root/etc/systemd/system/"
cp "$here/sluice.toml" "$root/etc/sluice/sluice.toml"
# The xdp drop-in is verified applied, as an operator would install it.
mkdir -p "$root/etc/systemd/system/sluice-relay.service.d"
cp "$here/sluice-relay.service.d/xdp.conf" "$root/etc/systemd/system/sluice-relay.service.d/"

fail=0
out="$(systemd-analyze verify --root="$root" sluice-control.service sluice-relay.service 2>&1)" || fail=1
if [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    fail=1
fi
if command -v systemd-sysusers >/dev/null 2>&1; then
    sout="$(systemd-sysusers --dry-run --root="$root" "$here/sluice.sysusers.conf" 2>&1)" || fail=1
    if printf '%s\n' "$sout" | grep -qiE 'warn|error|fail|ignor'; then
        printf '%s\n' "$sout" >&2
        fail=1
    fi
else
    echo "SKIP: systemd-sysusers not installed; sysusers snippet not checked" >&2
fi
if [ "$fail" -ne 0 ]; then
    echo "systemd verification FAILED" >&2
    exit 1
fi
echo "systemd units and sysusers snippet verified"
