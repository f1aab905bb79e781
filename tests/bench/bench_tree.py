"""Benchmark for ``hierarchy``: does a real run's tree first join categories the truth also joins?

For a finished loop's work folder, runs ``hierarchy`` on ``final/probs.h5`` and
``final/labels.csv`` with each ``--affinity``: ``lift`` (the default), the paper's raw
``confusion``, ``centroids`` (with ``--features`` the final model's feature store, the
last ``iter-NN/features.h5``, as the loop passes it) and, on the toy PACS, ``reports``
(its reports and key-image manifest), at ``--preference Q`` (default 0.5, the
median: the paper's; ``--preference 0.5,0.9`` runs each). For each it prints the group
count per level and, for the first-level merges, the fraction of merged category pairs
whose truth families agree, against chance (the same fraction over all pairs of
categories). A category's truth class is the majority truth class of its images; its
family is the Texture-25 family of that class (stages/toy_data/families.py) or, for the
toy PACS, the body region itself.

What the model's representation allows at best, whatever the affinity: the line
``truth classes, centroids`` builds the first level over the truth's own classes (not
the found categories) from the same features: the 25 texture classes, or the toy PACS's
region/modality pairs (its categories split regions by modality; a same-region merge
joins a CT group with an MR one). With ``--truth`` on Texture-25, each line also counts
the merged pairs that share a truth class (two found categories that split one truth
class are an easy first merge), against its chance (the same over all pairs of categories).
With more categories than truth classes (``--k`` above the class count: an over-segmented
run), that is the truth's own first level: a tree whose first merges share a truth class
re-joins the classes the clustering split.

``--probs``, ``--labels`` and ``--features`` replace the work folder's files, e.g. to
judge a model trained on the truth itself (its categories are the truth classes).

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

from ldpo.common.files.labels import read_labels
from ldpo.stages import run
from ldpo.stages.hierarchy import build_levels, centroid_affinity, read_feature_sums
from ldpo.stages.extract_keyimages.phi import SALT_FILE, Pseudonyms
from ldpo.stages.toy_data.families import first_level_groups, same_family_fraction, texture25_family

AFFINITIES = ("lift", "confusion", "centroids", "reports")


def pacs_truth(pacs: Path, modality: bool = False) -> dict[str, str]:
    """image id -> body region (``modality``: "region/CT"), through manifest (report_id) -> reports
    (accession) -> regions."""
    def rows(path):
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    # extract-keyimages pseudonymizes report ids with the key it kept beside its output folder
    pseudo = Pseudonyms((pacs / SALT_FILE).read_text().strip())
    region = {r["accession"]: r["region"] for r in rows(pacs / "toy/regions.csv")}
    accession = {pseudo("report", r["report_id"], length=12): r["accession"] for r in rows(pacs / "toy/reports.csv")}
    return {r["id"]: region[accession[r["report_id"]]] + (f"/{r['modality']}" if modality else "")
            for r in rows(pacs / "keyimages/manifest.csv") if r.get("report_id") in accession}


def final_features(work: Path) -> Path:
    """The final model's feature store: the last iteration's encoded.h5 (with --encode) or features.h5."""
    last = sorted(work.glob("iter-*/features.h5"))[-1].parent
    return last / "encoded.h5" if (last / "encoded.h5").exists() else last / "features.h5"


def majority(values_of_id: dict, ids, labels) -> dict[int, object]:
    """label -> the most common value among its images."""
    out = {}
    for c in sorted(set(labels)):
        values, counts = np.unique([values_of_id[i] for i, lab in zip(ids, labels) if lab == c], return_counts=True)
        out[c] = values[np.argmax(counts)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", nargs="?", default="", help="a loop's work folder")
    ap.add_argument("--truth", help="Texture-25 truth.csv (id,label)")
    ap.add_argument("--pacs", help="the make pacs output folder (toy/, keyimages/)")
    ap.add_argument("--probs", help="probs store (default WORK/final/probs.h5)")
    ap.add_argument("--labels", help="the model's labels (default WORK/final/labels.csv)")
    ap.add_argument("--features", help="feature store (default: the last WORK/iter-NN/features.h5)")
    ap.add_argument("--preference", default="0.5", help="hierarchy --preference quantiles, comma-separated")
    args = ap.parse_args()
    if bool(args.truth) == bool(args.pacs):
        ap.error("give --truth (Texture-25) or --pacs (toy PACS)")
    work = Path(args.work)
    probs = Path(args.probs or work / "final/probs.h5")
    labels_path = Path(args.labels or work / "final/labels.csv")
    features = Path(args.features or final_features(work))
    labels = read_labels(labels_path)
    ids, found = labels.ids, labels.labels.tolist()
    if args.truth:
        truth = read_labels(args.truth).mapping()
        class_of_id = {i: truth[i] for i in ids}
        family_of_id = {i: texture25_family(truth[i]) for i in ids}
        oracle_of_id, oracle_family = class_of_id, texture25_family
    else:
        region, group = pacs_truth(Path(args.pacs)), pacs_truth(Path(args.pacs), modality=True)
        class_of_id = family_of_id = {i: region.get(i, "?") for i in ids}
        oracle_of_id, oracle_family = {i: group.get(i, "?") for i in ids}, lambda v: v.split("/")[0]
    family = majority(family_of_id, ids, found)
    klass = majority(class_of_id, ids, found)
    purity = np.mean([family_of_id[i] == family[c] for i, c in zip(ids, found)])
    chance, pairs = same_family_fraction([[family[c] for c in labels.classes]])
    class_chance, _ = same_family_fraction([[klass[c] for c in labels.classes]])
    print(f"{work if args.work else labels_path}: {len(labels.classes)} categories, family purity of the categories "
          f"{purity:.3f}; chance that two categories share a family {chance:.3f} ({pairs} pairs); "
          f"features {features}")

    def line(name: str, groups, levels, fam, cls) -> None:
        fraction, merged = same_family_fraction([[fam[c] for c in g] for g in groups])
        text = f"  {name:29s} levels {levels}: first merges {fraction:.3f} same family ({merged} pairs) vs chance " \
               f"{chance:.3f}"
        if args.truth:
            same_class, _ = same_family_fraction([[cls[c] for c in g] for g in groups])
            text += f"; same truth class {same_class:.3f} vs chance {class_chance:.3f}"
        shown = " ".join("{" + ",".join(f"{c}:{fam[c]}" for c in g) + "}" for g in groups if len(g) > 1)
        print(f"{text}; {shown}")

    preferences = [float(q) for q in args.preference.split(",")]
    for affinity in AFFINITIES:
        if affinity == "centroids":
            extra = ["--features", str(features)]
        elif affinity == "reports":
            if not args.pacs:
                continue  # the toy Texture-25 set has no reports
            pacs = Path(args.pacs)
            extra = ["--reports", str(pacs / "keyimages/reports.csv"), "--manifest", str(pacs / "keyimages/manifest.csv")]
        else:
            extra = []
        for q in preferences:
            with tempfile.TemporaryDirectory() as tmp:
                with contextlib.redirect_stdout(io.StringIO()):
                    code = run(["hierarchy", str(probs), str(labels_path), "--out", tmp, "--affinity", affinity,
                                "--preference", str(q), "-q", *extra])
                assert code == 0, f"hierarchy --affinity {affinity} failed"
                tree = json.loads((Path(tmp) / "tree.json").read_text())
            name = f"--affinity {affinity}" + (f" @{q:g}" if len(preferences) > 1 else "")
            line(name, first_level_groups(tree), tree["levels"], family, klass)

    # the same features over the truth's own classes: what any affinity of this model could reach
    truth_values = sorted(set(oracle_of_id.values()) - {"?"})
    keep = [i for i in ids if oracle_of_id[i] != "?"]
    column = {v: j for j, v in enumerate(truth_values)}
    row_class = np.array([column[oracle_of_id[i]] for i in keep])
    counts = np.bincount(row_class, minlength=len(truth_values)).astype(np.float64)
    sums = read_feature_sums_subset(features, keep, row_class, len(truth_values))
    levels, _, _ = build_levels(lambda m: centroid_affinity(sums, counts, m), len(truth_values),
                                np.arange(len(truth_values)), 0.7, 20, 0, preferences[0])
    groups = [[truth_values[c] for c in g] for g in first_level_groups_of(levels)]
    truth_family = {v: oracle_family(v) for v in truth_values}
    fraction, merged = same_family_fraction([[truth_family[v] for v in g] for g in groups])
    truth_chance, _ = same_family_fraction([[truth_family[v] for v in truth_values]])
    shown = " ".join("{" + ",".join(f"{v}:{truth_family[v]}" for v in g) + "}" for g in groups if len(g) > 1)
    print(f"  {'truth classes, centroids':29s} levels {[len(x) for x in levels]}: first merges {fraction:.3f} same "
          f"family ({merged} pairs) vs chance {truth_chance:.3f}; {shown}")


def read_feature_sums_subset(path: Path, ids: list[str], row_class: np.ndarray, k: int) -> np.ndarray:
    """hierarchy's per-class feature sums for ``ids`` (images without a truth value left out)."""
    from ldpo.common.files.stores import open_store

    with open_store(path) as store:
        store_ids = store.ids
    wanted = dict(zip(ids, row_class.tolist()))
    # every store row needs a class for read_feature_sums; rows outside ``ids`` go to an extra class, then dropped
    all_class = np.array([wanted.get(i, k) for i in store_ids])
    return read_feature_sums(str(path), store_ids, all_class, k + 1, 8192, str(path))[:k]


def first_level_groups_of(levels) -> list[list[int]]:
    """The class columns under each level-1 group of build_levels' output."""
    return [sorted(c for child in group for c in levels[0][child]) for group in levels[1]]


if __name__ == "__main__":
    main()
