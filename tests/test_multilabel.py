"""Several labels per image: the labels contract, multi-label metrics, toy-data multilabel,
finetune --multi-label → featurize --layer probs → assign, relabel keeping a category in two
groups, and the pad-to-square data path."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from ldpo.common.errors import InputError
from ldpo.common.files.labels import align_multi, read_labels, read_multilabels, write_labels, write_multilabels
from ldpo.common.files.stores import open_store


def rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def one_error_line(r):
    assert r.code == 2, r.err
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1, r.err
    return lines[0]


# -- the contract ---------------------------------------------------------------------
def test_multilabel_file_round_trip_with_true_negatives(tmp_path):
    path = tmp_path / "m.csv"
    write_multilabels(path, ["a", "b", "c"], [[2, 0], [], [5]], {"note": ["x", "y", "z"]})
    assert path.read_text().splitlines() == ["id,label,note", "a,0;2,x", "b,,y", "c,5,z"]
    lab = read_multilabels(path)
    assert lab.sets == [(0, 2), (), (5,)] and lab.classes == [0, 2, 5] and lab.is_multi
    rows_, y = align_multi(lab, ["c", "b", "a"], lab.classes)
    assert rows_.tolist() == [0, 1, 2]
    assert y.tolist() == [[0, 0, 1], [0, 0, 0], [1, 1, 0]]
    # a single-label file is a multi-label file with one label per cell
    write_labels(tmp_path / "s.csv", ["a", "b"], [3, 1])
    single = read_multilabels(tmp_path / "s.csv")
    assert single.sets == [(3,), (1,)] and not single.is_multi


@pytest.mark.parametrize("text,message", [
    ("id,label\na,0;2\n", "line 2: label '0;2' holds several labels: a multi-label file"),
    ("id,label\na,1\nb,\n", "line 3: empty label \\(a true negative\\): a multi-label file"),
    ("id,label\na,1\na,2\n", "line 3: duplicate id 'a' \\(several labels of one id go in one cell"),
])
def test_single_label_readers_refuse_a_multilabel_file_in_one_line(tmp_path, text, message):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        read_labels(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text,message", [
    ("id,label\na,1;1\n", "names a label twice"),
    ("id,label\na,1;x\n", "label 'x' is not an integer"),
    ("id,label\na,1\na,2\n", "duplicate id 'a'"),
])
def test_bad_multilabel_cells(tmp_path, text, message):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_multilabels(path)


def test_a_single_label_command_refuses_it_with_exit_2(cli, tmp_path):
    path = tmp_path / "m.csv"
    write_multilabels(path, ["a", "b"], [[0, 1], [1]])
    line = one_error_line(cli("converge", path, "--prev", path, "--history", tmp_path / "h.csv"))
    assert "holds several labels" in line and str(path) in line


# -- metrics ----------------------------------------------------------------------------
def test_multilabel_metrics_against_hand_counts():
    from ldpo.common.numerics.metrics import best_thresholds, multilabel_metrics

    truth = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.6], [0.1, 0.8]])
    m = multilabel_metrics(truth, probs, [0.5, 0.5], classes=[4, 7])
    # class 4 ranks its positives first (AP 1, AUC 1); class 7: 0.8, 0.7 positive above 0.6, 0.2
    assert m["per_class"]["4"]["ap"] == pytest.approx(1.0) and m["per_class"]["7"]["auc"] == pytest.approx(1.0)
    # at 0.5: row 3 predicts class 7 wrongly, the rest are exact
    assert m["exact_match"] == pytest.approx(0.75) and m["hamming_accuracy"] == pytest.approx(7 / 8)
    assert m["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1))  # tp 4, fp 1, fn 0
    assert m["negatives"] == 1
    t = best_thresholds(truth, probs)
    assert 0.3 < t[0] <= 0.6 and 0.6 < t[1] <= 0.7  # between the last negative and the first positive kept
    assert multilabel_metrics(truth, probs, t)["exact_match"] == 1.0
    assert best_thresholds(np.zeros((3, 1)), np.ones((3, 1)))[0] == 0.5  # no positive: the default


# -- toy data ---------------------------------------------------------------------------
def test_toy_multilabel_has_one_two_or_no_parts_and_is_deterministic(cli, tmp_path):
    for out in ("a", "b"):
        assert cli("toy-data", "multilabel", "--out", tmp_path / out, "--n", "30", "--size", "32",
                   "--aspect", "1.5", "-q").code == 0
    assert (tmp_path / "a" / "truth.csv").read_bytes() == (tmp_path / "b" / "truth.csv").read_bytes()
    with open_store(tmp_path / "a" / "images.h5") as a, open_store(tmp_path / "b" / "images.h5") as b:
        assert a.shape("images") == (30, 32, 48) and np.array_equal(a.read("images"), b.read("images"))
    truth = read_multilabels(tmp_path / "a" / "truth.csv")
    assert {len(s) for s in truth.sets} == {0, 1, 2} and set(truth.classes) <= {0, 1, 2, 3}
    parts = truth.extra["parts"]
    assert all(p == ";".join(["head", "chest", "spine", "pelvis"][c] for c in s) for p, s in zip(parts, truth.sets))


# -- pad to square ----------------------------------------------------------------------
def test_non_square_images_are_padded_with_black_not_stretched():
    from ldpo.common.images.imagedata import Augment, Preprocess

    wide = np.random.default_rng(0).integers(1, 255, (2, 20, 40), dtype=np.uint8)
    padded = np.zeros((2, 40, 40), dtype=np.uint8)
    padded[:, 10:30] = wide  # centred, as extract-keyimages pads
    prep = Preprocess(32, "imagenet")
    assert torch.allclose(prep(wide), prep(padded), atol=1e-5)
    aug = Augment(32, "imagenet", min_scale=1.0)
    assert torch.allclose(aug(torch.from_numpy(wide), np.arange(2), 0), aug(torch.from_numpy(padded), np.arange(2), 0),
                          atol=1e-4)


# -- finetune --multi-label → featurize → assign -------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny --multi-label run on 48 toy images (32 px, 2 epochs): the contract, not the accuracy."""
    from ldpo.stages import run

    folder = tmp_path_factory.mktemp("ml")
    assert run(["toy-data", "multilabel", "--out", str(folder), "--n", "48", "--size", "32", "-q"]) == 0
    out = folder / "model.pt"
    assert run(["finetune", str(folder / "images.h5"), str(folder / "truth.csv"), "--multi-label", "--out", str(out),
                "--epochs", "2", "--batch-size", "8", "--crop-scale", "1", "--split", "50/25/25", "--no-progress",
                "-q"]) == 0
    return folder, out


def test_finetune_multilabel_writes_the_checkpoint_and_metrics_contract(trained):
    folder, out = trained
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    truth = read_multilabels(folder / "truth.csv")
    assert ckpt["target"] == "multi" and ckpt["classes"] == truth.classes and ckpt["num_classes"] == len(truth.classes)
    assert len(ckpt["thresholds"]) == len(truth.classes) and all(0 <= t <= 1 for t in ckpt["thresholds"])
    metrics = json.loads((folder / "model.metrics.json").read_text())
    assert metrics["target"] == "multi" and metrics["thresholds"] == ckpt["thresholds"]
    final = metrics["final"]
    for key in ("test_macro_ap", "test_macro_auc", "test_macro_f1", "test_micro_f1", "test_exact", "val_exact"):
        assert final[key] is not None and 0 <= final[key] <= 1, key
    assert final["n_train"] == 24 and final["n_val"] == 12 and final["n_test"] == 12
    per_class = metrics["test"]["per_class"]
    assert set(per_class) == {str(c) for c in truth.classes}
    assert {"ap", "auc", "f1", "threshold"} <= set(next(iter(per_class.values())))
    assert {"train_exact", "val_macro_ap", "val_exact"} <= set(metrics["epochs"][0])


def test_single_label_finetune_refuses_the_multilabel_truth(cli, trained, tmp_path):
    folder, _ = trained
    line = one_error_line(cli("finetune", folder / "images.h5", folder / "truth.csv", "--out", tmp_path / "m.pt",
                              "-q"))
    assert "multi-label file" in line and not (tmp_path / "m.pt").exists()


def test_probs_are_sigmoids_and_assign_writes_label_sets(cli, trained, tmp_path):
    folder, out = trained
    probs = tmp_path / "probs.h5"
    assert cli("featurize", folder / "images.h5", "--out", probs, "--init", f"checkpoint:{out}", "--layer", "probs",
               "-q").code == 0
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    with open_store(probs) as store:
        p, attrs = store.read("features"), store.attrs
    assert attrs["target"] == "multi" and attrs["thresholds"] == pytest.approx(ckpt["thresholds"])
    assert p.min() >= 0 and p.max() <= 1 and not np.allclose(p.sum(axis=1), 1.0)  # not a softmax
    r = cli("assign", folder / "images.h5", "--model", out, "--out", tmp_path / "sets.csv", "--margin", "0.2", "-q")
    assert r.code == 0, r.err
    got = rows(tmp_path / "sets.csv")
    classes = ckpt["classes"]
    assert list(got[0]) == ["id", "label", *(f"p_{c}" for c in classes), *(f"unsure_{c}" for c in classes), "unsure"]
    sets = read_multilabels(tmp_path / "sets.csv")  # the output is a valid multi-label file
    for row, labels, prob in zip(got, sets.sets, p):
        want = tuple(c for c, q, t in zip(classes, prob, ckpt["thresholds"]) if q >= t)
        assert labels == want
        assert [float(row[f"p_{c}"]) for c in classes] == pytest.approx(prob.tolist(), abs=1e-5)
        near = [int(abs(q - t) < 0.2) for q, t in zip(prob, ckpt["thresholds"])]
        assert [int(row[f"unsure_{c}"]) for c in classes] == near and int(row["unsure"]) == max(near)
    line = one_error_line(cli("assign", folder / "images.h5", "--model", out, "--out", tmp_path / "x.csv",
                              "--reference-labels", folder / "truth.csv", "--reference-images", folder / "images.h5"))
    assert "multi-label checkpoint" in line


# -- relabel: a category in two groups ------------------------------------------------------
def test_relabel_keeps_a_category_in_two_groups(cli, tmp_path):
    write_labels(tmp_path / "l.csv", ["a", "b", "c", "d"], [10, 20, 30, 40])
    (tmp_path / "review.csv").write_text("label,name,merge_into\n10,chest,\n20,abdomen,\n30,,10;20\n40,spine,40;20\n")
    r = cli("relabel", tmp_path / "l.csv", tmp_path / "review.csv", "--out", tmp_path / "new.csv")
    assert r.code == 0, r.err
    assert "categories: 4 -> 3" in r.err and "2 kept in several groups" in r.err
    got = {row["id"]: row for row in rows(tmp_path / "new.csv")}
    # groups 10 → 0, 20 → 1, 40 → 2; 30 joins 10 and 20; 40 stays and joins 20
    assert {i: row["label"] for i, row in got.items()} == {"a": "0", "b": "1", "c": "0;1", "d": "1;2"}
    assert got["c"]["name"] == "chest;abdomen" and got["d"]["previous_label"] == "40"
    again = read_multilabels(tmp_path / "new.csv")
    assert again.sets == [(0,), (1,), (0, 1), (1, 2)]
    # a multi-label input goes through relabel too, and a cycle through a list is still found
    (tmp_path / "cycle.csv").write_text("label,name,merge_into\n0,,1;2\n2,,0\n")
    line = one_error_line(cli("relabel", tmp_path / "new.csv", tmp_path / "cycle.csv", "--out", tmp_path / "x.csv"))
    assert "cycle (0 → 2 → 0)" in line


def test_finetune_multilabel_bad_input_exits_2_with_one_line(cli, trained, tmp_path):
    folder, _ = trained
    ids = read_multilabels(folder / "truth.csv").ids
    empty = tmp_path / "empty.csv"
    write_multilabels(empty, ids, [[] for _ in ids])
    out = tmp_path / "m.pt"
    assert "every label cell is empty" in one_error_line(
        cli("finetune", folder / "images.h5", empty, "--multi-label", "--out", out, "-q"))
    assert "not --multi-label" in one_error_line(
        cli("finetune", folder / "images.h5", folder / "truth.csv", "--multi-label", "--head-init", "centroids",
            "--out", out, "-q"))
    partial = tmp_path / "partial.csv"
    write_multilabels(partial, ids[:5], [[0]] * 5)
    assert "have no label cell" in one_error_line(
        cli("finetune", folder / "images.h5", partial, "--multi-label", "--out", out, "-q"))
    assert not out.exists()
