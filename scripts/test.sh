#!/usr/bin/env bash
# The whole test suite: what README.md tells a newcomer to run, and what CI runs.
# The cross-checks against independent implementations need Python peers: libsrtp (pylibsrtp,
# contract/tests/srtp_libsrtp.rs) and aiortc (tests/webrtc_e2e.rs). They are installed into a venv
# under target/ (never into the system Python) and handed to the tests as SLUICE_PYTHON. Offline,
# or without python3-venv, those tests skip and pass; every skip is listed at the end of the run.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py-peers
if [ -z "${SLUICE_PYTHON:-}" ] && command -v python3 >/dev/null 2>&1; then
    if [ ! -x "$venv/bin/python" ]; then
        mkdir -p target
        python3 -m venv "$venv" >/dev/null 2>&1 \
            || echo "note: python3 -m venv failed (apt install python3-venv); the Python cross-checks will SKIP" >&2
    fi
    if [ -x "$venv/bin/python" ]; then
        if ! "$venv/bin/python" -c 'import pylibsrtp, aiortc' >/dev/null 2>&1; then
            timeout 600 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check pylibsrtp aiortc >/dev/null 2>&1 \
                || echo "note: pip could not install pylibsrtp/aiortc; the Python cross-checks will SKIP" >&2
        fi
        export SLUICE_PYTHON="$PWD/$venv/bin/python"
    fi
fi
# Every test that could not check something here says why in this file (tests/support/skip.rs);
# it is printed after cargo's own summary, so no skip goes unseen.
export SLUICE_SKIP_LOG="$PWD/target/test-skips.log"
mkdir -p target
: >"$SLUICE_SKIP_LOG"
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?
if [ -s "$SLUICE_SKIP_LOG" ]; then
    echo
    echo "SKIPPED: $(sort -u "$SLUICE_SKIP_LOG" | wc -l) check(s) could not run here:"
    sort -u "$SLUICE_SKIP_LOG" | sed 's/^/  SKIP /'
else
    echo
    echo "SKIPPED: none"
fi
exit "$status"
