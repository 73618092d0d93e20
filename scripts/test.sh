#!/usr/bin/env bash
# The whole test suite: what README.md tells a newcomer to run, and what CI runs.
# Installs the independent peers the cross-checks need when they are missing (Python packages).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace "$@"
