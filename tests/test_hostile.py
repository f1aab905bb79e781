"""A new user's bad day: every hostile input is exit 2, one line naming the file, nothing clobbered.

Each case runs one command in-process on a copy of a small finished run (images, labels,
features, an extraction) and asserts: exit status 2; stderr is exactly one line
``COMMAND: error: …`` that names the file (or flag) at fault, without a traceback; and
every file that was there before is byte-identical afterwards, with nothing added (no
output over an input, no temporary left behind).

Cases that would harm the machine on a version without the fix (``--size 100000``
exhausting memory, an output over ``/dev/null``) are guarded without ever reaching
that point here: bounds and special files are refused before any work starts.
"""

from __future__ import annotations

import csv
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import refused, toy_workspace

SALT = ["--salt", "hostile-salt-0123456789"]


# -- a small finished run, built once and copied per case (``ws``, conftest.py) --------------

def data_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    assert path, name
    return Path(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, toy):
    """images.h5, labels.csv, feats.h5/.zarr, local.h5, an extraction (keys/) and its sources."""
    from ldpo.common.files.stores import open_store, write_store
    from ldpo.stages import run

    ws = tmp_path_factory.mktemp("finished")
    rng = np.random.default_rng(0)
    ids = toy_workspace(ws, toy(classes=3, per_class=4, size=32), rng)
    write_store(ws / "feats.zarr", ids, {"stage": "test"}, features=rng.normal(size=(len(ids), 8)).astype(np.float32))
    with open_store(ws / "images.h5") as store:
        write_store(ws / "images.zarr", ids, {"stage": "test"}, images=store.read("images"))
    write_store(ws / "local.h5", ids, {"stage": "test"}, local=rng.normal(size=(len(ids), 4, 8)).astype(np.float32))
    src = ws / "dicom"
    src.mkdir()
    for name in ("MR_small.dcm", "CT_small.dcm"):
        shutil.copy(data_file(name), src / name)
    broken = ws / "broken"
    broken.mkdir()
    for name in ("MR_truncated.dcm", "test-SR.dcm"):
        shutil.copy(data_file(name), broken / name)
    assert run(["extract-keyimages", str(src), "--out", str(ws / "keys"), "--size", "32", "-q", *SALT]) == 0
    return ws


# -- inputs made bad on purpose ---------------------------------------------------------------

def write_rows(path: Path, rows: list[list], encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as fh:
        csv.writer(fh).writerows(rows)
    return path


def reports_in(ws: Path, encoding: str) -> Path:
    return write_rows(ws / f"reports-{encoding}.csv",
                      [["report_id", "study_uid", "text"], ["r1", "1.2.3", "Épanchement: image 1, série 2"]], encoding)


def latin1_report_folder(ws: Path) -> Path:
    folder = ws / "report-txt"
    folder.mkdir()
    (folder / "A1.txt").write_bytes("Épanchement pleural, image 1".encode("latin-1"))
    return folder


def corrupt_zarr_chunk(ws: Path) -> Path:
    chunks = sorted(p for p in (ws / "feats.zarr" / "features").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunks[0].write_bytes(b"garbage" * 10)
    return ws / "feats.zarr"


def corrupt_image_chunk(ws: Path) -> Path:
    chunks = sorted(p for p in (ws / "images.zarr" / "images").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunks[-1].write_bytes(b"garbage" * 10)
    return ws / "images.zarr"


def integer_ids(ws: Path) -> Path:
    import h5py

    path = ws / "int-ids.h5"
    with h5py.File(path, "w") as fh:
        fh["features"] = np.zeros((3, 4), np.float32)
        fh["ids"] = np.arange(3)
    return path


def huge_label(ws: Path) -> Path:
    text = (ws / "labels.csv").read_text().splitlines()
    first_id = text[1].split(",")[0]
    text[1] = f"{first_id},99999999999999999999"
    path = ws / "huge-label.csv"
    path.write_text("\n".join(text) + "\n")
    return path


def header_only_reports(ws: Path) -> Path:
    return write_rows(ws / "empty-reports.csv", [["report_id", "study_uid", "text"]])


def nan_window_dicom(ws: Path) -> Path:
    import pydicom

    folder = ws / "nan-window"
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(data_file("MR_small.dcm"))
        ds.WindowCenter, ds.WindowWidth = "NaN", "400"
        ds.save_as(folder / "nan.dcm")
    return folder


def all_nan_volume(ws: Path) -> Path:
    import nibabel as nib

    folder = ws / "nan-volume"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), np.nan, np.float32), np.eye(4)), folder / "vol.nii.gz")
    return folder


def nan_checkpoint(ws: Path) -> Path:
    """A finetune checkpoint whose weights are all NaN (what a diverged run used to save)."""
    import torch

    from ldpo.common.nets import models

    built = models.build(models.parse_init("random"), "resnet18", 3, 0, 32)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in built.model.state_dict().items()}
    path = ws / "nan.pt"
    torch.save({"format": "ldpo-checkpoint-1", "arch": "resnet18", "num_classes": 3, "classes": [0, 1, 2],
                "state_dict": state, "options": {}, "input_size": 32, "normalize": "zscore", "origin": "random"}, path)
    return path


def resnet18_weights(ws: Path) -> Path:
    import torch

    from ldpo.common.nets import models

    path = ws / "resnet18.pth"
    torch.save(models.build(models.parse_init("random"), "resnet18", 3, 0, 32).model.state_dict(), path)
    return path


def zero_dim_features(ws: Path) -> Path:
    import h5py

    path = ws / "dim0.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("features", shape=(4, 0), dtype=np.float32)
        fh["ids"] = np.array([f"i{i}" for i in range(4)], dtype=h5py.string_dtype())
    return path


def fifo(ws: Path) -> Path:
    path = ws / "labels.fifo"
    os.mkfifo(path)
    return path


# Each case: id → (ws → (argv, what the message must name)). New in this version unless marked "(held)".
CASES = {
    # outputs never clobber inputs, other outputs or special files
    "featurize-out-is-input": lambda ws: (["featurize", ws / "images.h5", "--out", ws / "images.h5"],
                                          ws / "images.h5"),
    "cluster-out-is-input": lambda ws: (["cluster", ws / "feats.h5", "--out", ws / "feats.h5", "--k", "2"],
                                        ws / "feats.h5"),
    "finetune-out-is-labels": lambda ws: (["finetune", ws / "images.h5", ws / "labels.csv", "--out",
                                           ws / "labels.csv"], ws / "labels.csv"),
    "encode-out-is-input": lambda ws: (["encode", ws / "local.h5", "--out", ws / "local.h5", "--method", "avg"],
                                       ws / "local.h5"),
    "converge-history-is-curr (held)": lambda ws: (["converge", ws / "labels.csv", "--history", ws / "labels.csv"],
                                            ws / "labels.csv"),
    "cluster-out-is-its-summary": lambda ws: (["cluster", ws / "feats.h5", "--out", ws / "s.csv", "--k", "2",
                                               "--summary", ws / "s"], ws / "s.csv"),
    "finetune-metrics-is-labels": lambda ws: (["finetune", ws / "images.h5",
                                               shutil.copy(ws / "labels.csv", ws / "m.metrics.json"),
                                               "--out", ws / "m.pt"], ws / "m.metrics.json"),
    "cluster-out-is-fifo": lambda ws: (["cluster", ws / "feats.h5", "--out", fifo(ws), "--k", "2"],
                                       ws / "labels.fifo"),
    "extract-reports-in-out (held)": lambda ws: (["extract-keyimages", ws / "dicom", "--reports", ws / "keys" / "rejects.csv",
                                           "--out", ws / "keys", *SALT], ws / "keys" / "rejects.csv"),
    # bounds, declared on the option and named in the message
    "extract-size-100000": lambda ws: (["extract-keyimages", ws / "dicom", "--out", ws / "keys", "--size", "100000",
                                        *SALT], "--size 100000: must be between 8 and 8192"),
    "extract-every-0": lambda ws: (["extract-keyimages", ws / "dicom", "--out", ws / "keys", "--every", "0",
                                    "--all-slices", *SALT], "--every 0: must be at least 1"),
    "extract-window-index-negative": lambda ws: (["extract-keyimages", ws / "dicom", "--out", ws / "keys",
                                                  "--window-index", "-1", *SALT], "--window-index -1"),
    "extract-window-nan": lambda ws: (["extract-keyimages", ws / "dicom", "--out", ws / "keys", "--window",
                                       "nan,400", *SALT], "--window 'nan,400'"),
    "cluster-lam-inf": lambda ws: (["cluster", ws / "feats.h5", "--out", ws / "l.csv", "--method", "rim", "--lam",
                                    "inf"], "--lam inf: must be a finite number"),
    "finetune-lr-nan": lambda ws: (["finetune", ws / "images.h5", ws / "labels.csv", "--out", ws / "m.pt", "--lr",
                                    "nan"], "--lr nan: must be a finite number"),
    "topic-label-holdout-1": lambda ws: (["topic-label", ws / "r.csv", "--manifest", ws / "keys" / "manifest.csv",
                                          "--out", ws / "t.csv", "--holdout", "1"], "--holdout 1.0: must be below 1"),
    "converge-threshold-2 (held)": lambda ws: (["converge", ws / "labels.csv", "--threshold", "2"],
                                        "--threshold 2.0: must be between 0 and 1"),
    "toy-data-classes-30 (held)": lambda ws: (["toy-data", "texture25", "--out", ws / "toy", "--classes", "30"],
                                              "--classes 30"),
    "featurize-input-size-0": lambda ws: (["featurize", ws / "images.h5", "--out", ws / "f.h5", "--input-size", "0"],
                                          "--input-size 0: must be between 1 and 4096"),
    "finetune-crop-scale-0": lambda ws: (["finetune", ws / "images.h5", ws / "labels.csv", "--out", ws / "m.pt",
                                          "--crop-scale", "0"], "--crop-scale 0.0"),
    "cluster-nredo-0": lambda ws: (["cluster", ws / "feats.h5", "--out", ws / "l.csv", "--nredo", "0"],
                                   "--nredo 0: must be at least 1"),
    # training health: diverged training is an error, never a checkpoint or NaN features
    "finetune-lr-1e30-diverges": lambda ws: (["finetune", ws / "images.h5", ws / "labels.csv", "--out", ws / "m.pt",
                                              "--lr", "1e30", "--epochs", "2", "--input-size", "32", "--split", "none",
                                              "--device", "cpu"], f"{ws / 'm.pt'}: training diverged"),
    "featurize-nan-checkpoint": lambda ws: (["featurize", ws / "images.h5", "--out", ws / "f.h5", "--init",
                                             f"checkpoint:{nan_checkpoint(ws)}", "--device", "cpu"],
                                            f"{ws / 'nan.pt'}: gives non-finite features"),
    "cluster-zero-dimensions": lambda ws: (["cluster", zero_dim_features(ws), "--out", ws / "l.csv", "--k", "2"],
                                           f"{ws / 'dim0.h5'}: its features have 0 dimensions"),
    "weights-of-another-arch": lambda ws: (["featurize", ws / "images.h5", "--out", ws / "f.h5", "--init",
                                            f"weights:{resnet18_weights(ws)}", "--arch", "alexnet",
                                            "--input-size", "64"], f"{ws / 'resnet18.pth'}: does not fit alexnet"),
    # damaged or wrongly encoded inputs: the message names the file
    "zarr-corrupt-chunk": lambda ws: (["cluster", corrupt_zarr_chunk(ws), "--out", ws / "l.csv", "--k", "2"],
                                      ws / "feats.zarr"),
    "zarr-corrupt-chunk-in-a-worker": lambda ws: (["featurize", corrupt_image_chunk(ws), "--out", ws / "f.h5",
                                                   "--input-size", "32", "--device", "cpu", "--workers", "1"],
                                                  ws / "images.zarr"),
    "reports-latin-1": lambda ws: (["extract-keyimages", ws / "dicom", "--reports", reports_in(ws, "latin-1"),
                                    "--out", ws / "keys", *SALT], ws / "reports-latin-1.csv"),
    "reports-utf-16": lambda ws: (["extract-keyimages", ws / "dicom", "--reports", reports_in(ws, "utf-16"),
                                   "--out", ws / "keys", *SALT], ws / "reports-utf-16.csv"),
    "report-folder-latin-1": lambda ws: (["extract-keyimages", ws / "dicom", "--reports", latin1_report_folder(ws),
                                          "--out", ws / "keys", *SALT], ws / "report-txt" / "A1.txt"),
    "store-integer-ids": lambda ws: (["cluster", integer_ids(ws), "--out", ws / "l.csv", "--k", "2"],
                                     ws / "int-ids.h5"),
    "label-99999999999999999999": lambda ws: (["converge", huge_label(ws), "--prev", ws / "labels.csv"],
                                              f"{ws / 'huge-label.csv'}: line 2: label 99999999999999999999"),
    # wrong input accepted before: now refused, and the previous run's outputs stay whole
    "reports-header-only": lambda ws: (["extract-keyimages", ws / "dicom", "--reports", header_only_reports(ws),
                                        "--out", ws / "keys", *SALT], ws / "empty-reports.csv"),
    "failed-extraction-keeps-old-rejects": lambda ws: (["extract-keyimages", ws / "broken", "--out", ws / "keys",
                                                        *SALT], ws / "broken"),
    "dicom-nan-window": lambda ws: (["extract-keyimages", nan_window_dicom(ws), "--out", ws / "keys", *SALT],
                                    "WindowCenter is nan"),
    "nifti-all-nan": lambda ws: (["extract-keyimages", all_nan_volume(ws), "--out", ws / "keys", *SALT],
                                 "no finite voxel values"),
    "output-folder-is-a-file": lambda ws: (["converge", ws / "labels.csv", "--history", ws / "labels.csv" / "h.csv"],
                                           f"{ws / 'labels.csv' / 'h.csv'}: cannot create its folder"),
    # held by the first version too
    "labels-missing (held)": lambda ws: (["converge", ws / "nope.csv"], ws / "nope.csv"),
    "store-suffix (held)": lambda ws: (["cluster", ws / "labels.csv", "--out", ws / "l.csv"], ws / "labels.csv"),
    "keywords-out-is-a-file (held)": lambda ws: (["keywords", ws / "labels.csv", "--manifest",
                                                  ws / "keys" / "manifest.csv", "--reports", ws / "r.csv", "--images",
                                                  ws / "images.h5", "--out", ws / "labels.csv"], ws / "labels.csv"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(cli, ws, case):
    argv, named = CASES[case](ws)
    refused(cli, ws, argv, named)


def test_topic_label_side_files_never_overwrite_its_labels(cli, tmp_path):
    """``topic-label … --out DIR/topics.csv`` used to write its topic table over its own labels."""
    from ldpo.common.files.labels import read_labels

    rows = [["report_id", "text"]] + [[f"r{i}", f"{'lung nodule chest' if i % 2 else 'brain head skull'} case {i}"]
                                      for i in range(12)]
    reports = write_rows(tmp_path / "reports.csv", rows)
    manifest = write_rows(tmp_path / "manifest.csv", [["id", "report_id"]] + [[f"i{i}", f"r{i}"] for i in range(12)])
    out = tmp_path / "topics.csv"
    r = cli("topic-label", reports, "--manifest", manifest, "--out", out, "--topics", "2", "--passes", "2", "-q")
    assert r.code == 0, r.err
    assert len(read_labels(out)) == 12  # still the labels
    assert (tmp_path / "topics.topics.csv").read_text().startswith("topic,rank,word,weight")
