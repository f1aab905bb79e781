"""Hostile outputs and inputs (issue 22): no output path deletes or replaces what is not its own.

Every case runs a command in-process in a copy of a small finished run and asserts: exit
status 2; stderr is one line ``COMMAND: error: …`` naming the path at fault, without a
traceback; and every file that was there before is byte-identical afterwards, with nothing
added. A folder at an output path (``--out runs/``, ``--out ckpts``) is refused, never
deleted; only an earlier ldpo Zarr store is replaced by a Zarr store. Special files (a
device node, a FIFO, a link to either) are never replaced by an output.
"""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import refused, toy_workspace

SALT = ["--salt", "hostile-salt-0123456789"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# -- a small finished run, built once and copied per case (``ws``, conftest.py) --------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory, toy):
    """images.h5, labels.csv, feats.h5, local.h5, probs.h5 and a one-epoch checkpoint model.pt."""
    from ldpo.common.files.stores import write_store
    from ldpo.stages import run

    ws = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(0)
    ids = toy_workspace(ws, toy(classes=3, per_class=4, size=32), rng)
    write_store(ws / "local.h5", ids, {"stage": "test"}, local=rng.normal(size=(len(ids), 4, 8)).astype(np.float32))
    scores = rng.random((len(ids), 3)).astype(np.float32)
    write_store(ws / "probs.h5", ids, {"stage": "featurize", "layer": "probs", "classes": [0, 1, 2]},
                features=scores / scores.sum(1, keepdims=True))
    assert run(["finetune", str(ws / "images.h5"), str(ws / "labels.csv"), "--out", str(ws / "model.pt"),
                "--arch", "resnet18", "--input-size", "32", "--epochs", "1", "--split", "none", "--device", "cpu",
                "-q"]) == 0
    return ws


def user_folder(path: Path) -> Path:
    """A folder of someone's other data: runs/a/model.pt."""
    (path / "a").mkdir(parents=True)
    (path / "a" / "model.pt").write_text("x")
    (path / "notes.txt").write_text("mine")
    return path


def slash(path: Path) -> str:
    return str(path) + "/"


# -- item 1: a folder at an output path is refused, never deleted -------------------------------

def test_cluster_out_runs_slash_keeps_the_folder(cli, ws):
    runs = user_folder(ws / "runs")
    line = refused(cli, ws, ["cluster", ws / "feats.h5", "--out", slash(runs), "--k", "2"], runs)
    assert "is an existing folder, not a file" in line
    assert (runs / "a" / "model.pt").read_text() == "x"
    refused(cli, ws, ["cluster", ws / "feats.h5", "--out", runs, "--k", "2"], runs)


def test_a_trailing_slash_on_a_file_output_is_refused(cli, ws):
    line = refused(cli, ws, ["cluster", ws / "feats.h5", "--out", slash(ws / "new"), "--k", "2"], ws / "new")
    assert "give a file path" in line
    assert not (ws / "new").exists()


def test_finetune_out_ckpts_keeps_the_old_checkpoints(cli, ws):
    ckpts = ws / "ckpts"
    ckpts.mkdir()
    shutil.copy(ws / "model.pt", ckpts / "model.pt")
    (ckpts / "metrics.json").write_text("{}")
    for out in (slash(ckpts), ckpts):
        refused(cli, ws, ["finetune", ws / "images.h5", ws / "labels.csv", "--out", out, "--epochs", "1",
                          "--input-size", "32", "--device", "cpu"], ckpts)
    assert (ckpts / "model.pt").read_bytes() == (ws / "model.pt").read_bytes()


def test_converge_plot_over_a_folder(cli, ws):
    plots = user_folder(ws / "plots")
    refused(cli, ws, ["converge", ws / "labels.csv", "--history", ws / "h.csv", "--plot", plots], plots)


def test_topic_label_out_over_a_folder(cli, ws):
    reports = ws / "reports.csv"
    reports.write_text("report_id,text\nr1,lung nodule\n")
    manifest = ws / "manifest.csv"
    manifest.write_text("id,report_id\ni1,r1\n")
    out = user_folder(ws / "topics")
    refused(cli, ws, ["topic-label", reports, "--manifest", manifest, "--out", out, "--topics", "2"], out)


def test_relabel_out_over_a_folder_is_refused_where_it_is_written(cli, ws):
    """relabel declares no output role here: the replace step itself refuses the folder."""
    review = ws / "review.csv"
    review.write_text("label,name,merge_into\n0,first,\n")
    out = user_folder(ws / "reviewed")
    refused(cli, ws, ["relabel", ws / "labels.csv", review, "--out", out], out)


def test_assign_out_over_a_folder(cli, ws):
    out = user_folder(ws / "assigned")
    refused(cli, ws, ["assign", ws / "images.h5", "--model", ws / "model.pt", "--out", out, "--device", "cpu"], out)


def test_extract_keyimages_images_store_over_a_folder(cli, ws):
    from pydicom.data import get_testdata_file

    src = ws / "dicom"
    src.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm", download=False), src / "MR_small.dcm")
    keys = ws / "keys"
    user_folder(keys / "images.h5")
    refused(cli, ws, ["extract-keyimages", src, "--out", keys, "--size", "32", *SALT], keys / "images.h5")


def test_a_zarr_output_replaces_an_earlier_ldpo_zarr_store(cli, ws):
    from ldpo.common.files.stores import open_store

    out = ws / "enc.zarr"
    for method in ("avg", "max"):
        r = cli("encode", ws / "local.h5", "--out", slash(out), "--method", method, "--no-pca", "-q")
        assert r.code == 0, r.err
        with open_store(out) as store:
            assert store.attrs["method"] == method
    assert [p.name for p in ws.iterdir() if p.name.startswith(".")] == []  # no temporary, no old store left


def test_a_zarr_output_over_a_folder_that_is_not_an_ldpo_store(cli, ws):
    not_ours = user_folder(ws / "data.zarr")
    refused(cli, ws, ["encode", ws / "local.h5", "--out", not_ours, "--method", "avg"], not_ours)
    (not_ours / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    refused(cli, ws, ["encode", ws / "local.h5", "--out", not_ours, "--method", "avg"], not_ours)


def test_an_ldpo_zarr_store_holding_a_users_file_is_not_replaced(cli, ws):
    out = ws / "enc.zarr"
    assert cli("encode", ws / "local.h5", "--out", out, "--method", "avg", "-q").code == 0
    (out / "notes.txt").write_text("mine")
    refused(cli, ws, ["encode", ws / "local.h5", "--out", out, "--method", "max"], out)


def test_a_folder_output_may_exist_but_not_as_a_file(cli, ws, monkeypatch):
    """hierarchy --out is a folder: an existing file there fails before anything is computed (item 21)."""
    from ldpo.stages import hierarchy

    def computed(*args, **kwargs):
        raise AssertionError("computed before checking --out")

    monkeypatch.setattr(hierarchy, "read_scores", computed)
    refused(cli, ws, ["hierarchy", ws / "probs.h5", ws / "labels.csv", "--out", ws / "feats.h5"], ws / "feats.h5")


def test_hierarchy_writes_only_into_its_own_folder(cli, ws):
    """Issue 30 item 3: one rule for every output folder (ldpo.common.files.folders): a folder of the
    user's files is refused, not written into."""
    tree = ws / "tree"
    tree.mkdir()
    (tree / "notes.txt").write_text("mine")
    refused(cli, ws, ["hierarchy", ws / "probs.h5", ws / "labels.csv", "--out", tree], tree)
    (tree / "notes.txt").unlink()
    r = cli("hierarchy", ws / "probs.h5", ws / "labels.csv", "--out", tree, "-q")
    assert r.code == 0, r.err
    assert (tree / "tree.json").is_file()
    (tree / "levels.csv").unlink()
    user_folder(tree / "levels.csv")
    refused(cli, ws, ["hierarchy", ws / "probs.h5", ws / "labels.csv", "--out", tree], tree / "levels.csv")


# -- item 3: special files, also through a link ---------------------------------------------------

def special_outputs(ws: Path) -> dict[str, Path]:
    fifo = ws / "fifo"
    os.mkfifo(fifo)
    (ws / "to-fifo").symlink_to(fifo)
    (ws / "to-null").symlink_to("/dev/null")
    found = {"FIFO": fifo, "link to a FIFO": ws / "to-fifo", "link to /dev/null": ws / "to-null"}
    if IS_ROOT:
        os.mknod(ws / "mynull", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        found["character device"] = ws / "mynull"
    return found


def test_cluster_out_is_never_a_special_file(cli, ws):
    for what, path in special_outputs(ws).items():
        line = refused(cli, ws, ["cluster", ws / "feats.h5", "--out", path, "--k", "2"], path)
        assert "not a regular file" in line, (what, line)


@pytest.mark.skipif(not IS_ROOT, reason="mknod of a character device needs root")
def test_a_device_node_made_by_mknod_stays_a_device(cli, ws):
    special_outputs(ws)
    refused(cli, ws, ["cluster", ws / "feats.h5", "--out", ws / "mynull", "--k", "2"], ws / "mynull")
    assert stat.S_ISCHR(os.lstat(ws / "mynull").st_mode)


def test_relabel_never_replaces_a_special_file(cli, ws):
    """relabel declares no output role here: the replace step itself refuses."""
    review = ws / "review.csv"
    review.write_text("label,name,merge_into\n0,first,\n")
    for path in special_outputs(ws).values():
        refused(cli, ws, ["relabel", ws / "labels.csv", review, "--out", path], path)


def test_hierarchy_never_replaces_a_special_file_in_its_folder(cli, ws):
    tree = ws / "tree"
    tree.mkdir()
    os.mkfifo(tree / "tree.json")
    refused(cli, ws, ["hierarchy", ws / "probs.h5", ws / "labels.csv", "--out", tree], tree / "tree.json")


# -- item 6: finetune's metrics are named from its checkpoint ---------------------------------------

def test_finetune_metrics_are_named_from_the_checkpoint(cli, ws):
    import json

    assert (ws / "model.metrics.json").is_file() and not (ws / "metrics.json").exists()
    (ws / "metrics.json").write_text("a user's file")
    r = cli("finetune", ws / "images.h5", ws / "labels.csv", "--out", ws / "other.pt", "--arch", "resnet18",
            "--input-size", "32", "--epochs", "1", "--split", "none", "--device", "cpu", "-q")
    assert r.code == 0, r.err
    assert (ws / "metrics.json").read_text() == "a user's file"
    first = json.loads((ws / "model.metrics.json").read_text())
    second = json.loads((ws / "other.metrics.json").read_text())
    assert len(first["epochs"]) == len(second["epochs"]) == 1


def test_finetune_metrics_name_may_not_be_an_input(cli, ws):
    shutil.copy(ws / "labels.csv", ws / "m.metrics.json")
    refused(cli, ws, ["finetune", ws / "images.h5", ws / "m.metrics.json", "--out", ws / "m.pt"],
            ws / "m.metrics.json")


# -- item 17: an archive the disk cannot hold -----------------------------------------------------

def test_archive_refuses_what_the_disk_cannot_hold(cli, ws, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    line = refused(cli, ws, ["toy-data", "archive", "--n", "64", "--size", "16", "--out", ws / "a.zarr"],
                   ws / "a.zarr")
    assert "free" in line


def test_archive_of_a_petabyte_is_refused_at_once(cli, ws):
    refused(cli, ws, ["toy-data", "archive", "--n", "100000000", "--size", "4096", "--out", ws / "a.zarr"],
            ws / "a.zarr")


# -- item 18: an input size bounded by what memory allows ----------------------------------------

def test_input_size_has_an_upper_bound(cli, ws):
    line = refused(cli, ws, ["featurize", ws / "images.h5", "--out", ws / "f.h5", "--input-size", "100000"],
                   "--input-size 100000")
    assert "at most" in line or "between" in line
    refused(cli, ws, ["finetune", ws / "images.h5", ws / "labels.csv", "--out", ws / "m.pt", "--input-size",
                      "5000"], "--input-size 5000")


def test_the_declared_bound_is_the_models_bound():
    from ldpo.common.images.input_options import InputOptions
    from ldpo.common.nets.models import MAX_INPUT_SIZE

    declared = InputOptions.__dataclass_fields__["input_size"].metadata["max"]
    assert declared == MAX_INPUT_SIZE


def test_a_checkpoint_cannot_ask_for_a_huge_input_size(cli, ws):
    import torch

    ckpt = torch.load(ws / "model.pt", weights_only=True)
    ckpt["input_size"] = 100000
    torch.save(ckpt, ws / "huge.pt")
    refused(cli, ws, ["featurize", ws / "images.h5", "--out", ws / "f.h5", "--init", f"checkpoint:{ws / 'huge.pt'}",
                      "--device", "cpu"], "100000")


# -- item 19: an unwritable --out folder is found before training --------------------------------

def writable(folder: Path) -> bool:
    probe = folder / ".ldpo-probe"
    try:
        probe.write_text("")
    except OSError:
        return False
    probe.unlink()
    return True


def test_finetune_checks_its_folder_is_writable_before_training(cli, ws, monkeypatch):
    from ldpo.stages.finetune import data  # finetune is a package: its data loading lives in data.py

    def trained(*args, **kwargs):
        raise AssertionError("training started before checking --out")

    monkeypatch.setattr(data, "load_data", trained)
    locked = ws / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if writable(locked):  # root writes anywhere: sysfs refuses new files, even to root
            if not Path("/sys").is_dir() or writable(Path("/sys")):
                pytest.skip("no unwritable folder to test with")
            out = Path("/sys/ldpo-hostile-model.pt")
            line = refused(cli, ws, ["finetune", ws / "images.h5", ws / "labels.csv", "--out", out], out)
        else:
            line = refused(cli, ws, ["finetune", ws / "images.h5", ws / "labels.csv", "--out", locked / "m.pt"],
                           locked / "m.pt")
        assert "cannot write" in line
    finally:
        locked.chmod(0o755)


# -- item 21: messages that name the file -----------------------------------------------------------

def test_encode_on_nan_local_features_names_the_file(cli, ws):
    from ldpo.common.files.stores import open_store, write_store

    with open_store(ws / "local.h5") as store:
        ids, local = store.ids, store.read("local")
    local[len(ids) - 1, 1, 2] = np.nan  # the last row: outside a fit sample of 4
    write_store(ws / "nan.h5", ids, {"stage": "test"}, local=local)
    for extra in ([], ["--fit-sample", "4"]):
        line = refused(cli, ws, ["encode", ws / "nan.h5", "--out", ws / "e.h5", "--method", "avg", "--no-pca", *extra],
                       ws / "nan.h5")
        assert "NaN" in line or "non-finite" in line


def test_a_folder_given_as_weights(cli, ws):
    folder = ws / "weights"
    folder.mkdir()
    line = refused(cli, ws, ["featurize", ws / "images.h5", "--out", ws / "f.h5", "--init", f"weights:{folder}"],
                   folder)
    assert "is a folder" in line


def test_cluster_on_a_folder_says_so_in_full(cli, ws):
    for name in ("feats-dir.h5", "feats-dir.zarr"):
        folder = ws / name
        folder.mkdir()
        line = refused(cli, ws, ["cluster", folder, "--out", ws / "l.csv", "--k", "2"], folder)
        assert "folder" in line and line.count("(") == line.count(")"), line


# -- item 23: labels are ASCII digits --------------------------------------------------------------

@pytest.mark.parametrize("label", ["1_0", "\u0661\u0662", " 3", "+3", "3 ", "\uff13"])
def test_labels_are_ascii_digits_only(cli, ws, label):
    bad = ws / "bad.csv"
    bad.write_text(f"id,label\na,1\nb,{label}\n", encoding="utf-8")
    refused(cli, ws, ["converge", bad], f"{bad}: line 3")


# -- item 24: a foreign pickle gets ldpo's own line, not torch's advice -----------------------------

class Foreign:
    def __reduce__(self):
        return (os.getcwd, ())


def test_a_foreign_pickle_gets_one_line_without_torchs_advice(cli, ws):
    import torch

    torch.save({"state_dict": Foreign()}, ws / "foreign.pt")
    with open(ws / "foreign.pkl", "wb") as fh:
        pickle.dump({"arch": Foreign()}, fh, protocol=4)
    for init in (f"weights:{ws / 'foreign.pt'}", f"checkpoint:{ws / 'foreign.pkl'}"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            line = refused(cli, ws, ["featurize", ws / "images.h5", "--out", ws / "f.h5", "--init", init,
                                     "--arch", "resnet18"], init.partition(":")[2])
        assert "weights_only" not in line and "arbitrary code" not in line, line
        assert not [w for w in caught if "torch" in str(w.filename)], [str(w.message) for w in caught]


# -- item 25: options are checked before the model is loaded --------------------------------------

def test_featurize_checks_shard_before_loading_torch(ws):
    code = ("import sys; from ldpo.stages.featurize import FeaturizeTool; "
            f"status = FeaturizeTool().run([{str(ws / 'images.h5')!r}, '--out', {str(ws / 'f.h5')!r}, "
            "'--shard', '3/2']); print(status, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"], (done.stdout, done.stderr)
    assert done.stderr.strip() == "featurize: error: --shard 3/2: need 0 <= i < n"
