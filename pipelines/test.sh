#!/usr/bin/env bash
# Lint, then run the test suite (sets up .venv on first use). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$(bash "$root/pipelines/setup-env.sh")
cd "$root"
export PATH="$bin:$PATH"   # the loop's tests run `ldpo` and the stage commands
"$bin/ruff" check common stages tests   # the lint rules in ruff.toml; a finding fails CI like a test
# Two test processes by default (pytest-xdist): the suite is mostly waiting on stage subprocesses and
# imports, so two share a 2-core machine well (LDPO_TEST_WORKERS=1: one process, no xdist).
workers=${LDPO_TEST_WORKERS:-2}
xdist=()
[[ $workers =~ ^[0-9]+$ && $workers -gt 1 ]] && xdist=(-n "$workers")
exec "$bin/python" -m pytest "${xdist[@]}" "$@"
