#!/usr/bin/env bash
# The README's main command: set up .venv if needed, then run LDPO from random init on the
# embedded toy Texture-25 set (25 classes x 12 images, 64 px) on the CPU, end to end:
# toy set -> loop (finetune, featurize, cluster, converge) -> category tree.
# Extra arguments go to make, e.g.  bash pipelines/demo.sh MAX_ITER=3 DEVICE=cuda
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$(bash "$root/pipelines/setup-env.sh")
export PATH=$bin:$PATH
make --no-print-directory -C "$root/pipelines" texture25 "$@"
echo "toy set and its contact sheet: $root/out/texture25/data/"
