"""Work folders for the report tests: a real loop run on a small toy set, and a synthetic
270-category folder built from files (made once per test session, shared on disk)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import loop_env

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    return loop_env()


def loop_work(tmp_path_factory) -> Path:
    """A finished loop: toy Texture-25 (4 classes x 8, 48 px), k 4, two iterations of one epoch."""
    base = tmp_path_factory.getbasetemp() / "report-loop"
    work = base / "work"
    if (work / "final" / "tree" / "tree.json").exists():
        return work
    base.mkdir(exist_ok=True)
    subprocess.run([str(BIN / "ldpo"), "toy-data", "texture25", "--out", str(base / "toy"), "--classes", "4",
                    "--per-class", "8", "--size", "48", "--no-sheet", "-q"], check=True, env=env())
    proc = subprocess.run(
        ["bash", str(ROOT / "pipelines/ldpo-loop.sh"), "--images", str(base / "toy/images.h5"), "--work", str(work),
         "--truth", str(base / "toy/truth.csv"), "--k", "4", "--max-iter", "2", "--epochs", "1", "--input-size", "48",
         "--batch-size", "32", "--device", "cpu", "--split", "none"],
        env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "run.json").is_file()  # the loop wrote its run record
    return work


def synthetic_work(tmp_path_factory, k: int = 270, per_class: int = 6, blocks: int = 27) -> Path:
    """``k`` categories with planted confusion blocks; tree from the real ``hierarchy`` stage."""
    from ldpo.common.files.labels import write_labels
    from ldpo.common.files.stores import write_store
    from ldpo.common.loop.workdir import RunRecord
    from ldpo.stages import run

    base = tmp_path_factory.getbasetemp() / f"report-synthetic-{k}"
    work = base / "work"
    if (work / "final" / "tree" / "tree.json").exists():
        return work
    rng = np.random.default_rng(0)
    n = k * per_class
    y = np.repeat(np.arange(k), per_class)
    ids = [f"x{i:05d}" for i in range(n)]
    # images: a gray level per block and a stripe frequency per class, plus noise
    xs = np.linspace(0, 2 * np.pi, 64)
    images = np.empty((n, 64, 64), np.uint8)
    for i, c in enumerate(y):
        img = 110 + 60 * np.sin((1 + c % 10) * xs)[None, :] + 30 * (c // (k // blocks) % 3) \
            + rng.normal(0, 12, (64, 64))
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    (work / "final").mkdir(parents=True)
    write_store(base / "images.h5", ids, {"stage": "test"}, images=images)
    per_block = k // blocks
    scores = np.full((n, k), 0.01)
    for i, c in enumerate(y):
        b = c // per_block
        scores[i, b * per_block:(b + 1) * per_block] = 0.05
        scores[i, c] = 0.6
    scores *= np.exp(0.3 * rng.standard_normal(scores.shape))
    scores = (scores / scores.sum(1, keepdims=True)).astype(np.float32)
    write_store(work / "final/probs.h5", ids, {"stage": "featurize", "layer": "probs", "classes": list(range(k))},
                features=scores)
    write_labels(work / "final/labels.csv", ids, y)
    assert run(["hierarchy", str(work / "final/probs.h5"), str(work / "final/labels.csv"), "--out",
                str(work / "final/tree"), "-q"]) == 0
    (work / "history.csv").write_text(
        "iteration,k,purity_prev,inverse_purity_prev,nmi_prev,ari_prev,purity_truth,nmi_truth,ari_truth,"
        "hungarian_truth,top1,converged,timestamp\n"
        f"0,{k},,,,,,,,,,0,2026-01-01T00:00:00\n1,{k},0.61,0.6,0.8,0.5,,,,,0.7,0,2026-01-01T01:00:00\n"
        f"2,{k},0.93,0.92,0.95,0.9,,,,,0.8,1,2026-01-01T02:00:00\n")
    RunRecord(settings={"images": str(base / "images.h5"), "truth": "", "k": str(k), "method": "kmeans",
                        "arch": "resnet18", "seed": "0"},
              commands={"featurize_cmd": "ldpo featurize"}, inputs={"images_sha256": "0" * 64},
              ldpo_version="test").write(work / "run.json")
    return work
