#!/bin/sh
# Container entrypoint: create the admin token in the state volume on first start, then run
# control and relay in the foreground (`sluicectl up`); extra arguments go to `up`.
set -eu
token=/var/lib/sluice/admin.token
if [ ! -s "$token" ]; then
    (umask 077 && head -c 32 /dev/urandom | base64 | tr -d '=+/\n' >"$token")
fi
exec /usr/bin/sluicectl up --config /etc/sluice/sluice.toml "$@"
