#!/usr/bin/env bash
# The whole test suite: what README.md tells a newcomer to run, and what CI runs.
# Installs the independent peers the cross-checks need when they are missing (Python packages).
set -euo pipefail
cd "$(dirname "$0")/.."
# libsrtp (via pylibsrtp) for relay/tests/srtp_libsrtp.rs; offline or without pip the test SKIPs.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import pylibsrtp' >/dev/null 2>&1; then
    timeout 300 python3 -m pip install --quiet pylibsrtp >/dev/null 2>&1 \
        || echo "note: pylibsrtp not installed; the libsrtp cross-check will SKIP" >&2
fi
exec cargo test --workspace "$@"
