"""Integration: the LDPO loop end to end on the toy sets, through pipelines/ldpo-loop.sh."""

from __future__ import annotations

import csv
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from ldpo.common.loop.keep import kept_by_rule
from ldpo.common.files.labels import align, read_labels
from ldpo.common.numerics.metrics import purity
from ldpo.common.files.stores import open_store
from helpers import loop_env

ROOT = Path(__file__).resolve().parents[1]
LOOP = ROOT / "pipelines/ldpo-loop.sh"
BIN = Path(sys.executable).parent

# Small settings every loop test shares: 64 px images, ResNet-18 from random init.
FAST = ["--input-size", "64", "--batch-size", "32", "--device", "cpu", "--split", "none"]


env = loop_env


def loop(*args, check: bool = True, **extra_env) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(LOOP), *map(str, args)], env=env(**extra_env),
                          capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def history(work: Path) -> list[dict[str, str]]:
    with open(work / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def truth_purity(labels_csv: Path, truth_csv: Path) -> float:
    truth = read_labels(truth_csv)
    pred = align(read_labels(labels_csv), truth.ids, "truth")
    return purity(pred, truth.labels)


def first_merges_sharing_a_class(work: Path, truth_csv: Path) -> tuple[float, float]:
    """For the tree's first level: the fraction of merged category pairs whose majority truth
    classes agree, and the same fraction over all pairs of categories (chance)."""
    import json

    from ldpo.stages.toy_data.families import first_level_groups, same_family_fraction

    found, truth = read_labels(work / "final/labels.csv"), read_labels(truth_csv).mapping()
    majority = {}
    for c in found.classes:
        values, counts = np.unique([truth[i] for i, lab in zip(found.ids, found.labels) if lab == c],
                                   return_counts=True)
        majority[c] = int(values[np.argmax(counts)])
    tree = json.loads((work / "final/tree/tree.json").read_text())
    merged, _ = same_family_fraction([[majority[c] for c in g] for g in first_level_groups(tree)])
    chance, _ = same_family_fraction([[majority[c] for c in found.classes]])
    return merged, chance


def test_loop_learns_from_random_init(toy):
    """The demo's recipe (10 texture classes x 24, 64 px, Sobel, random init, k = 20: twice the
    classes, tree preference 0.9) must discover: the final labels (final/labels.csv, the ones the last model was
    trained on, checked to be the kept ones) and the last clustering at purity >= 0.80, the final labels
    >= raw pixels + 0.20. No bound ties the last iteration to iteration 0: from random init, fine-tuning on 168
    images moves a few of iteration 0's images either way, and the result depends on the thread count (the
    same count gives the same run; the figures at one and two threads are in docs/measurements.md, "The loop
    test"). Its tree's first merges must re-join what the clustering split: merged categories share their
    majority truth class at least 3 times as often as two categories taken at random (README, "The category
    tree")."""
    from ldpo.stages.toy_data.texture25 import raw_pixel_purity

    data = toy(classes=10, per_class=24, size=64)
    work = data / "run-learns"
    proc = loop("--images", data / "images.h5", "--work", work, "--truth", data / "truth.csv",
                "--k", 20, "--max-iter", 5, "--epochs", 3, "--input-filter", "sobel", "--tree-preference", 0.9, *FAST,
                "--split", "70/10/20",  # images held out of fine-tuning score each iteration's labels (history)
                CLUSTER_ARGS="")  # the stages' defaults: this test asserts the categories
    rows = history(work)
    assert [int(r["iteration"]) for r in rows] == list(range(len(rows)))
    assert 2 <= len(rows) <= 6
    # the loop keeps the labels the last model was trained on (--keep last); every one has its held-out figure
    kept, _ = kept_by_rule("last", rows, len(rows) - 1)
    assert kept == len(rows) - 2
    scores = {int(r["iteration"]): float(r["heldout"]) for r in rows if r["heldout"]}
    assert set(scores) == set(range(len(rows) - 1))
    assert read_labels(work / "final/labels.csv").labels.tolist() == \
        read_labels(work / f"iter-{kept:02d}/labels.csv").labels.tolist()
    with open_store(data / "images.h5") as store:
        raw = raw_pixel_purity(store.read("images"), read_labels(data / "truth.csv").labels)
    first = float(rows[0]["purity_truth"])
    last = float(rows[-1]["purity_truth"])
    final = truth_purity(work / "final/labels.csv", data / "truth.csv")
    merged, chance = first_merges_sharing_a_class(work, data / "truth.csv")
    message = (f"purity vs truth: raw pixels {raw:.3f}, iteration 0 {first:.3f}, last iteration {last:.3f}, "
               f"final labels {final:.3f}; first merges sharing a truth class {merged:.3f} (chance {chance:.3f})")
    print(message)
    print(proc.stdout)
    assert final >= 0.80 and last >= 0.80, message
    assert final >= raw + 0.20, message
    assert merged >= 3 * chance and merged >= 0.25, message
    assert (work / "report/index.html").exists() and (work / "final/model.pt").exists()


def test_stopped_during_finetune_resumes_to_the_same_labels(toy, tmp_path):
    """A loop stopped inside iteration 1's fine-tuning and run again ends with the labels and history of one that
    ran straight through (one fine-tuning iteration: what follows a resumed iteration is an ordinary one)."""
    data = toy(classes=4, per_class=8, size=48)
    args = ["--images", data / "images.h5", "--truth", data / "truth.csv", "--k", 4,
            "--max-iter", 1, "--epochs", 2, "--no-early-stop", *FAST]
    loop("--work", tmp_path / "straight", *args)

    killed = tmp_path / "killed"
    # finetune stops right after its first epoch's resume state, as a kill there would leave it
    # (a deterministic stand-in for SIGKILL: polling for that moment raced a fast epoch)
    stopped = loop("--work", killed, *args, check=False, LDPO_STOP_AFTER_EPOCH="1")
    assert stopped.returncode != 0
    assert (killed / "iter-01/model.pt.partial").is_file()
    assert not (killed / "iter-01/model.pt").exists()
    loop("--work", killed, *args)
    for name in ("final/labels.csv", "iter-01/labels.csv"):  # iteration 1's: clustered with the resumed model
        a, b = read_labels(tmp_path / "straight" / name), read_labels(killed / name)
        assert a.ids == b.ids and np.array_equal(a.labels, b.labels), name
    assert [r["nmi_prev"] for r in history(killed)] == [r["nmi_prev"] for r in history(tmp_path / "straight")]


AGGLOMERATIVE = '''
import argparse, sys
import numpy as np
from sklearn.cluster import AgglomerativeClustering
from ldpo.common.files.stores import open_store
from ldpo.common.files.labels import write_labels
p = argparse.ArgumentParser()
p.add_argument("features"); p.add_argument("--out", required=True); p.add_argument("--k", type=int, required=True)
args, _ = p.parse_known_args()
with open_store(args.features, expect="features") as s:
    x, ids = s.read("features"), s.ids
x = x / np.linalg.norm(x, axis=1, keepdims=True)
write_labels(args.out, ids, AgglomerativeClustering(n_clusters=args.k, linkage="ward").fit_predict(x))
'''


def test_swapped_cluster_stage(toy, tmp_path):
    data = toy(classes=4, per_class=8, size=48)
    script = tmp_path / "agglo.py"
    script.write_text(AGGLOMERATIVE)
    work = tmp_path / "run"
    # what is tested is the swap and the stop signal, not learning (test_loop_learns_from_random_init):
    # 32 images make one batch per epoch, so consecutive clusterings agree at NMI 0.35-0.6
    loop("--images", data / "images.h5", "--work", work, "--k", 4, "--max-iter", 4, "--epochs", 2,
         "--threshold", 0.3, *FAST, CLUSTER_CMD=f"{sys.executable} {script}")
    rows = history(work)
    assert rows[-1]["converged"] in ("1", "True", "true", "yes")
    assert len(rows) < 5, "converged before --max-iter"
    assert not list(work.glob("iter-*/clusters*")), "the swapped stage ran, not ldpo cluster"


def test_deepmcat_variant_by_options_alone(toy, tmp_path):
    """Random init, balanced sampling, 8x over-clustering, no early stop."""
    data = toy(classes=3, per_class=12, size=48)
    work = tmp_path / "run"
    loop("--images", data / "images.h5", "--work", work, "--truth", data / "truth.csv",
         "--k", 24, "--balanced", "--no-early-stop", "--max-iter", 2, "--epochs", 1, "--threshold", 0.0, *FAST)
    rows = history(work)
    assert len(rows) == 3
    assert all(int(r["k"]) > 3 for r in rows)  # over-clustered: more clusters than classes
    tuned = __import__("torch").load(work / "iter-02/model.pt", weights_only=True)
    assert tuned["options"]["balanced"] is True


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.sources += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#")]


def test_pacs_path_end_to_end(tmp_path):
    """toy PACS -> extract-keyimages -> topic-label -> loop from topic labels -> tree + review sheet."""
    out = tmp_path / "out"
    proc = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT / "pipelines"), "pacs", f"OUT={out}", "DEVICE=cpu",
         "MAX_ITER=2", "EPOCHS=1", "PACS_STUDIES=20", "PACS_TOPICS=5", "PACS_K=5", "BATCH_SIZE=32",
         "EXTRA=--split none"],
        env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sheet = out / "pacs/run/final/keywords/index.html"
    parser = Links()
    parser.feed(sheet.read_text())
    assert parser.sources and all((sheet.parent / s).exists() for s in parser.sources)
    words = {row["word"] for row in csv.DictReader(open(sheet.parent / "keywords.csv"))}
    assert len(words) >= 5
    tree = __import__("json").loads((out / "pacs/run/final/tree/tree.json").read_text())
    assert tree["affinity"] == "reports" and tree["preference"] == 0.9  # the Makefile's toy PACS recipe
    assert len(history(out / "pacs/run")) >= 2


def test_encoded_conv_features_path(toy, tmp_path):
    """--encode vlad: featurize a conv layer (local descriptors), encode, then cluster."""
    data = toy(classes=3, per_class=8, size=48)
    work = tmp_path / "run"
    loop("--images", data / "images.h5", "--work", work, "--k", 3, "--encode", "vlad", "--max-iter", 1,
         "--epochs", 1, *FAST, ENCODE_ARGS="--components 4 --dim 8")
    with open_store(work / "iter-01/features.h5") as local, open_store(work / "iter-01/encoded.h5") as encoded:
        assert local.kind == "local" and local.attrs["layer"] == "layer4"
        assert encoded.shape("features") == (24, 8) and encoded.attrs["method"] == "vlad"
    assert len(read_labels(work / "iter-01/labels.csv")) == 24


TINY_LOOP = ["--k", 3, "--max-iter", 1, "--epochs", 1, *FAST]


def test_a_rerun_with_other_settings_is_refused_until_restart_or_fresh(toy, tmp_path):
    data = toy(classes=3, per_class=4, size=32)
    work = tmp_path / "w"
    args = ["--images", data / "images.h5", "--work", work, "--truth", data / "truth.csv", *TINY_LOOP]
    loop(*args)
    record = (work / "run.json").read_text()
    labels = (work / "final/labels.csv").read_bytes()
    assert '"k": "3"' in record and '"images_sha256": "' in record
    loop(*args)  # the same settings: resumes, nothing recomputed
    assert (work / "final/labels.csv").read_bytes() == labels
    for change in (["--k", 2], ["--seed", 5], ["--epochs", 2]):
        proc = loop(*args, *change, check=False)
        assert proc.returncode == 2, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith("ldpo-loop: error: ") and str(work / "run.json") in line
        assert f'{change[0][2:]}: "' in line, line  # names the setting that differs
        assert (work / "final/labels.csv").read_bytes() == labels  # the old results are untouched
    other = toy(classes=3, per_class=5, size=32)
    proc = loop("--images", other / "images.h5", *args[2:], "--restart-from", "iter-1", check=False)
    assert proc.returncode == 2 and "use --fresh" in proc.stderr  # other inputs: earlier iterations can't stay
    loop(*args, "--k", 2, "--restart-from", "iter-1")
    rows = history(work)
    assert [r["k"] for r in rows] == ["3", "2"]  # iteration 0 kept, iteration 1 redone with k=2
    assert '"k": "2"' in (work / "run.json").read_text()
    loop(*args, "--seed", 5, "--max-iter", 0, "--fresh")  # iteration 0 alone shows the fresh start
    assert '"seed": "5"' in (work / "run.json").read_text() and len(history(work)) == 1
    assert not (work / "iter-01").exists()  # the earlier run's iteration 1 went with it


def test_tree_settings_and_changing_them_remakes_only_the_tree(toy, tmp_path):
    import json

    data = toy(classes=3, per_class=4, size=32)
    work = tmp_path / "w"
    args = ["--images", data / "images.h5", "--work", work, "--truth", data / "truth.csv", *TINY_LOOP]
    loop(*args, "--tree-affinity", "centroids")
    tree = json.loads((work / "final/tree/tree.json").read_text())
    last = sorted(work.glob("iter-*/features.h5"))[-1]
    assert tree["affinity"] == "centroids" and tree["features"] == str(last)  # the final model's features
    assert '"tree_affinity": "centroids"' in (work / "run.json").read_text()
    kept = {p: p.stat().st_mtime_ns for p in [work / "final/model.pt", work / "final/labels.csv", last]}
    loop(*args, "--tree-preference", "0.9")  # the default affinity, another preference: only the tree and
    tree = json.loads((work / "final/tree/tree.json").read_text())  # the report are made again
    assert tree["affinity"] == "lift" and tree["preference"] == 0.9
    assert '"tree_affinity": "lift"' in (work / "run.json").read_text()
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert (work / "report/index.html").exists()
    proc = loop(*args, "--tree-affinity", "nearest", check=False)
    assert proc.returncode == 2 and "--tree-affinity nearest: one of lift, confusion, centroids, reports" in proc.stderr
    proc = loop(*args, "--tree-affinity", "reports", check=False)
    assert proc.returncode == 2 and "--tree-affinity reports needs --reports and --manifest" in proc.stderr
    proc = loop(*args, "--tree-preference", "2", check=False)
    assert proc.returncode == 2 and "--tree-preference 2: a quantile between 0 and 1" in proc.stderr
    proc = loop(*args, "--k", 2, "--tree-preference", "0.5", check=False)  # not the tree alone: refused
    assert proc.returncode == 2 and "k: " in proc.stderr and "tree_preference: " in proc.stderr


def test_the_loop_reads_the_verdict_and_never_takes_a_crash_for_go_on(toy, tmp_path):
    data = toy(classes=3, per_class=4, size=32)
    args = ["--images", data / "images.h5", "--truth", data / "truth.csv", *TINY_LOOP]
    # a converge that dies before printing (an import error exits 1, "go on") stops the loop
    proc = loop("--work", tmp_path / "a", *args, check=False, CONVERGE_CMD="python3 -c 'import sys; sys.exit(1)'")
    assert proc.returncode == 2 and "printed no converged=0|1 verdict" in proc.stderr, proc.stderr


def test_loop_usage_errors_exit_2(tmp_path):
    proc = loop("--images", tmp_path / "x.h5", "--work", tmp_path / "w", "--k", check=False)
    assert proc.returncode == 2 and "--k needs a value" in proc.stderr
    proc = loop("--help", check=False)
    assert proc.returncode == 0 and "set -euo" not in proc.stdout and "--restart-from" in proc.stdout


def test_keep_consensus_runs_end_to_end(toy):
    """--keep consensus through the whole loop: final/labels.csv holds the consensus in the last model's classes
    (the same K and numbers, so its probabilities, the tree and the report read it), and the summary and the
    report page say what the final labels are."""
    data = toy(classes=4, per_class=8, size=48)
    work = data / "run-consensus"
    proc = loop("--images", data / "images.h5", "--work", work, "--truth", data / "truth.csv", "--k", 4,
                "--max-iter", 1, "--epochs", 1, "--keep", "consensus", *FAST)
    rows = history(work)
    kept = read_labels(work / f"iter-{len(rows) - 2:02d}/labels.csv")
    final = read_labels(work / "final/labels.csv")
    assert final.ids == kept.ids and set(final.labels.tolist()) == set(kept.labels.tolist())
    said = (work / "final/consensus.txt").read_text()
    assert f"consensus of {len(rows)} clusterings" in said
    assert "final/labels.csv is the consensus" in proc.stdout + proc.stderr
    page = (work / "report/index.html").read_text()
    assert "consensus of" in page and (work / "final/tree/tree.json").exists()
