"""No user file touched (issue 30, items 1-5, 11 and 18): extract-keyimages and every other folder
output follow one rule (new, empty, or an earlier output of the same command, as its record lists);
the loop's lock is never followed through a link nor blocks on a FIFO; an earlier Zarr store is
replaced only when nothing foreign lies anywhere in it; --fresh deletes only converge's history;
results of no known run are not taken as this run's; a killed partial save is cleaned up; ids
with white space around them are refused at the store; a multi-label name never holds the
separator, and a class positive on every image is said in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import loop_env

ROOT = Path(__file__).resolve().parents[1]
LOOP = ROOT / "pipelines/ldpo-loop.sh"
BIN = Path(sys.executable).parent
SALT = ["--salt", "hostile-files-salt-0123456789"]
RECORD = ".ldpo-output.json"


def one_line(result, command: str, *named) -> str:
    """Exit 2, one line ``COMMAND: error: …`` naming each of ``named``."""
    lines = result.err.strip().splitlines()
    assert result.code == 2, result.err
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: "), result.err
    for thing in named:
        assert str(thing) in lines[0], (thing, lines[0])
    return lines[0]


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def png_folder(root: Path, classes: bool = True) -> Path:
    """A small image folder (two class sub-folders of three PNGs, or three PNGs)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, level in (("bark", 40), ("wool", 200)) if classes else (("", 90),):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.fromarray(rng.normal(level, 10, (20, 20)).clip(0, 255).astype(np.uint8)).save(
                root / cls / f"{cls or 'img'}{i}.png")
    return root


# -- item 1: extract-keyimages deletes nothing it did not write -----------------------------------

def test_extract_refuses_a_folder_of_user_files_even_with_its_output_names(cli, tmp_path):
    src = png_folder(tmp_path / "src")
    user = tmp_path / "u"
    user.mkdir()
    (user / "truth.csv").write_text("mine\n")
    (user / "reports.csv").write_text("report_id,text\nr1,x\n")
    before = files_under(user)
    one_line(cli("extract-keyimages", src, "--out", user, "--size", 16, *SALT), "extract-keyimages", user)
    assert files_under(user) == before


def test_extract_reruns_replace_and_remove_only_what_its_record_lists(cli, tmp_path):
    out = tmp_path / "keys"
    classes = png_folder(tmp_path / "classes")
    assert cli("extract-keyimages", classes, "--out", out, "--size", 16, *SALT).code == 0
    assert {"images.h5", "manifest.csv", "truth.csv", "classes.csv", RECORD} <= set(os.listdir(out))
    flat = png_folder(tmp_path / "flat", classes=False)
    r = cli("extract-keyimages", flat, "--out", out, "--size", 16, *SALT)  # no classes: its truth.csv goes
    assert r.code == 0, r.err
    assert not (out / "truth.csv").exists() and (out / "images.h5").is_file()
    (out / "truth.csv").write_text("now the user's\n")  # a name it wrote once, no longer in its record
    one_line(cli("extract-keyimages", flat, "--out", out, "--size", 16, *SALT), "extract-keyimages",
             out / "truth.csv")
    assert (out / "truth.csv").read_text() == "now the user's\n"


# -- item 2: the loop's lock ----------------------------------------------------------------------



def run_loop(work: Path, images: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LOOP), "--images", str(images), "--work", str(work), "--k", "3",
                           "--max-iter", "1", "--epochs", "1", "--device", "cpu"],
                          env=loop_env(), capture_output=True, text=True, timeout=timeout)


def loop_refused(proc: subprocess.CompletedProcess, *named) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("ldpo-loop: error: "), proc.stderr[-3000:]
    for thing in named:
        assert str(thing) in lines[0], (thing, lines[0])
    return lines[0]


def test_the_loop_lock_is_never_followed_through_a_link(toy, tmp_path):
    images = toy(classes=3, per_class=4, size=32) / "images.h5"
    work = tmp_path / "work"
    work.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (work / ".ldpo-loop.lock").symlink_to(victim)
    line = loop_refused(run_loop(work, images), work / ".ldpo-loop.lock")
    assert "link" in line
    assert victim.read_text() == "precious\n"
    assert sorted(os.listdir(work)) == [".ldpo-loop.lock"]  # nothing begun


def test_a_fifo_as_the_loop_lock_is_refused_not_waited_on(toy, tmp_path):
    images = toy(classes=3, per_class=4, size=32) / "images.h5"
    work = tmp_path / "work"
    work.mkdir()
    os.mkfifo(work / ".ldpo-loop.lock")
    try:
        proc = run_loop(work, images, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the loop blocked on a FIFO lock")
    assert "FIFO" in loop_refused(proc, work / ".ldpo-loop.lock")


# -- item 3: one rule for every folder output ----------------------------------------------------

@pytest.fixture
def probs(tmp_path):
    """A probs store of 3 classes over 12 ids and their labels."""
    from ldpo.common.files.labels import write_labels
    from ldpo.common.files.stores import write_store

    ids = [f"i{n:02d}" for n in range(12)]
    labels = np.arange(12) % 3
    scores = np.full((12, 3), 0.1, np.float32)
    scores[np.arange(12), labels] = 0.8
    write_store(tmp_path / "probs.h5", ids, {"stage": "featurize", "layer": "probs", "classes": [0, 1, 2]},
                features=scores)
    write_labels(tmp_path / "labels.csv", ids, labels)
    return tmp_path / "probs.h5", tmp_path / "labels.csv"


def test_hierarchy_writes_only_into_a_new_empty_or_its_own_folder(cli, tmp_path, probs):
    mine = tmp_path / "t"
    mine.mkdir()
    (mine / "levels.csv").write_text("my\n")
    one_line(cli("hierarchy", *probs, "--out", mine), "hierarchy", mine)
    assert (mine / "levels.csv").read_text() == "my\n" and os.listdir(mine) == ["levels.csv"]
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target, target_is_directory=True)
    one_line(cli("hierarchy", *probs, "--out", tmp_path / "link"), "hierarchy", tmp_path / "link")
    assert os.listdir(target) == []
    out = tmp_path / "tree"
    for _ in range(2):  # new, then its own
        r = cli("hierarchy", *probs, "--out", out)
        assert r.code == 0, r.err
    assert sorted(os.listdir(out)) == [RECORD, "levels.csv", "tree.json", "tree.png"]
    (out / "notes.txt").write_text("mine")
    one_line(cli("hierarchy", *probs, "--out", out), "hierarchy", out / "notes.txt")
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("argv", [["texture25", "--classes", "2", "--per-class", "2", "--size", "16", "--no-sheet"],
                                  ["multilabel", "--n", "4", "--size", "32"]])
def test_toy_data_never_replaces_a_users_files(cli, tmp_path, argv):
    mine = tmp_path / "t"
    mine.mkdir()
    (mine / "truth.csv").write_text("my truth\n")
    (mine / "images.h5").write_bytes(b"my images")
    before = files_under(mine)
    one_line(cli("toy-data", *argv, "--out", mine), f"toy-data {argv[0]}", mine)
    assert files_under(mine) == before
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target, target_is_directory=True)
    one_line(cli("toy-data", *argv, "--out", tmp_path / "link"), f"toy-data {argv[0]}", tmp_path / "link")
    assert os.listdir(target) == []
    for _ in range(2):  # a new folder, then a rerun over its own output
        r = cli("toy-data", *argv, "--out", tmp_path / "new")
        assert r.code == 0, r.err
    # another command's output folder is not this one's
    other = "multilabel" if argv[0] == "texture25" else "texture25"
    one_line(cli("toy-data", other, "--out", tmp_path / "new"), f"toy-data {other}", tmp_path / "new")


def test_report_and_keywords_follow_the_same_rule_for_a_file_with_their_names(tmp_path):
    """A folder holding only a user's index.html was taken for an earlier report or sheet."""
    from ldpo.common.errors import InputError
    from ldpo.stages.keywords import check_out as keywords_out
    from ldpo.stages.report import check_out as report_out

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("my page")
    for check in (report_out, keywords_out):
        with pytest.raises(InputError, match="not an earlier"):
            check(mine)
    assert (mine / "index.html").read_text() == "my page"


# -- item 4: an earlier Zarr store is replaced only when all of it is the store's ------------------

def test_a_user_file_inside_an_array_folder_keeps_a_zarr_store_from_being_replaced(cli, tmp_path, toy):
    from ldpo.common.errors import InputError
    from ldpo.common.files.stores import write_store

    store = tmp_path / "m.zarr"
    features = np.zeros((3, 4), np.float32)
    write_store(store, ["a", "b", "c"], {"stage": "featurize"}, features=features)
    write_store(store, ["a", "b", "c"], {"stage": "featurize"}, features=features)  # its own: replaced
    (store / "features" / "NOTES.txt").write_text("n")
    with pytest.raises(InputError, match="NOTES.txt"):
        write_store(store, ["a", "b", "c"], {"stage": "featurize"}, features=features)
    assert (store / "features" / "NOTES.txt").read_text() == "n"
    images = toy(classes=3, per_class=4, size=32) / "images.h5"
    one_line(cli("featurize", images, "--out", store, "--init", "random"), "featurize", store, "NOTES.txt")
    (store / "features" / "NOTES.txt").unlink()
    (store / "ids" / "c" / "mine").write_text("n")  # among the chunks
    one_line(cli("featurize", images, "--out", store, "--init", "random"), "featurize", store)
    assert (store / "ids" / "c" / "mine").read_text() == "n"


# -- item 5: --fresh, results of no known run, a killed partial save ------------------------------

def test_fresh_never_deletes_a_history_converge_did_not_write(tmp_path):
    from ldpo.common.errors import InputError
    from ldpo.common.loop.workdir import forget

    work = tmp_path / "work"
    work.mkdir()
    (work / "history.csv").write_text("patient,score\nx,1\n")
    with pytest.raises(InputError, match="history.csv: ldpo did not write this file"):
        forget(work, "0", "--fresh")
    assert (work / "history.csv").read_text() == "patient,score\nx,1\n"
    (work / "history.csv").write_text("iteration,k\n0,3\n")  # converge's
    (work / "history.fields.csv").write_text("my fields\n")
    with pytest.raises(InputError, match="history.fields.csv: ldpo did not write this file"):
        forget(work, "0", "--fresh")
    assert (work / "history.fields.csv").read_text() == "my fields\n" and (work / "history.csv").exists()
    (work / "history.fields.csv").write_text("iteration,field,values,coverage,nmi,purity\n")
    forget(work, "0", "--fresh")
    assert os.listdir(work) == []


def test_final_and_report_of_no_known_run_are_not_taken_as_this_runs(tmp_path, toy, capsys):
    from ldpo.common.loop.command import main

    images = toy(classes=3, per_class=4, size=32) / "images.h5"
    work = tmp_path / "work"
    for kept in ("final", "report"):
        (work / kept).mkdir(parents=True)
        (work / kept / "labels.csv").write_text("id,label\n")
    assert main(["begin", "--", "--images", str(images), "--work", str(work), "--k", "2"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("ldpo-loop: error: ") and "run.json" in line and "--fresh" in line
    assert not (work / "run.json").exists()


def test_a_finished_resume_removes_what_a_killed_partial_save_left(cli, tmp_path, toy):
    data = toy(classes=3, per_class=4, size=32)
    out = tmp_path / "model.pt"
    stale = tmp_path / ".model.pt.tmp-1a2b3c4d.partial"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".model.pt.tmp-notmine.partial"  # not a temporary name ldpo makes
    other.write_bytes(b"the user's")
    r = cli("finetune", data / "images.h5", data / "truth.csv", "--out", out, "--arch", "resnet18", "--input-size",
            "32", "--epochs", "1", "--split", "none", "--device", "cpu", "--resume", "-q")
    assert r.code == 0, r.err
    assert out.is_file() and not stale.exists() and other.read_bytes() == b"the user's"


# -- item 11: one rule for ids ---------------------------------------------------------------------

def test_ids_with_spaces_around_them_are_refused_at_the_store(cli, tmp_path):
    import h5py

    from ldpo.common.errors import InputError
    from ldpo.common.files.stores import write_store

    features = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    with pytest.raises(InputError, match="' b' starts or ends with white space"):
        write_store(tmp_path / "w.h5", ["a", " b", "c", "d"], {"stage": "test"}, features=features)
    assert not (tmp_path / "w.h5").exists()
    with h5py.File(tmp_path / "f.h5", "w") as fh:  # a store some other tool wrote
        fh.create_dataset("features", data=features)
        fh.create_dataset("ids", data=["a", "b ", "c", "d"], dtype=h5py.string_dtype())
        fh.attrs["stage"] = '"other"'
    one_line(cli("cluster", tmp_path / "f.h5", "--out", tmp_path / "l.csv", "--k", "2"), "cluster",
             tmp_path / "f.h5", "'b '")
    assert not (tmp_path / "l.csv").exists()


# -- item 18: multi-label names and a class with no negatives --------------------------------------

def test_relabel_refuses_a_name_holding_the_multilabel_separator(cli, tmp_path):
    from ldpo.common.files.labels import write_labels

    write_labels(tmp_path / "labels.csv", ["a", "b", "c"], np.array([10, 20, 30]))
    (tmp_path / "review.csv").write_text("label,name,merge_into\n10,liver;spleen,\n20,chest,\n30,,10;20\n")
    line = one_line(cli("relabel", tmp_path / "labels.csv", tmp_path / "review.csv", "--out", tmp_path / "o.csv"),
                    "relabel", tmp_path / "review.csv", "liver;spleen")
    assert "';'" in line
    assert not (tmp_path / "o.csv").exists()
    (tmp_path / "review.csv").write_text("label,name,merge_into\n10,liver;spleen,\n20,chest,\n30,,\n")
    assert cli("relabel", tmp_path / "labels.csv", tmp_path / "review.csv", "--out", tmp_path / "o.csv").code == 0


def test_a_class_positive_on_every_image_is_said_in_one_line(cli, tmp_path, toy):
    from ldpo.common.files.labels import read_labels, write_multilabels

    data = toy(classes=3, per_class=4, size=32)
    truth = read_labels(data / "truth.csv")
    write_multilabels(tmp_path / "ml.csv", truth.ids, [[0, int(c) + 1] for c in truth.labels])
    r = cli("finetune", data / "images.h5", tmp_path / "ml.csv", "--multi-label", "--out", tmp_path / "m.pt",
            "--arch", "resnet18", "--input-size", "32", "--epochs", "1", "--split", "none", "--device", "cpu",
            "-q")
    assert r.code == 0, r.err
    said = [line for line in r.err.splitlines() if "positive on every" in line]
    assert len(said) == 1 and said[0].startswith("ldpo: ") and "class 0 " in said[0], r.err
