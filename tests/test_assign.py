"""``assign``: new images into the final model's categories, with a runner-up and `unsure`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ldpo.common.files.labels import read_labels
from ldpo.common.files.stores import open_store, write_store
from workdir import loop_work


def last_model(work: Path) -> Path:
    return sorted(work.glob("iter-*/model.pt"))[-1]


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return loop_work(tmp_path_factory)


def images_of(work: Path) -> Path:
    return Path(__import__("json").loads((work / "run.json").read_text())["settings"]["images"])


def test_agrees_with_the_final_models_argmax_on_the_training_images(cli, work, tmp_path):
    images = images_of(work)
    r = cli("assign", images, "--model", last_model(work), "--out", tmp_path / "a.csv", "--batch-size", "32",
            "--device", "cpu", "--min-confidence", "0")
    assert r.code == 0, r.err
    got = rows(tmp_path / "a.csv")
    assert list(got[0]) == ["id", "label", "probability", "runner_up", "runner_up_probability", "unsure"]
    with open_store(work / "final/probs.h5") as store:
        probs, ids, classes = store.read("features"), store.ids, store.attrs["classes"]
    assert [g["id"] for g in got] == ids
    expect = np.asarray(classes)[probs.argmax(axis=1)]
    assert [int(g["label"]) for g in got] == expect.tolist()
    np.testing.assert_allclose([float(g["probability"]) for g in got], probs.max(axis=1), atol=1e-5)
    second = np.asarray(classes)[np.argsort(-probs, axis=1, kind="stable")[:, 1]]
    assert [int(g["runner_up"]) for g in got] == second.tolist()
    assert all(float(g["runner_up_probability"]) <= float(g["probability"]) for g in got)
    assert {g["unsure"] for g in got} == {"0"}  # --min-confidence 0 and no distance rule
    # label values are the checkpoint's classes: the labels the model was trained on
    assert set(int(g["label"]) for g in got) <= set(read_labels(work / "final/labels.csv").classes)


def test_confidence_rule(cli, work, tmp_path):
    images = images_of(work)
    assert cli("assign", images, "--model", last_model(work), "--out", tmp_path / "a.csv", "--device", "cpu",
               "--min-confidence", "0.6").code == 0
    got = rows(tmp_path / "a.csv")
    assert [g["unsure"] == "1" for g in got] == [float(g["probability"]) < 0.6 for g in got]


def test_distance_rule_flags_images_unlike_any_category(cli, work, tmp_path):
    images = images_of(work)
    with open_store(images) as store:
        pixels, ids = store.read("images"), store.ids
    # blank frames: no texture at all (a new archive's empty or saturated images)
    odd = np.stack([np.full(pixels.shape[1:], v, np.uint8) for v in (255, 0, 128)])
    new = tmp_path / "new.h5"
    write_store(new, ids + ["white", "black", "gray"], {}, images=np.concatenate([pixels, odd]))
    r = cli("assign", new, "--model", last_model(work), "--out", tmp_path / "a.csv", "--device", "cpu",
            "--min-confidence", "0", "--reference-labels", work / "final/labels.csv", "--reference-images", images)
    assert r.code == 0, r.err
    got = {g["id"]: g for g in rows(tmp_path / "a.csv")}
    assert {"nearest_distance", "nearest_radius"} <= set(next(iter(got.values())))
    known = [got[i]["unsure"] == "1" for i in ids]
    # at most the farthest image of each class: with 8 images a class, its 95% quantile lies below its farthest one
    classes = len(read_labels(work / "final/labels.csv").classes)
    assert sum(known) <= classes < 0.2 * len(ids)
    assert [got[i]["unsure"] for i in ("white", "black", "gray")] == ["1", "1", "1"]


def test_deterministic_and_bad_input(cli, work, tmp_path):
    images = images_of(work)
    for name in ("a.csv", "b.csv"):
        assert cli("assign", images, "--model", last_model(work), "--out", tmp_path / name, "--device", "cpu").code == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    r = cli("assign", images, "--model", work / "final/labels.csv", "--out", tmp_path / "c.csv")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "cannot load" in r.err
    r = cli("assign", work / "final/probs.h5", "--model", last_model(work), "--out", tmp_path / "c.csv")
    assert r.code == 2 and "holds features" in r.err
    r = cli("assign", images, "--model", last_model(work), "--out", tmp_path / "c.csv",
            "--reference-labels", work / "final/labels.csv")
    assert r.code == 2 and "go together" in r.err
    assert not (tmp_path / "c.csv").exists()


def test_workers_give_the_same_file_and_amp_nearly_the_same_labels(cli, work, tmp_path):
    images, model = images_of(work), last_model(work)
    base = ["--device", "cpu", "--batch-size", "16"]
    assert cli("assign", images, "--model", model, "--out", tmp_path / "a.csv", *base).code == 0
    assert cli("assign", images, "--model", model, "--out", tmp_path / "w.csv", *base, "--workers", "2").code == 0
    assert (tmp_path / "w.csv").read_bytes() == (tmp_path / "a.csv").read_bytes()
    assert cli("assign", images, "--model", model, "--out", tmp_path / "b.csv", *base, "--amp").code == 0
    plain, fast = rows(tmp_path / "a.csv"), rows(tmp_path / "b.csv")
    same = np.mean([p["label"] == f["label"] for p, f in zip(plain, fast)])
    assert same >= 0.9, same
    gap = max(abs(float(p["probability"]) - float(f["probability"])) for p, f in zip(plain, fast))
    assert gap < 0.1, gap
