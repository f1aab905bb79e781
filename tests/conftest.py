"""Shared test fixtures: run a command in-process, and small toy data sets made once."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

# Two cores here: keep BLAS/torch from oversubscribing when tests run beside other work.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# `pytest -m smoke`: a quick subset (well under 3 minutes on 2 cores) that touches every
# installed library once (torch, faiss, h5py, zarr, the command line, the loop script); run by
# docker/check.sh inside the image, where the dev extra's test data is absent. Listed here by
# test name (parameters included) rather than by decorators, so adding one touches one file.
SMOKE = {
    "tests/test_packaging.py::test_every_subpackage_is_listed",
    "tests/test_packaging.py::test_console_scripts_exist_and_cover_every_command",
    "tests/test_packaging.py::test_every_command_has_help_with_an_example",
    "tests/test_packaging.py::test_loop_script_help_and_bad_option",
    "tests/test_cli.py::test_closed_stdout_is_not_an_error",
    "tests/test_labels.py::test_bad_files",
    "tests/test_stores.py::test_round_trip_every_kind",
    "tests/test_stores.py::test_interrupted_write_leaves_no_final_output",
    "tests/test_converge.py::test_identical_partitions_converge",
    "tests/test_converge.py::test_missing_or_malformed_files_exit_2",
    "tests/test_toy_data.py::test_same_seed_same_bytes_other_seed_differs",
    "tests/test_cluster.py::test_kmeans_recovers_separated_blobs_and_writes_summary",
    "tests/test_cluster.py::test_bad_inputs_exit_2_with_one_line",
    "tests/test_featurize.py::test_global_features_are_deterministic_and_keep_the_store_ids",
    "tests/test_featurize.py::test_bad_input_exits_2_with_one_line",
    "tests/test_finetune.py::test_allow_missing_trains_on_the_labelled_images_only",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "smoke: the quick subset docker/check.sh runs inside the image")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("[")[0] in SMOKE:
            item.add_marker(pytest.mark.smoke)


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


@pytest.fixture
def ws(workspace, tmp_path):
    """A copy of the test module's ``workspace`` fixture (a folder it builds once, module-scoped), links
    copied as links, for one case to change freely."""
    work = tmp_path / "ws"
    shutil.copytree(workspace, work, symlinks=True)
    return work


@pytest.fixture
def no_salt(monkeypatch):
    """No ``LDPO_SALT`` from the environment: extract-keyimages takes ``--salt`` or makes (or reuses) a key file."""
    monkeypatch.delenv("LDPO_SALT", raising=False)


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """``toy(classes=5, per_class=12, size=64)`` → folder with images.h5 and truth.csv (cached)."""
    made: dict[tuple, Path] = {}

    def make(classes: int = 5, per_class: int = 12, size: int = 64, fmt: str = "h5", seed: int = 0) -> Path:
        key = (classes, per_class, size, fmt, seed)
        if key not in made:
            from ldpo.common.files.labels import write_labels
            from ldpo.common.files.stores import write_store
            from ldpo.stages.toy_data.texture25 import generate

            out = tmp_path_factory.mktemp(f"toy{classes}x{per_class}")
            images, ids, labels = generate(classes, per_class, size, seed, show_progress=False)
            write_store(out / f"images.{fmt}", ids, {"stage": "test"}, images=images)
            write_labels(out / "truth.csv", ids, labels)
            made[key] = out
        return made[key]

    return make
