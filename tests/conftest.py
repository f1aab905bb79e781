"""Shared test fixtures: run a command in-process, and small toy data sets made once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# Two cores here: keep BLAS/torch from oversubscribing when tests run beside other work.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """``cli("cluster", "feats.h5", "--out", "l.csv")`` runs ``ldpo cluster …`` in-process."""
    from ldpo.stages import run

    def call(*argv: str) -> Result:
        capsys.readouterr()
        code = run([str(a) for a in argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """``toy(classes=5, per_class=12, size=64)`` → folder with images.h5 and truth.csv (cached)."""
    made: dict[tuple, Path] = {}

    def make(classes: int = 5, per_class: int = 12, size: int = 64, fmt: str = "h5", seed: int = 0) -> Path:
        key = (classes, per_class, size, fmt, seed)
        if key not in made:
            from ldpo.common.labels import write_labels
            from ldpo.common.stores import write_store
            from ldpo.stages.toy_data.texture25 import generate

            out = tmp_path_factory.mktemp(f"toy{classes}x{per_class}")
            images, ids, labels = generate(classes, per_class, size, seed, show_progress=False)
            write_store(out / f"images.{fmt}", ids, {"stage": "test"}, images=images)
            write_labels(out / "truth.csv", ids, labels)
            made[key] = out
        return made[key]

    return make
