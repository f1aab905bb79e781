"""finetune: learning on the toy set, checkpoint contract, resume after a kill, gloo, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ldpo.common.files.labels import read_labels, write_labels
from ldpo.common.files.stores import open_store, write_store


@pytest.fixture
def small(toy, tmp_path):
    """20 toy images (4 of each of 5 classes, 64 px) and their truth labels."""
    folder = toy(classes=5, per_class=12, size=64)
    truth = read_labels(folder / "truth.csv")
    rows = np.concatenate([np.flatnonzero(truth.labels == c)[:4] for c in range(5)])
    with open_store(folder / "images.h5") as store:
        ids = [store.ids[r] for r in rows]
        images = store.take("images", rows)
    write_store(tmp_path / "images.h5", ids, {"stage": "test"}, images=images)
    write_labels(tmp_path / "labels.csv", ids, truth.labels[rows])
    return tmp_path / "images.h5", tmp_path / "labels.csv"


TINY = ["--input-size", "32", "--batch-size", "8", "--no-progress", "--seed", "3"]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_learns_the_toy_classes_and_writes_the_checkpoint_contract(cli, toy, tmp_path):
    folder = toy(classes=5, per_class=12, size=64)
    out = tmp_path / "run" / "model.pt"
    r = cli("finetune", folder / "images.h5", folder / "truth.csv", "--out", out, "--input-size", "48",
            "--epochs", "5", "--batch-size", "12", "--crop-scale", "0.6", "--split", "none", "--no-progress")
    assert r.code == 0, r.err
    assert "resnet18" in r.err and "lr 0.01" in r.err  # the chosen defaults are logged
    metrics = json.loads((tmp_path / "run" / "model.metrics.json").read_text())
    assert len(metrics["epochs"]) == 5 and metrics["final"]["test_top1"] is None
    assert metrics["final"]["train_top1"] >= 0.5  # chance is 0.2
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    ckpt = load(out)
    assert ckpt["arch"] == "resnet18" and ckpt["num_classes"] == 5 and ckpt["classes"] == [0, 1, 2, 3, 4]
    assert ckpt["input_size"] == 48 and ckpt["normalize"] == "zscore" and ckpt["metrics"] == metrics
    assert ckpt["options"]["lr"] == 0.01 and ckpt["options"]["head_lr_mult"] == 1.0
    assert ckpt["options"]["schedule"] == "constant"  # class labels' default (--vectors: cosine)
    assert not (tmp_path / "run" / "model.pt.partial").exists()
    # the checkpoint feeds featurize: probs take its class list and input size
    probs = tmp_path / "probs.h5"
    assert cli("featurize", folder / "images.h5", "--out", probs, "--init", f"checkpoint:{out}",
               "--layer", "probs", "-q").code == 0
    with open_store(probs) as store:
        p, attrs = store.read("features"), store.attrs
    assert p.shape == (60, 5) and attrs["classes"] == [0, 1, 2, 3, 4] and attrs["input_size"] == 48
    truth = read_labels(folder / "truth.csv").labels
    assert (p.argmax(1) == truth).mean() >= 0.4


def test_resume_after_a_kill_equals_an_uninterrupted_run(cli, small, tmp_path, monkeypatch):
    images, labels = small
    # alexnet_bn: its dropout draws from the RNG, so the resumed RNG state matters too
    args = ["--epochs", "2", "--arch", "alexnet_bn", "--input-size", "64", "--batch-size", "8", "--no-progress",
            "--seed", "3"]
    whole = tmp_path / "whole" / "model.pt"
    assert cli("finetune", images, labels, "--out", whole, *args).code == 0
    killed = tmp_path / "killed" / "model.pt"
    monkeypatch.setenv("LDPO_STOP_AFTER_EPOCH", "1")
    assert cli("finetune", images, labels, "--out", killed, *args).code == 130
    assert not killed.exists() and load(f"{killed}.partial")["epochs_done"] == 1
    monkeypatch.delenv("LDPO_STOP_AFTER_EPOCH")
    r = cli("finetune", images, labels, "--out", killed, "--resume", *args)
    assert r.code == 0 and "continuing" in r.err, r.err
    a, b = load(whole), load(killed)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    strip = lambda m: [{k: v for k, v in e.items() if k != "seconds"} for e in m["epochs"]]  # noqa: E731
    assert strip(a["metrics"]) == strip(b["metrics"]) and a["metrics"]["final"] == b["metrics"]["final"]
    assert a["metrics"]["final"]["val_top1"] is not None and a["metrics"]["final"]["test_top5"] is not None
    r = cli("finetune", images, labels, "--out", killed, "--resume", *args)
    assert r.code == 0 and "already done" in r.err


def test_two_gloo_processes_write_one_valid_checkpoint(small, tmp_path):
    images, labels = small
    out = tmp_path / "ddp" / "model.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "ldpo.stages.finetune", str(images), str(labels), "--out", str(out), "--epochs", "1",
           "--split", "none", "--device", "cpu", *TINY]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = load(out)
    assert ckpt["options"]["world"] == 2 and ckpt["num_classes"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert ckpt["metrics"]["final"]["n_train"] == 20 and len(ckpt["metrics"]["epochs"]) == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.metrics.json", "model.pt"]


def one_error_line(r):
    lines = r.err.strip().splitlines()
    assert r.code == 2 and len(lines) == 1 and lines[0].startswith("finetune: error:"), r.err
    return lines[0]


def test_bad_input_exits_2_with_one_line(cli, small, tmp_path):
    images, labels = small
    out = tmp_path / "m.pt"
    ids = read_labels(labels).ids
    unknown = tmp_path / "unknown.csv"
    write_labels(unknown, ids + ["not-an-image"], [0] * 10 + [1] * 11)
    assert "not in" in one_error_line(cli("finetune", images, unknown, "--out", out, "-q"))
    single = tmp_path / "single.csv"
    write_labels(single, ids, [3] * len(ids))
    assert "only one class" in one_error_line(cli("finetune", images, single, "--out", out, "-q"))
    assert "no such store" in one_error_line(cli("finetune", tmp_path / "none.h5", labels, "--out", out, "-q"))
    partial = tmp_path / "partial.csv"
    write_labels(partial, ids[:10], [0] * 5 + [1] * 5)
    assert "have no label" in one_error_line(cli("finetune", images, partial, "--out", out, "-q"))
    other = tmp_path / "resnet.pt"
    torch.save({"arch": "resnet18", "num_classes": 5, "state_dict": {}}, other)
    line = one_error_line(cli("finetune", images, labels, "--out", out, "--init", f"checkpoint:{other}",
                              "--arch", "alexnet", "-q"))
    assert "resnet18 checkpoint" in line
    line = one_error_line(cli("finetune", images, labels, "--out", out, "--init",
                              "weights:https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "-q"))
    assert "nothing is downloaded" in line
    assert "--split" in one_error_line(cli("finetune", images, labels, "--out", out, "--split", "80/30", "-q"))
    assert not out.exists()


def test_allow_missing_trains_on_the_labelled_images_only(cli, small, tmp_path):
    images, labels = small
    lab = read_labels(labels)
    partial = tmp_path / "partial.csv"
    write_labels(partial, lab.ids[::2], lab.labels[::2])
    out = tmp_path / "m" / "model.pt"
    r = cli("finetune", images, partial, "--out", out, "--allow-missing", "--epochs", "1", "--split", "none", *TINY)
    assert r.code == 0, r.err
    metrics = json.loads((tmp_path / "m" / "model.metrics.json").read_text())
    assert metrics["final"]["n_train"] == 10 and "10 without a label skipped" in r.err


def test_input_filter_and_centroid_head_travel_with_the_checkpoint(cli, small, tmp_path):
    images, labels = small
    out = tmp_path / "sobel.pt"
    r = cli("finetune", images, labels, "--out", out, "--epochs", 1, "--split", "none", "--input-filter", "sobel",
            "--head-init", "centroids", "--jitter", "0.3", *TINY)
    assert r.code == 0, r.err
    ckpt = load(out)
    assert ckpt["input_filter"] == "sobel" and ckpt["origin"] == "random" and ckpt["options"]["head_init"] == "centroids"
    assert "nearest-centroid classifier" in r.err
    # featurize from the checkpoint applies the same filter without being told
    assert cli("featurize", images, "--out", tmp_path / "f.h5", "--init", f"checkpoint:{out}", "--no-progress").code == 0
    with open_store(tmp_path / "f.h5") as store:
        assert store.attrs["input_filter"] == "sobel" and store.attrs["normalize"] == "zscore"
    # a checkpoint that started from random init keeps the random-init recipe (LR 0.01, head x1)
    again = tmp_path / "again.pt"
    assert cli("finetune", images, labels, "--out", again, "--epochs", 1, "--split", "none", "--init",
               f"checkpoint:{out}", "--new-head", *TINY).code == 0
    options = load(again)["options"]
    assert options["lr"] == 0.01 and options["head_lr_mult"] == 1.0 and options["input_filter"] == "sobel"


def test_freeze_backbone_trains_the_head_only_and_keeps_batchnorm_statistics(cli, small, tmp_path):
    from ldpo.common.nets import models

    images, labels = small
    weights = tmp_path / "w.pth"
    torch.manual_seed(5)
    from torchvision.models import resnet18

    torch.save(resnet18().state_dict(), weights)
    out = tmp_path / "frozen.pt"
    r = cli("finetune", images, labels, "--out", out, "--epochs", 2, "--split", "none", "--init", f"weights:{weights}",
            "--arch", "resnet18", "--freeze-backbone", *TINY)
    assert r.code == 0, r.err
    before, after = load(weights), load(out)["state_dict"]
    head = models.HEAD["resnet18"] + "."
    backbone = [k for k in after if not k.startswith(head)]
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # weights and BatchNorm statistics
    assert after[head + "weight"].shape == (5, 512) and load(out)["options"]["freeze_backbone"] is True


def test_min_confidence_trains_on_the_confident_rows_only(cli, small, tmp_path):
    images, labels = small
    lab = read_labels(labels)
    # class 4's rows are all unsure: it drops out of training, and 4 classes remain
    confidence = ["0.2" if c == 4 else "0.9" for c in lab.labels.tolist()]
    write_labels(tmp_path / "scored.csv", lab.ids, lab.labels, {"confidence": confidence})
    out = tmp_path / "m.pt"
    r = cli("finetune", images, tmp_path / "scored.csv", "--out", out, "--epochs", "1", "--split", "none",
            "--min-confidence", "0.5", *TINY)
    assert r.code == 0, r.err
    assert "4 of 20 labelled images below confidence 0.5 left out" in r.err
    assert load(out)["classes"] == [0, 1, 2, 3]
    r = cli("finetune", images, labels, "--out", tmp_path / "n.pt", "--epochs", "1", "--min-confidence", "0.5", *TINY)
    assert r.code == 2 and "no confidence column" in r.err and str(labels) in r.err


# -- neighbour consistency (--neighbours) --------------------------------------------------
def test_neighbour_term_is_scans_consistency_over_images_with_a_neighbour():
    from ldpo.stages.finetune.trainer import Trainer

    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    q = torch.tensor([[0.5, 0.5], [1.0, 0.0]])  # the neighbours' softmax, by neighbour
    rows = torch.tensor([0, 1, 2])
    choice = torch.tensor([1, 1, -1, -1])  # rows 0 and 1 have neighbour 1 (sure of class 0); row 2 has none
    p = torch.softmax(logits, dim=1)
    want = -(torch.log(p[0, 0]) + torch.log(p[1, 0])) / 2
    assert torch.isclose(Trainer.neighbour_term(logits, rows, choice, q), want)
    # agreeing with a sure neighbour costs less than disagreeing
    assert Trainer.neighbour_term(logits[:1], rows[:1], choice, q) < Trainer.neighbour_term(logits[1:2], rows[:1], choice, q)
    assert Trainer.neighbour_term(logits, rows, torch.full((4,), -1), q) == 0


def test_mined_neighbours_are_matched_by_id(tmp_path):
    from ldpo.stages.finetune.data import mine_neighbours

    store_ids = ["a", "b", "c", "d", "e"]
    # the feature store lists the images in another order and lacks "e"; a/b are close, c/d are close
    feats = np.array([[0.0, 1.0], [1.0, 0.0], [0.1, 1.0], [1.0, 0.1]], np.float32)
    write_store(tmp_path / "f.h5", ["c", "a", "d", "b"], {"stage": "test"}, features=feats)
    table = mine_neighbours(str(tmp_path / "f.h5"), store_ids, "images.h5", 1, "cpu")
    assert table.shape == (5, 1)
    assert table[:, 0].tolist() == [1, 0, 3, 2, -1]
    write_store(tmp_path / "g.h5", ["x", "y"], {"stage": "test"}, features=feats[:2])
    with pytest.raises(Exception, match="0 of its ids are images of images.h5"):
        mine_neighbours(str(tmp_path / "g.h5"), store_ids, "images.h5", 1, "cpu")


def test_neighbours_train_deterministically_and_log_the_term(cli, small, tmp_path):
    images, labels = small
    feats = tmp_path / "f.h5"
    assert cli("featurize", images, "--out", feats, "--layer", "multiscale", "--input-size", "32", "-q").code == 0
    runs = []
    for name in ("a.pt", "b.pt"):
        r = cli("finetune", images, labels, "--out", tmp_path / name, "--epochs", "2", "--split", "none",
                "--neighbours", feats, "--neighbour-k", "3", "--neighbour-weight", "0.5", *TINY)
        assert r.code == 0, r.err
        assert "3 nearest neighbours of each of 20 images mined" in r.err
        runs.append(load(tmp_path / name))
    epochs = json.loads((tmp_path / "a.metrics.json").read_text())["epochs"]
    assert all(e["neighbour_loss"] > 0 for e in epochs)
    assert all(torch.equal(runs[0]["state_dict"][k], runs[1]["state_dict"][k]) for k in runs[0]["state_dict"])
    assert runs[0]["options"]["neighbour_weight"] == 0.5
    plain = cli("finetune", images, labels, "--out", tmp_path / "c.pt", "--epochs", "2", "--split", "none", *TINY)
    assert plain.code == 0
    assert not all(torch.equal(runs[0]["state_dict"][k], load(tmp_path / "c.pt")["state_dict"][k])
                   for k in runs[0]["state_dict"])


def test_neighbours_bad_input_is_one_line(cli, small, tmp_path):
    images, labels = small
    r = cli("finetune", images, labels, "--out", tmp_path / "m.pt", "--neighbours", images, *TINY)
    assert r.code == 2 and str(images) in r.err and "features" in r.err
    write_labels(tmp_path / "ml.csv", read_labels(labels).ids, read_labels(labels).labels)
    r = cli("finetune", images, tmp_path / "ml.csv", "--out", tmp_path / "m.pt", "--neighbours", images,
            "--multi-label", *TINY)
    assert r.code == 2 and "--neighbours: needs one label per image" in r.err
    assert not (tmp_path / "m.pt").exists()


def test_two_workers_finish_an_epoch_of_several_windows_and_train_what_one_thread_trains(cli, tmp_path):
    """A store of several training windows (--shuffle-window 1 on a 4.7 MiB archive, one image in 8
    labelled, spread over all its chunks) read by 2 reader threads finishes, with the same weights and
    figures as the main thread reading alone: the batches do not depend on --workers."""
    from ldpo.common.images import imagedata

    store = tmp_path / "archive.zarr"
    assert cli("toy-data", "archive", "--n", 1200, "--size", 64, "--classes", 4, "--chunk-rows", 32, "--out", store,
               "-q").code == 0
    truth = read_labels(f"{store}.truth.csv")
    write_labels(tmp_path / "some.csv", truth.ids[::8], truth.labels[::8])
    rows = np.arange(0, 1200, 8)
    plan = imagedata.epoch_items(rows, np.zeros(len(rows), np.int64), seed=3, epoch=0, chunk=32, row_bytes=64 * 64,
                                 batch=8, window_bytes=1 << 20)
    assert len(plan.items) >= 4  # the window size the option sets: 4+ windows
    runs = {}
    for workers in (2, 0):
        out = tmp_path / f"workers{workers}.pt"
        r = cli("finetune", store, tmp_path / "some.csv", "--out", out, "--epochs", 1, "--split", "none",
                "--allow-missing", "--shuffle-window", 1, "--workers", workers, *TINY)
        assert r.code == 0, r.err
        runs[workers] = load(out)
    a, b = runs[2], runs[0]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["metrics"]["final"] == b["metrics"]["final"] and a["options"]["shuffle_window"] == 1
