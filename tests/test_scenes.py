"""``toy-data scenes`` and ``encode --method patches`` (LDPO-PM), alone and in the loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ldpo.common.files.labels import align, read_labels, write_labels
from ldpo.common.numerics.metrics import purity
from ldpo.common.files.stores import open_store, write_store
from ldpo.stages.toy_data import scenes
from helpers import loop_env

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = ["--components", "8", "--batch-size", "8", "--device", "cpu", "-q", "--no-progress"]


def features(path):
    with open_store(path, expect="features") as store:
        return store.read("features"), store.ids, store.attrs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 categories × 6 scenes at 32 px."""
    out = tmp_path_factory.mktemp("scenes")
    images, ids, labels = scenes.generate(3, 6, 32, seed=0, show_progress=False)
    write_store(out / "images.h5", ids, {"stage": "test"}, images=images)
    write_labels(out / "truth.csv", ids, labels)
    return out


def test_scenes_are_deterministic_and_their_truth_is_the_category(cli, tmp_path):
    for name in ("a", "b"):
        r = cli("toy-data", "scenes", "--out", tmp_path / name, "--classes", 3, "--per-class", 4, "--size", 32,
                "--objects", 2, "--no-sheet", "-q", "--no-progress")
        assert r.code == 0, r.err
    with open_store(tmp_path / "a/images.h5") as a, open_store(tmp_path / "b/images.h5") as b:
        assert np.array_equal(a.read("images"), b.read("images")) and a.ids == b.ids
        pixels, ids = a.read("images"), a.ids
    assert pixels.shape == (12, 32, 32) and pixels.dtype == np.uint8
    truth = read_labels(tmp_path / "a/truth.csv")
    assert truth.ids == ids and list(truth.labels) == [0] * 4 + [1] * 4 + [2] * 4
    other, _, _ = scenes.generate(3, 4, 32, seed=1, show_progress=False)
    assert not np.array_equal(other, pixels)
    # no global brightness tells a category: the categories' mean intensities overlap
    means = pixels.reshape(3, 4, -1).mean(2)
    assert means.min(1).max() < means.max(1).min()
    assert len(read_labels(tmp_path / "a/objects/truth.csv")) == 2 * len(scenes.KINDS)


def test_every_category_is_a_set_of_key_kinds_none_inside_another():
    for i, a in enumerate(scenes.CATEGORIES):
        assert 2 <= len(a) <= 3 and set(a) <= set(scenes.KEY_KINDS)
        assert all(i == j or not set(a) <= set(b) for j, b in enumerate(scenes.CATEGORIES))


def test_patches_shapes_ids_and_determinism(cli, data, tmp_path):
    runs = []
    for name in ("a", "b"):
        r = cli("encode", data / "images.h5", "--out", tmp_path / f"{name}.h5", "--method", "patches", "--model",
                "random", "--model-out", tmp_path / f"{name}.npz", *SMALL)
        assert r.code == 0, r.err
        runs.append(features(tmp_path / f"{name}.h5"))
    (x, ids, attrs), (y, _, _) = runs
    with open_store(data / "images.h5") as src:
        assert ids == src.ids
    assert attrs["method"] == "patches" and attrs["encoding"] == "patches-spread" and attrs["patches"] == 90
    assert attrs["encoded_dim"] == 4 and x.shape == (18, attrs["dim"]) and x.dtype == np.float32  # half of 8
    assert np.array_equal(x, y)
    # the saved encoder reproduces the features
    r = cli("encode", data / "images.h5", "--out", tmp_path / "c.h5", "--model-in", tmp_path / "a.npz",
            "--model", "random", *SMALL[2:])
    assert r.code == 0, r.err
    assert np.allclose(features(tmp_path / "c.h5")[0], x, atol=1e-5)


def test_patch_grid_sets_the_patches(cli, data, tmp_path):
    r = cli("encode", data / "images.h5", "--out", tmp_path / "g.h5", "--method", "patches", "--model", "random",
            "--patch-grid", "1:1,0.5:2", "--model-out", tmp_path / "g.npz", *SMALL)
    assert r.code == 0, r.err
    assert features(tmp_path / "g.h5")[2]["patches"] == 5  # one whole-image box + 2 x 2 halves
    with np.load(tmp_path / "g.npz") as z:
        assert np.allclose(z["boxes"], [[0, 0, 1, 1], [0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1], [.5, .5, 1, 1]])
    for bad in ("0.5", "0.5:x", "1.5:2", "0.5:0"):
        r = cli("encode", data / "images.h5", "--out", tmp_path / "o.h5", "--method", "patches", "--model", "random",
                "--patch-grid", bad, *SMALL)
        assert r.code == 2 and "--patch-grid" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "o.h5").exists()


def test_labels_choose_the_elements(cli, data, tmp_path):
    truth = read_labels(data / "truth.csv")
    swapped = tmp_path / "swapped.csv"
    write_labels(swapped, truth.ids, np.roll(truth.labels, 3))  # other categories, same ids
    chosen = {}
    for name, labels in (("truth", data / "truth.csv"), ("swapped", swapped)):
        r = cli("encode", data / "images.h5", "--out", tmp_path / f"{name}.h5", "--method", "patches", "--model",
                "random", "--labels", labels, "--model-out", tmp_path / f"{name}.npz", "--per-category", 2, *SMALL)
        assert r.code == 0, r.err
        with np.load(tmp_path / f"{name}.npz") as z:
            chosen[name] = (z["elements"], z["element_category"], str(z["mode"]))
        assert features(tmp_path / f"{name}.h5")[2]["encoding"] == "patches-mined"
    (a, cat_a, mode), (b, _, _) = chosen["truth"], chosen["swapped"]
    assert mode == "mined" and len(a) <= 3 * 2 and set(cat_a) <= {0, 1, 2}
    assert a.shape != b.shape or not np.allclose(a, b)


def test_mining_rule_support_times_confidence():
    from ldpo.stages.encode.patches import mine_elements

    # 4 images, 2 patches each. Category 0: cluster 1 scores 1 x 1, cluster 0 (in three images) 1 x 2/3;
    # category 1: cluster 2 scores 1 x 1, cluster 3 0.5 x 1, cluster 0 0.5 x 1/3
    assign = np.array([[0, 1], [0, 1], [0, 2], [2, 3]])
    clusters, category = mine_elements(assign, np.array([0, 0, 1, 1]), 4, 1)
    assert list(clusters) == [1, 2] and list(category) == [0, 1]
    clusters, category = mine_elements(assign, np.array([0, 0, 1, 1]), 4, 2)
    assert list(clusters) == [1, 0, 2, 3] and list(category) == [0, 0, 1, 1]  # ties: the lower cluster first


def test_soft_coding_fires_where_a_patch_is_nearest_not_where_every_patch_is_near():
    import torch

    from ldpo.stages.encode.patches import patch_codes

    # centroid 0 is near every patch (cosine 0.8), centroid 1 is the nearest of one patch of image 0 only
    c = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    near0 = torch.tensor([0.8, 0.6, 0.0])     # nearest to centroid 0
    near1 = torch.tensor([0.55, 0.835, 0.0])  # nearest to centroid 1, still 0.55 to centroid 0
    other = torch.tensor([0.6, 0.0, 0.8])     # nearest to centroid 2
    feats = torch.nn.functional.normalize(torch.stack([torch.stack([near0, near1]), torch.stack([near0, other])]), dim=2)
    cosine, none, nearest = patch_codes(feats, c, 0.0)
    same_cosine, soft, _ = patch_codes(feats, c, 0.05)
    assert none is None and torch.equal(cosine, same_cosine) and nearest.tolist() == [[0, 1], [0, 2]]
    # cosine: centroid 1 still fires at 0.6 in image 1, where no patch is nearest to it
    assert cosine[1, 1] > 0.5
    # soft: it fires in image 0 (near 1) and not in image 1 (near 0); the max over patches of each softmax
    assert soft[0, 1] > 0.9 and soft[1, 1] < 0.05
    expected = torch.softmax(feats @ c.T / 0.05, dim=2).amax(1)
    assert torch.allclose(soft, expected)


def test_codings_are_saved_and_an_encoder_from_before_codings_is_cosine(cli, data, tmp_path):
    outs = {}
    for coding in ("soft", "cosine", "both"):
        r = cli("encode", data / "images.h5", "--out", tmp_path / f"{coding}.h5", "--method", "patches", "--model",
                "random", "--coding", coding, "--no-pca", "--model-out", tmp_path / f"{coding}.npz", *SMALL)
        assert r.code == 0, r.err
        outs[coding], _, attrs = features(tmp_path / f"{coding}.h5")
        assert attrs["coding"] == coding
    assert outs["soft"].min() >= 0 and outs["soft"].max() <= 1 and not np.allclose(outs["soft"], outs["cosine"])
    with np.load(tmp_path / "soft.npz") as z:
        assert z["codebook"].shape[0] == 8 and float(z["temperature"]) == 0.05 and len(z["element_index"]) == 4
    # both: the two side by side, each half divided by its spread over the images
    with np.load(tmp_path / "both.npz") as z:
        scales = z["scales"]
    assert np.allclose(outs["both"], np.hstack([outs["cosine"] / scales[0], outs["soft"] / scales[1]]), atol=1e-5)
    for half in (outs["both"][:, :4], outs["both"][:, 4:]):
        assert np.isclose(np.sqrt(((half - half.mean(0)) ** 2).sum(1).mean()), 1, atol=1e-4)
    # auto: cosine from random init, soft once the weights were trained
    from ldpo.stages.encode import resolve_coding

    r = cli("encode", data / "images.h5", "--out", tmp_path / "auto.h5", "--method", "patches", "--model", "random",
            "--no-pca", *SMALL)
    assert r.code == 0 and features(tmp_path / "auto.h5")[2]["coding"] == "cosine"
    assert np.array_equal(features(tmp_path / "auto.h5")[0], outs["cosine"])
    assert resolve_coding("auto", "weights") == "both" and resolve_coding("cosine", "weights") == "cosine"
    # an encoder written before --coding existed has neither coding nor codebook: it encodes by the cosine
    with np.load(tmp_path / "cosine.npz") as z:
        old = {name: z[name] for name in z.files if name not in ("coding", "temperature", "codebook", "element_index")}
    np.savez(tmp_path / "old.npz", **old)
    r = cli("encode", data / "images.h5", "--out", tmp_path / "old.h5", "--model-in", tmp_path / "old.npz",
            "--model", "random", *SMALL[2:])
    assert r.code == 0, r.err
    assert np.allclose(features(tmp_path / "old.h5")[0], outs["cosine"], atol=1e-5)


def test_auto_coding_follows_the_weights_through_a_fine_tuned_checkpoint(cli, data, tmp_path):
    """auto = both for a weights file and for a checkpoint fine-tuned from one (the loop's iterations)."""
    import torch

    from ldpo.common.nets import models

    weights = tmp_path / "w.pth"
    torch.save(models.build(models.parse_init("random"), "resnet18", 3, 0, 32).model.state_dict(), weights)
    r = cli("finetune", data / "images.h5", data / "truth.csv", "--out", tmp_path / "m.pt", "--init",
            f"weights:{weights}", "--arch", "resnet18", "--epochs", 1, "--input-size", 32, "--normalize", "zscore",
            "--split", "none", "--batch-size", 8, "--device", "cpu", "-q", "--no-progress")
    assert r.code == 0, r.err
    for name, spec in (("weights", f"weights:{weights}"), ("checkpoint", f"checkpoint:{tmp_path / 'm.pt'}")):
        r = cli("encode", data / "images.h5", "--out", tmp_path / f"{name}.h5", "--method", "patches", "--model", spec,
                "--arch", "resnet18", "--no-pca", *SMALL)
        assert r.code == 0, r.err
        x, _, attrs = features(tmp_path / f"{name}.h5")
        assert attrs["coding"] == "both" and x.shape[1] == attrs["encoded_dim"] == 8  # 4 elements, each twice


def test_bad_input_is_one_line_and_exit_2(cli, data, tmp_path):
    feats = tmp_path / "feats.h5"
    write_store(feats, ["a", "b"], {"stage": "test"}, features=np.zeros((2, 4), np.float32))
    r = cli("encode", feats, "--out", tmp_path / "o.h5", "--method", "patches", "--model", "random", *SMALL)
    assert r.code == 2 and "a images store is needed" in r.err and len(r.err.strip().splitlines()) == 1
    wrong = tmp_path / "wrong.csv"
    write_labels(wrong, [f"x{i}" for i in range(18)], np.zeros(18, np.int64))
    r = cli("encode", data / "images.h5", "--out", tmp_path / "o.h5", "--method", "patches", "--model", "random",
            "--labels", wrong, *SMALL)
    assert r.code == 2 and str(wrong) in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("encode", data / "images.h5", "--out", tmp_path / "o.h5", "--method", "patches", *SMALL)
    assert r.code == 2 and "--model" in r.err
    r = cli("encode", data / "images.h5", "--out", tmp_path / "o.h5", "--method", "fv", "--labels", wrong, *SMALL)
    assert r.code == 2 and "only for --method patches" in r.err
    for flag, value in (("--coding", "cosine"), ("--temperature", "0.1")):
        r = cli("encode", data / "images.h5", "--out", tmp_path / "o.h5", "--method", "fv", flag, value, *SMALL)
        assert r.code == 2 and flag in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("encode", data / "images.h5", "--out", tmp_path / "o.h5", "--method", "patches", "--model", "random",
            "--temperature", "0", *SMALL)
    assert r.code == 2 and "--temperature" in r.err
    assert not (tmp_path / "o.h5").exists()


def test_loop_with_encode_patches_re_mines_each_iteration(tmp_path):
    """The loop's --encode patches: iteration 0 without labels, iteration 1 mined from iteration 0's labels.
    3 categories × 8 scenes at 32 px from random init; measured purity at iteration 1: 0.625 (chance about 0.4)."""
    images, ids, labels = scenes.generate(3, 8, 32, seed=0, show_progress=False)
    write_store(tmp_path / "images.h5", ids, {"stage": "test"}, images=images)
    write_labels(tmp_path / "truth.csv", ids, labels)
    work = tmp_path / "run"
    env = loop_env()
    proc = subprocess.run(["bash", str(ROOT / "pipelines/ldpo-loop.sh"), "--images", str(tmp_path / "images.h5"),
                           "--work", str(work), "--truth", str(tmp_path / "truth.csv"), "--k", "3", "--max-iter", "1",
                           "--epochs", "1", "--no-early-stop", "--encode", "patches", "--batch-size", "16",
                           "--device", "cpu", "--split", "none"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (work / "iter-00/features.h5").exists()
    with open_store(work / "iter-00/encoded.h5") as a, open_store(work / "iter-01/encoded.h5") as b:
        assert a.attrs["encoding"] == "patches-spread" and a.attrs["labels"] == ""
        assert b.attrs["encoding"] == "patches-mined" and b.attrs["labels"].endswith("iter-00/labels.csv")
    pred = align(read_labels(work / "iter-01/labels.csv"), ids, "truth")
    assert purity(pred, labels) >= 0.5
