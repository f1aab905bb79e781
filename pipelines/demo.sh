#!/usr/bin/env bash
# The README's main command: set up .venv if needed, then run LDPO from random init on the
# embedded toy Texture-25 set (10 classes x 24 images, 64 px, Sobel input filter, 20
# categories: twice the classes, so the tree's first level re-joins split classes) on the
# CPU, end to end: toy set -> loop (finetune, featurize, cluster, converge) -> category
# tree -> report, and the found categories' contact sheet beside the truth's.
# Extra arguments go to make, e.g.  bash pipelines/demo.sh MAX_ITER=3 DEVICE=cuda
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$(bash "$root/pipelines/setup-env.sh")
export PATH=$bin:$PATH
make --no-print-directory -C "$root/pipelines" texture25 "$@"
out=$root/out/texture25
echo "contact sheets: truth $out/data/contact-sheet.png | found $out/run/final/contact-sheet.png"
echo "open the report: $out/run/report/index.html"
