"""Discovery benchmark: the LDPO loop on toy sets, scored against their truth.

For every (data set, setting, seed) it runs ``pipelines/ldpo-loop.sh`` in a fresh work
folder and prints purity and NMI against the truth at iteration 0 and at the end (the
last iteration's clustering), the iteration count and the wall time; then the medians
over seeds per (set, setting). When a setting clusters into more groups than the truth
has classes (over-clustering), purity would reward the extra clusters: the ``@K``
columns re-cluster that iteration's features into exactly the truth's class count
(same cluster options), which stays comparable across settings.

Data sets (generated here, nothing is downloaded):

* ``texture25``: toy Texture-25, all 25 classes × 40 images at 64 px (``--classes``,
  ``--per-class``, ``--size`` change it);
* ``pacs``: the toy PACS (40 studies) through ``extract-keyimages`` at 64 px, truth =
  what looks alike, each key image's body region × modality (9 pairs; region alone splits
  by modality, see the README); the region-only scores are printed beside it (``*_region``);
* ``archive``: ``toy-data archive`` phantoms (an elliptical body filled with oriented
  gratings per class), 20 classes × 50 images: a third kind, neither texture nor PACS;
* ``scenes``: ``toy-data scenes`` (10 categories × 40 images, 64 px; a category = which two or
  three object kinds appear, over random backgrounds with shared distractors), the loop from
  ``--init weights:FILE``: a ResNet-18 trained supervised on the isolated objects (the parts,
  ``toy-data scenes --objects``, ``--scene-objects`` per kind, ``--scene-pretrain-epochs``
  epochs; the toy stand-in for ImageNet, which knows windows and beds but not the scene
  categories). Compare ``--settings ldpo_global,ldpo_pm``: its last line is
  ``scenes: kmeans=P0 ldpo_global=P1 ldpo_pm=P2`` (median final purities; kmeans = k-means on
  iteration 0's global features), after the cost of ``encode --method patches`` (ms per
  image, peak RSS at N and 2N);
* long-tailed sets, run with K not given (the loop's default; archives come without K):
  ``texture25-lt50`` / ``texture25-lt100`` (``toy-data texture25 --imbalance R``: ``--lt-classes`` classes,
  sizes falling geometrically from ``--lt-largest`` to ``--lt-largest`` / R) and ``archive-lt50`` /
  ``archive-lt100`` (``toy-data archive --imbalance R``, ``--lt-classes`` classes, ``--lt-n`` images).
  Beside purity and NMI at iteration 0 and at the end, each run prints the final labels' scores (what
  the loop keeps; ``*_cons``: what ``--keep consensus`` would keep, computed from the same run), the K it ended with, the NMI of every level of the category tree against the truth
  (``tree_nmi``, leaves first) and of the level whose group count is closest to the true K
  (``tree_nmi@K``);
* ``pretrained``: the paper's setting without downloads: ResNet-18 trained supervised
  on texture families 10–24 (the source) is saved as a weights file, and the loop runs
  on families 0–9 (the target, disjoint) from ``--init weights:FILE``.

Usage (from the repository root, with the venv's ``ldpo`` on PATH or found beside python):

    python tests/bench/bench_discovery.py                       # the default setting, all sets, seeds 0-2
    python tests/bench/bench_discovery.py --sets texture25 --settings v1,default --seeds 0
    python tests/bench/bench_discovery.py --settings all --jobs 8 --device cuda    # the lever sweep

``--list`` prints the settings. Results also go to ``--out``/results.csv (one row per run).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
LOOP = ROOT / "pipelines" / "ldpo-loop.sh"
BIN = Path(sys.executable).parent


@dataclass
class Setting:
    help: str
    args: list[str] = field(default_factory=list)  # loop options
    env: dict[str, str] = field(default_factory=dict)  # CLUSTER_ARGS, FINETUNE_ARGS, …
    k_mult: int = 1  # clusters = k_mult × the truth's class count; 0: K not given (the loop's default)


#: The loop's defaults are "default"; each other setting changes one lever (or, for the
#: combinations, a few), so their effects can be read against it.
V1 = {"CLUSTER_ARGS": "--nredo 1 --init random"}
SETTINGS: dict[str, Setting] = {
    "default": Setting("the loop's defaults, nothing overridden"),
    "v1": Setting("the first version: k-means with one random start", env=V1),
    "pca128w": Setting("PCA-whitening to 128 dims, then L2 (DeepCluster)", env={"CLUSTER_ARGS": "--pca 128 --whiten"}),
    "pca128": Setting("PCA to 128 dims (no whitening), then L2", env={"CLUSTER_ARGS": "--pca 128"}),
    "l2only": Setting("no PCA, L2 only", env={"CLUSTER_ARGS": "--pca 0"}),
    "sobel": Setting("Sobel input filter", args=["--input-filter", "sobel"]),
    "graysobel": Setting("[gray, Sobel x, Sobel y] input filter", args=["--input-filter", "gray-sobel"]),
    "nofilter": Setting("no input filter", args=["--input-filter", "none"]),
    "imagenet": Setting("ImageNet normalization instead of per-image z-score", args=["--normalize", "imagenet"]),
    "zscore": Setting("per-image z-score normalization", args=["--normalize", "zscore"]),
    "crop02": Setting("random resized crop down to 20% of the area", env={"FINETUNE_ARGS": "--crop-scale 0.2"}),
    "crop06": Setting("random resized crop down to 60% of the area", env={"FINETUNE_ARGS": "--crop-scale 0.6"}),
    "nocrop": Setting("no random crop", env={"FINETUNE_ARGS": "--crop-scale 1"}),
    "jitter": Setting("intensity jitter 0.3 (gamma, contrast, brightness)", env={"FINETUNE_ARGS": "--jitter 0.3"}),
    "balanced": Setting("class-balanced sampling", args=["--balanced"]),
    "centroidhead": Setting("head starts as the nearest-centroid classifier", env={"FINETUNE_ARGS": "--head-init centroids"}),
    "randomhead": Setting("head starts random", env={"FINETUNE_ARGS": "--head-init random"}),
    "noearlystop": Setting("every --max-iter iteration, no stop on converge's verdict", args=["--no-early-stop"]),
    "patience1": Setting("stop at the first iteration whose labels agree with the previous ones (the default "
                         "before 2026-12-01: 2)", args=["--patience", "1"]),
    "epochs6": Setting("6 epochs per iteration instead of 3", args=["--epochs", "6"]),
    "epochs12": Setting("12 epochs per iteration instead of 3", args=["--epochs", "12"]),
    "consensus": Setting("final labels: the consensus of every iteration's clustering (--keep consensus)",
                         args=["--keep", "consensus"]),
    "kauto": Setting("K not given on the balanced sets too (the loop's default, --k auto)", k_mult=0),
    "overcluster3": Setting("3x over-clustering (k = 3 x classes; @K columns compare fairly)", k_mult=3),
    "sinkhorn": Setting("Sinkhorn-balanced pseudo-labels (SeLa)", env={"CLUSTER_ARGS": "--balance sinkhorn"}),
    "sobel+pca128": Setting("Sobel, PCA to 128", args=["--input-filter", "sobel"], env={"CLUSTER_ARGS": "--pca 128"}),
    "sobel+jitter": Setting("Sobel, intensity jitter 0.3", args=["--input-filter", "sobel"],
                            env={"FINETUNE_ARGS": "--jitter 0.3"}),
    "graysobel+pca128+jitter": Setting("[gray, Sobel], PCA to 128, jitter 0.3", args=["--input-filter", "gray-sobel"],
                                       env={"CLUSTER_ARGS": "--pca 128", "FINETUNE_ARGS": "--jitter 0.3"}),
    "frozen": Setting("train the head only (backbone weights and BatchNorm statistics frozen)",
                      env={"FINETUNE_ARGS": "--freeze-backbone"}),
    "multiscale": Setting("cluster the multi-scale feature (every stage pooled, L2-normalized, concatenated)",
                          args=["--layer", "multiscale"]),
    "scan": Setting("neighbour-consistent clustering (cluster --method scan) on the default feature",
                    args=["--method", "scan"]),
    "scan-nb10": Setting("cluster --method scan with 10 nearest neighbours per row instead of 20",
                         env={"CLUSTER_ARGS": "--neighbours 10"}),
    "split-none": Setting("finetune trains on every image (--split none: no held-out images, so no held-out "
                          "agreement in the history)", args=["--split", "none"]),
    "multiscale+scan": Setting("the multi-scale feature, clustered by cluster --method scan",
                               args=["--layer", "multiscale", "--method", "scan"]),
    "confident50": Setting("finetune only on images whose scan confidence is at least 0.5",
                           env={"FINETUNE_ARGS": "--min-confidence 0.5"}),
    "confident80": Setting("finetune only on images whose scan confidence is at least 0.8",
                           env={"FINETUNE_ARGS": "--min-confidence 0.8"}),
    "neighbours": Setting("finetune's neighbour-consistency term (weight 1; neighbours mined in the clustered "
                          "features)", args=["--neighbour-weight", "1"]),
    "neighbours03": Setting("finetune's neighbour-consistency term, weight 0.3", args=["--neighbour-weight", "0.3"]),
    "avgpool+kmeans": Setting("the defaults before multiscale + scan: the avgpool feature, k-means",
                              args=["--layer", "avgpool", "--method", "kmeans"]),
    "issue18-start": Setting("the defaults when issue 18 was filed: avgpool, k-means, stop at the first agreement "
                             "(the wall-time baseline)", args=["--layer", "avgpool", "--method", "kmeans",
                                                               "--patience", "1"]),
    "ldpo_global": Setting("LDPO with global features (the loop's defaults; named for the scenes set)"),
    "ldpo_pm": Setting("LDPO-PM: encode --method patches, elements re-mined from the previous labels",
                       args=["--encode", "patches"]),
    "ldpo_pm_cosine": Setting("LDPO-PM with each element's max cosine alone (encode --coding cosine, the coding "
                              "before 2026-12-01)", args=["--encode", "patches"], env={"ENCODE_ARGS": "--coding cosine"}),
    "ldpo_pm_soft": Setting("LDPO-PM with the soft-assignment half alone (encode --coding soft)",
                            args=["--encode", "patches"], env={"ENCODE_ARGS": "--coding soft"}),
    "pca128+jitter": Setting("PCA to 128, jitter 0.3", env={"CLUSTER_ARGS": "--pca 128", "FINETUNE_ARGS": "--jitter 0.3"}),
}


def ldpo() -> list[str]:
    exe = BIN / "ldpo" if (BIN / "ldpo").exists() else shutil.which("ldpo")
    if exe is None:
        raise SystemExit("bench_discovery: no `ldpo` command beside python or on PATH (pip install -e . first)")
    return [str(exe)]


def run(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


# -- data sets -------------------------------------------------------------------------
def make_texture25(out: Path, classes: int, per_class: int, size: int) -> tuple[Path, Path]:
    if not (out / "images.h5").exists():
        run([*ldpo(), "toy-data", "texture25", "--out", str(out), "--classes", str(classes),
             "--per-class", str(per_class), "--size", str(size), "--seed", "0", "--quiet"])
    return out / "images.h5", out / "truth.csv"


def make_pacs(out: Path, studies: int, size: int) -> tuple[Path, Path]:
    """Toy PACS key images; truth = body region of the key image's study (5 regions)."""
    from ldpo.common.files.labels import write_labels
    from ldpo.stages.extract_keyimages.phi import Pseudonyms

    images, truth = out / "keyimages" / "images.h5", out / "truth.csv"
    if truth.exists():
        return images, truth
    region_truth = out / "truth-region.csv"
    run([*ldpo(), "toy-data", "pacs", "--out", str(out / "toy"), "--studies", str(studies), "--seed", "0", "--quiet"])
    run([*ldpo(), "extract-keyimages", str(out / "toy" / "dicom"), "--reports", str(out / "toy" / "reports.csv"),
         "--out", str(out / "keyimages"), "--size", str(size), "--quiet"], env=dict(os.environ, LDPO_SALT="bench-salt-0123456789"))
    region = {r["accession"]: r["region"] for r in csv.DictReader(open(out / "toy" / "regions.csv"))}
    pseudo = Pseudonyms("bench-salt-0123456789")  # the manifest's report ids are keyed hashes of the reports' ids
    accession = {pseudo("report", r["report_id"], length=12): r["accession"]
                 for r in csv.DictReader(open(out / "toy" / "reports.csv"))}
    rows = list(csv.DictReader(open(out / "keyimages" / "manifest.csv")))
    regions = [region[accession[r["report_id"]]] for r in rows]
    names = sorted(set(regions))
    write_labels(region_truth, [r["id"] for r in rows], np.array([names.index(x) for x in regions]))
    pairs = [(x, r["modality"]) for x, r in zip(regions, rows)]
    names = sorted(set(pairs))
    write_labels(truth, [r["id"] for r in rows], np.array([names.index(x) for x in pairs]))
    return images, truth


def make_archive(out: Path, classes: int, per_class: int, size: int) -> tuple[Path, Path]:
    images, truth = out / "images.h5", out / "truth.csv"
    if not truth.exists():
        run([*ldpo(), "toy-data", "archive", "--out", str(images), "--truth", str(truth), "--n",
             str(classes * per_class), "--classes", str(classes), "--size", str(size), "--seed", "0", "--quiet"])
    return images, truth


def make_texture25_lt(out: Path, classes: int, largest: int, imbalance: float, size: int) -> tuple[Path, Path]:
    if not (out / "images.h5").exists():
        run([*ldpo(), "toy-data", "texture25", "--out", str(out), "--classes", str(classes), "--per-class",
             str(largest), "--imbalance", str(imbalance), "--size", str(size), "--seed", "0", "--no-sheet", "--quiet"])
    return out / "images.h5", out / "truth.csv"


def make_archive_lt(out: Path, classes: int, n: int, imbalance: float, size: int) -> tuple[Path, Path]:
    images, truth = out / "images.h5", out / "truth.csv"
    if not truth.exists():
        run([*ldpo(), "toy-data", "archive", "--out", str(images), "--truth", str(truth), "--n", str(n),
             "--classes", str(classes), "--imbalance", str(imbalance), "--size", str(size), "--seed", "0",
             "--quiet"])
    return images, truth


def make_pretrained(out: Path, per_class: int, size: int, epochs: int, device: str) -> tuple[Path, Path, Path]:
    """Target = texture families 0-9; a ResNet-18 trained on families 10-24 saved as a weights file."""
    from ldpo.common.files.labels import read_labels, write_labels
    from ldpo.common.files.stores import open_store, write_store

    weights = out / "source-resnet18.pth"
    target, target_truth = out / "target.h5", out / "target-truth.csv"
    if weights.exists():
        return target, target_truth, weights
    images, truth = make_texture25(out / "all", 25, per_class, size)
    labels = read_labels(truth)
    with open_store(images) as store:
        pixels, ids = store.read("images"), store.ids
    is_target = labels.labels < 10
    for mask, store_path, truth_path in ((is_target, target, target_truth),
                                         (~is_target, out / "source.h5", out / "source-truth.csv")):
        rows = np.flatnonzero(mask)
        write_store(store_path, [ids[i] for i in rows], {"stage": "bench"}, images=pixels[rows])
        write_labels(truth_path, [ids[i] for i in rows], labels.labels[rows])
    model = out / "source.pt"
    run([*ldpo(), "finetune", str(out / "source.h5"), str(out / "source-truth.csv"), "--out", str(model),
         "--init", "random", "--arch", "resnet18", "--epochs", str(epochs), "--input-size", str(size),
         "--normalize", "zscore", "--split", "none", "--lr", "0.05", "--schedule", "cosine",
         "--device", device, "--quiet"])
    import torch

    state = torch.load(model, map_location="cpu", weights_only=True)["state_dict"]
    torch.save(state, weights)  # a plain state_dict, like torchvision's ImageNet files
    return target, target_truth, weights


def make_scenes(out: Path, classes: int, per_class: int, size: int, epochs: int, device: str, objects: int = 60
                ) -> tuple[Path, Path, Path]:
    """Toy scenes, and a ResNet-18 trained on their isolated objects saved as a weights file."""
    images, truth, weights = out / "images.h5", out / "truth.csv", out / "objects-resnet18.pth"
    if weights.exists():
        return images, truth, weights
    run([*ldpo(), "toy-data", "scenes", "--out", str(out), "--classes", str(classes), "--per-class",
         str(per_class), "--size", str(size), "--objects", str(objects), "--seed", "0", "--quiet"])
    model = out / "objects.pt"
    run([*ldpo(), "finetune", str(out / "objects" / "images.h5"), str(out / "objects" / "truth.csv"), "--out",
         str(model), "--init", "random", "--arch", "resnet18", "--epochs", str(epochs), "--input-size",
         str(max(32, size // 2)), "--normalize", "zscore", "--split", "none", "--lr", "0.05", "--schedule", "cosine",
         "--device", device, "--quiet"])
    import torch

    torch.save(torch.load(model, map_location="cpu", weights_only=True)["state_dict"], weights)
    return images, truth, weights


def encode_cost(images: Path, weights: Path, out: Path, device: str, threads: int) -> str:
    """``encode --method patches`` (no labels) at N and 2N images: ms per image and peak RSS (flat in N?)."""

    from ldpo.common.files.stores import open_store, write_store

    double = out / "images-2n.h5"
    if not double.exists():
        with open_store(images) as store:
            pixels, ids = store.read("images"), store.ids
        write_store(double, ids + [f"{i}-copy" for i in ids], {"stage": "bench"},
                    images=np.concatenate([pixels, pixels]))
    parts = []
    for path in (images, double):
        cmd = [sys.executable, "-c", "import resource, sys; from ldpo.stages import run; code = run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)",
               "encode", str(path), "--out", str(out / "cost.h5"), "--method", "patches", "--model",
               f"weights:{weights}", "--arch", "resnet18", "--normalize", "zscore", "--input-size", "64",
               "--device", device, "--quiet", "--no-progress"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        with open_store(path) as store:
            n = len(store)
        rss = int(proc.stderr.strip().splitlines()[-1]) / 1024
        parts.append(f"N={n}: {1000 * seconds / n:.0f} ms/image, peak RSS {rss:.0f} MB")
    return "encode --method patches (90 patches x 3 scales, ResNet-18 multiscale at 32 px, wall incl. start-up): " + "; ".join(parts)


def scenes_line(results: list[dict]) -> str | None:
    """``scenes: kmeans=P0 ldpo_global=P1 ldpo_pm=P2``: median final purities (kmeans: iteration 0's global features)."""
    def med(setting: str, column: str) -> str:
        values = [r[column] for r in results if r["set"] == "scenes" and r["setting"] == setting and column in r]
        return f"{float(np.median(values)):.3f}" if values else "-"

    if not any(r["set"] == "scenes" for r in results):
        return None
    return f"scenes: kmeans={med('ldpo_global', 'kmeans0')} ldpo_global={med('ldpo_global', 'purity')} " \
           f"ldpo_pm={med('ldpo_pm', 'purity')}"


# -- one run -----------------------------------------------------------------------------
def read_history(work: Path) -> list[dict[str, str]]:
    with open(work / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def score(labels: Path, truth: Path) -> tuple[float, float]:
    """Purity and NMI of a labels CSV against a truth CSV."""
    from ldpo.common.files.labels import align, read_labels
    from ldpo.common.numerics.metrics import nmi, purity

    t = read_labels(truth)
    pred = align(read_labels(labels), t.ids, str(truth))
    return purity(pred, t.labels), nmi(pred, t.labels)


def consensus_scores(work: Path, last: int, truth: Path, classes: int) -> dict:
    """What ``--keep consensus`` would give this run, computed from it: the purity and NMI of the consensus of
    iterations 0..last's clusterings in the classes of the labels the last model was trained on (the function
    the loop calls), and, where the run kept its final probabilities, the NMI of the category tree that
    ``hierarchy`` builds over them (``tree_nmi@K_cons``), as the loop would under that rule."""
    from ldpo.common.files.labels import align, read_labels, write_labels
    from ldpo.common.loop.consensus import consensus
    from ldpo.common.numerics.metrics import nmi, purity

    t = read_labels(truth)
    labelings = [align(read_labels(work / f"iter-{i:02d}" / "labels.csv"), t.ids, str(truth))
                 for i in range(last + 1) if (work / f"iter-{i:02d}" / "labels.csv").exists()]
    found, _ = consensus(labelings, labelings[-2])
    out = {"purity_cons": purity(found, t.labels), "nmi_cons": nmi(found, t.labels)}
    probs, first = work / "final" / "probs.h5", work / "iter-00" / "features.h5"
    if probs.exists() and first.exists():
        folder = work / "consensus"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        write_labels(folder / "labels.csv", t.ids, found)
        run([*ldpo(), "hierarchy", str(probs), str(folder / "labels.csv"), "--out", str(folder / "tree"),
             "--signals", str(first), "--quiet"])
        scores = tree_scores(folder / "tree" / "levels.csv", truth, classes)
        out.update({f"{key}_cons": value for key, value in scores.items()})
    return out


def at_k(work: Path, iteration: int, k: int, truth: Path, cluster_args: str) -> tuple[float, float]:
    """Purity and NMI against the truth after re-clustering an iteration's features into k groups."""
    import re

    folder = work / f"iter-{iteration:02d}"
    feats = folder / "encoded.h5" if (folder / "encoded.h5").exists() else folder / "features.h5"
    tag = re.sub(r"[^A-Za-z0-9.]+", "_", cluster_args).strip("_")  # the options, readable in the file name
    out = folder / f"labels-at-{k}{'-' + tag if tag else ''}.csv"
    run([*ldpo(), "cluster", str(feats), "--out", str(out), "--k", str(k), *cluster_args.split(), "--quiet"])
    return score(out, truth)


def k_auto(work: Path) -> int:
    """The K that ``cluster --k auto`` chooses on iteration 0's features (what the loop's default would choose
    there: iteration 0's features come from the start network, before any labels), for sets run with K given."""

    folder = work / "iter-00"
    feats = folder / "encoded.h5" if (folder / "encoded.h5").exists() else folder / "features.h5"
    run([*ldpo(), "cluster", str(feats), "--out", str(folder / "labels-auto.csv"), "--k", "auto",
         "--method", "scan", "--summary", str(folder / "sizes-auto"), "--quiet"])
    return int(json.loads((folder / "sizes-auto.k.json").read_text())["k"])


def tree_scores(path: Path, truth: Path, classes: int) -> dict:
    """NMI against the truth of every level of a category tree (its ``levels.csv``; leaves first), and of the
    level whose group count is closest to the truth's class count (the coarser on a tie)."""
    from ldpo.common.files.labels import read_labels
    from ldpo.common.numerics.metrics import nmi

    if not path.exists():
        return {}
    t = read_labels(truth)
    with open(path, newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    levels = [c for c in next(iter(rows.values())) if c.startswith("level")]
    scores, counts = [], []
    for level in levels:
        labels = np.array([int(rows[i][level]) for i in t.ids])
        scores.append(nmi(labels, t.labels))
        counts.append(len(np.unique(labels)))
    near = min(range(len(levels)), key=lambda j: (abs(counts[j] - classes), -j))
    return {"tree_levels": "/".join(map(str, counts)), "tree_nmi": "/".join(f"{v:.3f}" for v in scores),
            "tree_nmi@K": scores[near]}


def one_run(data: str, images: Path, truth: Path, classes: int, name: str, setting: Setting, seed: int,
            work: Path, opts, extra: list[str], extra_truths: dict[str, Path]) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    k = classes * setting.k_mult
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", LDPO_QUIET="1",
               OMP_NUM_THREADS=str(opts.threads), **setting.env)
    k_unknown = "-lt" in data or not setting.k_mult  # archive-shaped or kauto: K not given, the loop's default
    cmd = ["bash", str(LOOP), "--images", str(images), "--work", str(work), "--truth", str(truth),
           *([] if k_unknown else ["--k", str(k)]), "--max-iter", str(opts.max_iter), "--epochs", str(opts.epochs),
           "--input-size", str(opts.size), "--batch-size", "32", "--device", opts.device, "--seed", str(seed),
           *extra, *setting.args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"set": data, "setting": name, "seed": seed, "error": proc.stderr.strip().splitlines()[-1:]}
    rows = read_history(work)
    first, last = rows[0], rows[-1]
    result = {"set": data, "setting": name, "seed": seed, "k": k,
              "purity0": float(first["purity_truth"]), "nmi0": float(first["nmi_truth"]),
              "purity": float(last["purity_truth"]), "nmi": float(last["nmi_truth"]),
              "iterations": int(last["iteration"]), "seconds": round(wall, 1)}
    if (work / "final" / "labels.csv").exists():  # what the loop keeps (the keep rule), on every set
        result["purity_final"], result["nmi_final"] = score(work / "final" / "labels.csv", truth)
    if int(last["iteration"]) > 0 and "--init-labels" not in setting.args:
        result.update(consensus_scores(work, int(last["iteration"]), truth, classes))
    if k_unknown:
        result["k"] = "default" if not any(a == "--k" for a in setting.args) else k  # not given: the loop's
        result["k0"], result["k_end"] = int(first["k"]), int(last["k"])
        result.update(tree_scores(work / "final" / "tree" / "levels.csv", truth, classes))
    else:
        result["k_auto"] = k_auto(work)
    # the baseline the loop must beat: plain k-means (k = classes) on the same iteration-0 features
    result["kmeans0"], result["kmeans0_nmi"] = at_k(work, 0, classes, truth, "--method kmeans")
    for name, other in extra_truths.items():
        result[f"purity0_{name}"], result[f"nmi0_{name}"] = score(work / "iter-00" / "labels.csv", other)
        result[f"purity_{name}"], result[f"nmi_{name}"] = score(work / f"iter-{int(last['iteration']):02d}"
                                                                / "labels.csv", other)
    if setting.k_mult > 1:
        args = setting.env.get("CLUSTER_ARGS", "")
        result["purity0@K"], result["nmi0@K"] = at_k(work, 0, classes, truth, args)
        result["purity@K"], result["nmi@K"] = at_k(work, int(last["iteration"]), classes, truth, args)
    if not opts.keep:
        for big in work.glob("iter-*/*.pt"):
            big.unlink()
    return result


# -- report ------------------------------------------------------------------------------
COLUMNS = ["set", "setting", "seed", "k", "kmeans0", "purity0", "purity", "kmeans0_nmi", "nmi0", "nmi",
           "k0", "k_end", "k_auto", "purity_final", "nmi_final", "purity_cons", "nmi_cons", "tree_levels", "tree_nmi", "tree_nmi@K",
           "tree_levels_cons", "tree_nmi_cons", "tree_nmi@K_cons",
           "purity0_region", "purity_region", "nmi0_region", "nmi_region",
           "purity0@K", "purity@K", "nmi0@K", "nmi@K", "iterations", "seconds"]


def read_truth(path: Path) -> np.ndarray:
    from ldpo.common.files.labels import read_labels

    return read_labels(path).labels


def fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def environment() -> dict:
    """What a run's floats depend on beyond the seed: the library versions and the CPU's vector unit (torch's
    CPU kernels take other paths on AVX-512 than on AVX2, so the same seed can give another run on another
    machine, and a loop of clusterings and fine-tunings carries a first difference on to other labels)."""
    import platform
    from importlib import metadata

    import torch

    versions = {}
    for name in ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "networkx", "faiss-cpu", "faiss-gpu",
                 "timm", "h5py"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return {"python": platform.python_version(), "machine": platform.machine(), "cpu": model,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "versions": versions}


def print_table(rows: list[dict], title: str) -> None:
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    print(f"\n{title}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")


def medians(results: list[dict]) -> list[dict]:
    out = []
    for key in dict.fromkeys((r["set"], r["setting"]) for r in results):
        group = [r for r in results if (r["set"], r["setting"]) == key and "error" not in r]
        if not group:
            continue
        row = {"set": key[0], "setting": key[1], "seed": f"{len(group)} seeds", "k": group[0]["k"]}
        for c in COLUMNS[4:]:
            values = [r[c] for r in group if c in r and not isinstance(r[c], str)]
            if values:
                row[c] = float(np.median(values)) if c != "iterations" else int(np.median(values))
        row["seconds"] = round(float(np.median([r["seconds"] for r in group])), 1)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="texture25,pacs,archive,pretrained")
    p.add_argument("--settings", default="default", help="comma-separated names, or all (see --list)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--classes", type=int, default=25)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--max-iter", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--lt-classes", type=int, default=10, help="classes of the long-tailed sets")
    p.add_argument("--lt-largest", type=int, default=100, help="images of the largest class (texture25-lt*)")
    p.add_argument("--lt-n", type=int, default=300, help="images of the archive-lt* sets")
    p.add_argument("--scene-classes", type=int, default=10)
    p.add_argument("--scene-per-class", type=int, default=40)
    p.add_argument("--scene-objects", type=int, default=300, help="isolated objects per kind the scenes' network "
                   "is pretrained on")
    p.add_argument("--scene-pretrain-epochs", type=int, default=30, help="epochs of the scenes' pretraining")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=0, help="threads per run (default: cores / jobs)")
    p.add_argument("--out", default="out/bench-discovery")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints of every run")
    p.add_argument("--list", action="store_true")
    opts = p.parse_args(argv)
    if opts.list:
        for name, s in SETTINGS.items():
            print(f"{name:14s} {s.help}")
        return 0
    names = list(SETTINGS) if opts.settings == "all" else opts.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown} (see --list)")
    opts.threads = opts.threads or max(1, (os.cpu_count() or 1) // opts.jobs)
    out = Path(opts.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in opts.seeds.split(",")]

    jobs = []
    for data in opts.sets.split(","):
        extra: list[str] = []
        extra_truths: dict[str, Path] = {}
        if data == "texture25":
            images, truth = make_texture25(out / "data-texture25", opts.classes, opts.per_class, opts.size)
            classes = opts.classes
        elif data == "pacs":
            images, truth = make_pacs(out / "data-pacs", 40, opts.size)
            extra_truths = {"region": truth.with_name("truth-region.csv")}
            classes = 9
        elif data == "archive":
            images, truth = make_archive(out / "data-archive", 20, 50, opts.size)
            classes = 20
        elif data == "scenes":
            images, truth, weights = make_scenes(out / "data-scenes", opts.scene_classes, opts.scene_per_class,
                                                 opts.size, opts.scene_pretrain_epochs, opts.device, opts.scene_objects)
            classes = opts.scene_classes
            extra = ["--init", f"weights:{weights}", "--arch", "resnet18", "--normalize", "zscore"]
            print(encode_cost(images, weights, out / "data-scenes", opts.device, opts.threads), file=sys.stderr,
                  flush=True)
        elif data.startswith(("texture25-lt", "archive-lt")):
            kind, ratio = data.split("-lt")
            if kind == "texture25":
                images, truth = make_texture25_lt(out / f"data-{data}", opts.lt_classes, opts.lt_largest,
                                                  float(ratio), opts.size)
            else:
                images, truth = make_archive_lt(out / f"data-{data}", opts.lt_classes, opts.lt_n, float(ratio),
                                                opts.size)
            classes = len(np.unique(read_truth(truth)))
        elif data == "pretrained":
            images, truth, weights = make_pretrained(out / "data-pretrained", opts.per_class, opts.size,
                                                     opts.pretrain_epochs, opts.device)
            classes = 10
            extra = ["--init", f"weights:{weights}", "--arch", "resnet18", "--normalize", "zscore"]
        else:
            p.error(f"unknown set {data}")
        for name in names:
            for seed in seeds:
                jobs.append((data, images, truth, classes, name, SETTINGS[name], seed,
                             out / f"{data}-{name}-s{seed}", opts, extra, extra_truths))
    env = environment()
    (out / "environment.json").write_text(json.dumps(env, indent=1) + "\n")
    print(f"environment: {env['cpu']} ({env['cpu_capability']}), torch {env['versions'].get('torch')}, numpy "
          f"{env['versions'].get('numpy')}, scikit-learn {env['versions'].get('scikit-learn')}, networkx "
          f"{env['versions'].get('networkx')}; all in {out / 'environment.json'}", file=sys.stderr)
    print(f"{len(jobs)} runs, {opts.jobs} at a time, {opts.threads} threads each, device {opts.device}",
          file=sys.stderr)
    start = time.perf_counter()
    results = []
    with open(out / "results.csv", "w", newline="") as fh, ThreadPoolExecutor(opts.jobs) as pool:
        writer = csv.DictWriter(fh, COLUMNS + ["error"], extrasaction="ignore")
        writer.writeheader()
        for future in as_completed([pool.submit(one_run, *job) for job in jobs]):  # rows land as runs end
            r = future.result()
            results.append(r)
            writer.writerow(r)
            fh.flush()
            print(" ".join(f"{k}={fmt(v)}" for k, v in r.items()), file=sys.stderr, flush=True)
    results.sort(key=lambda r: ([j[0] for j in jobs].index(r["set"]), names.index(r["setting"]), r["seed"]))
    print_table(results, "runs")
    print_table(medians(results), "medians over seeds")
    print(f"\n{len(results)} runs in {time.perf_counter() - start:.0f} s; rows in {out / 'results.csv'}")
    line = scenes_line(results)
    if line:
        print(line)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
