"""Benchmark for ``hierarchy``: does a real run's tree first join categories the truth also joins?

For a finished loop's work folder, runs ``hierarchy`` on ``final/probs.h5`` and
``final/labels.csv`` with each ``--affinity`` (``lift``, the default, and the paper's
raw ``confusion``) and prints the group count per level and, for the first-level
merges, the fraction of merged category pairs whose truth families agree, against
chance (the same fraction over all pairs of categories). A category's truth class is
the majority truth class of its images; its family is the Texture-25 family of that
class (stages/toy_data/families.py) or, for the toy PACS, the body region itself.

Run:
  .venv/bin/python tests/bench/bench_tree.py WORK --truth toy/truth.csv            # Texture-25
  .venv/bin/python tests/bench/bench_tree.py WORK --pacs OUT/pacs                   # toy PACS (make pacs)
Prints figures, asserts nothing (not collected by pytest).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import tempfile
from pathlib import Path

import numpy as np

from ldpo.common.labels import read_labels
from ldpo.stages import run
from ldpo.stages.toy_data.families import same_family_fraction, texture25_family


def pacs_truth(pacs: Path) -> dict[str, str]:
    """image id -> body region, through manifest (report_id) -> reports (accession) -> regions."""
    def rows(path):
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    region = {r["accession"]: r["region"] for r in rows(pacs / "toy/regions.csv")}
    accession = {r["report_id"]: r["accession"] for r in rows(pacs / "toy/reports.csv")}
    return {r["id"]: region[accession[r["report_id"]]] for r in rows(pacs / "keyimages/manifest.csv")
            if r.get("report_id") in accession}


def first_level(tree: dict) -> list[list[int]]:
    out = []

    def visit(node):
        if node["level"] == 1:
            out.append(node["classes"])
        for child in node["children"]:
            visit(child)

    visit(tree)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work")
    ap.add_argument("--truth", help="Texture-25 truth.csv (id,label)")
    ap.add_argument("--pacs", help="the make pacs output folder (toy/, keyimages/)")
    args = ap.parse_args()
    work = Path(args.work)
    labels = read_labels(work / "final/labels.csv")
    if args.truth:
        t = read_labels(args.truth).mapping()
        family_of_id = {i: texture25_family(t[i]) for i in labels.ids}
    else:
        truth = pacs_truth(Path(args.pacs))
        family_of_id = {i: truth.get(i, "?") for i in labels.ids}
    family = {}
    purity_hits = 0
    for c in labels.classes:
        fams = [family_of_id[i] for i, lab in zip(labels.ids, labels.labels.tolist()) if lab == c]
        values, counts = np.unique(fams, return_counts=True)
        family[c] = values[np.argmax(counts)]
        purity_hits += counts.max()
    chance, pairs = same_family_fraction([[family[c] for c in labels.classes]])
    print(f"{work}: {len(labels.classes)} categories, family purity of the categories "
          f"{purity_hits / len(labels):.3f}; chance that two categories share a family {chance:.3f} ({pairs} pairs)")
    for affinity in ("lift", "confusion"):
        with tempfile.TemporaryDirectory() as tmp:
            with contextlib.redirect_stdout(io.StringIO()):
                code = run(["hierarchy", str(work / "final/probs.h5"), str(work / "final/labels.csv"), "--out", tmp,
                           "--affinity", affinity, "-q"])
            assert code == 0
            tree = json.loads((Path(tmp) / "tree.json").read_text())
        groups = first_level(tree)
        fraction, merged = same_family_fraction([[family[c] for c in g] for g in groups])
        shown = " ".join("{" + ",".join(f"{c}:{family[c]}" for c in g) + "}" for g in groups if len(g) > 1)
        print(f"  --affinity {affinity:9s} levels {tree['levels']}: first merges {fraction:.3f} same family "
              f"({merged} pairs) vs chance {chance:.3f}; {shown}")


if __name__ == "__main__":
    main()
