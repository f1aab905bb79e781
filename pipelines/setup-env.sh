#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv with ldpo installed
# editable, the CPU faiss build and the test tools. Idempotent: reinstalls only when
# setup.cfg changed. Usage: bash pipelines/setup-env.sh   (prints the venv's bin dir)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LDPO_VENV:-$root/.venv}
python=${PYTHON:-python3}
stamp=$venv/.ldpo-installed
want=$(sha256sum "$root/setup.cfg" "$root/pyproject.toml" | sha256sum | cut -c1-16)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
  echo "$venv/bin"
  exit 0
fi
echo "setting up $venv (first run: a few minutes)..." >&2
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel >&2
"$venv/bin/python" -m pip install -q -e "${root}[cpu,dev]" >&2
echo "$want" > "$stamp"
echo "$venv/bin"
