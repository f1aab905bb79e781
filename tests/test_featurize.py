"""featurize: stores it writes, determinism, probs from a checkpoint, shards, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldpo.common.nets import models
from ldpo.common.files.stores import open_store, write_store


@pytest.fixture
def small(toy, tmp_path):
    """The first 20 toy images (64 px, grayscale) as their own store."""
    with open_store(toy(classes=5, per_class=12, size=64) / "images.h5") as store:
        ids, images = store.ids[:20], store.read("images", 0, 20)
    path = tmp_path / "images.h5"
    write_store(path, ids, {"stage": "test"}, images=images)
    return path, ids


def read(path, name):
    with open_store(path) as store:
        return store.read(name), store.ids, store.attrs


def test_global_features_are_deterministic_and_keep_the_store_ids(cli, small, tmp_path):
    images, ids = small
    runs = []
    for name in ("a.h5", "b.h5"):
        r = cli("featurize", images, "--out", tmp_path / name, "--input-size", "64", "--seed", "4",
                "--batch-size", "8", "-q")
        assert r.code == 0, r.err
        runs.append(read(tmp_path / name, "features"))
    (fa, ida, attrs), (fb, _, _) = runs
    assert fa.shape == (20, 512) and fa.dtype == np.float32
    assert np.array_equal(fa, fb) and ida == ids
    assert np.abs(fa).sum() > 0 and not np.allclose(fa[0], fa[1])
    assert attrs["arch"] == "resnet18" and attrs["layer"] == "avgpool" and attrs["init"] == "random"
    assert attrs["stage"] == "featurize" and attrs["input_size"] == 64 and attrs["normalize"] == "zscore"
    other = tmp_path / "c.h5"
    assert cli("featurize", images, "--out", other, "--input-size", "64", "--seed", "5", "-q").code == 0
    assert not np.allclose(read(other, "features")[0], fa)


def test_the_data_path_gives_the_plain_references_features(cli, small, tmp_path):
    """Stated tolerance: float32 features within rtol 1e-4 of the reference (plain float input,
    whole batch in memory); with --amp (bfloat16) each row's cosine to the reference ≥ 0.99."""
    from ldpo.common.images import imagedata

    images, _ = small
    with open_store(images) as store:
        pixels = store.read("images")
    built = models.build(models.Init("random"), "resnet18", None, seed=4, input_size=48, normalize="zscore")
    extractor = models.Extractor(built.model, built.arch, "avgpool").eval()
    with torch.inference_mode():
        plain = imagedata.normalize(imagedata.resize(imagedata.to_float3(pixels), 48), "zscore")
        reference = extractor(plain).numpy()
    for flags, check in [((), lambda f: np.allclose(f, reference, rtol=1e-4, atol=1e-5)),
                         (("--amp",), lambda f: (cosine(f, reference) >= 0.99).all())]:
        out = tmp_path / f"f{len(flags)}.h5"
        r = cli("featurize", images, "--out", out, "--input-size", "48", "--seed", "4", "--batch-size", "7",
                "--workers", "1", *flags, "-q")
        assert r.code == 0, r.err
        assert check(read(out, "features")[0]), flags


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_conv_layer_writes_local_float16(cli, small, tmp_path):
    images, ids = small
    out = tmp_path / "local.zarr"
    r = cli("featurize", images, "--out", out, "--arch", "alexnet_bn", "--layer", "conv5", "--input-size", "64", "-q")
    assert r.code == 0, r.err
    local, got_ids, attrs = read(out, "local")
    assert local.shape == (20, 9, 256) and local.dtype == np.float16 and got_ids == ids
    assert (local >= 0).all() and local.max() > 0  # taken after the ReLU
    assert attrs["layer"] == "conv5" and attrs["arch"] == "alexnet_bn"


def make_checkpoint(path, arch="resnet18", classes=(2, 5, 7)):
    built = models.build(models.Init("random"), arch, len(classes), seed=1, input_size=32)
    torch.save({"format": models.CHECKPOINT_FORMAT, "arch": arch, "num_classes": len(classes),
                "classes": list(classes), "state_dict": built.model.state_dict(), "options": {},
                "metrics": {}, "input_size": 32, "normalize": "zscore", "transform_input": False}, path)
    return path


def test_probs_from_a_checkpoint_take_its_settings_and_sum_to_one(cli, small, tmp_path):
    images, _ = small
    ckpt = make_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "probs.h5"
    r = cli("featurize", images, "--out", out, "--init", f"checkpoint:{ckpt}", "--layer", "probs", "-q")
    assert r.code == 0, r.err
    probs, _, attrs = read(out, "features")
    assert probs.shape == (20, 3) and np.allclose(probs.sum(1), 1, atol=1e-5) and (probs >= 0).all()
    assert attrs["classes"] == [2, 5, 7] and attrs["input_size"] == 32 and attrs["normalize"] == "zscore"
    assert attrs["checkpoint"] and len(attrs["checkpoint"]) == 64


def test_shards_fill_the_store_made_by_create_only_like_one_run(cli, small, tmp_path):
    images, _ = small
    common = ["--arch", "alexnet_bn", "--layer", "fc7", "--input-size", "64", "-q"]
    whole = tmp_path / "whole.zarr"
    assert cli("featurize", images, "--out", whole, *common).code == 0
    sharded = tmp_path / "sharded.zarr"
    assert cli("featurize", images, "--out", sharded, "--create-only", *common).code == 0
    assert not read(sharded, "features")[0].any()
    for i in (1, 0, 2):
        r = cli("featurize", images, "--out", sharded, "--shard", f"{i}/3", *common)
        assert r.code == 0, r.err
    # equal up to float rounding: BLAS sums in another order when batches are cut elsewhere
    assert np.allclose(read(sharded, "features")[0], read(whole, "features")[0], rtol=1e-4, atol=1e-6)
    r = cli("featurize", images, "--out", sharded, "--shard", "0/3", "--arch", "alexnet_bn", "--layer", "fc6",
            "--input-size", "64", "-q")
    assert r.code == 2 and "not made by --create-only" in r.err


def test_shard_rows_partition_and_respect_chunks():
    from ldpo.stages.featurize import shard_rows

    for n, parts, chunk in [(20, 3, 1), (1000, 7, 16), (5, 8, 1)]:
        bounds = [shard_rows((i, parts), n, chunk) for i in range(parts)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(lo % chunk == 0 for lo, _ in bounds)


def one_error_line(r, command="featurize"):
    lines = r.err.strip().splitlines()
    assert r.code == 2 and len(lines) == 1 and lines[0].startswith(f"{command}: error:"), r.err
    return lines[0]


def test_bad_input_exits_2_with_one_line(cli, small, tmp_path):
    images, _ = small
    out = tmp_path / "f.h5"
    assert "no such store" in one_error_line(cli("featurize", tmp_path / "none.h5", "--out", out, "-q"))
    assert "nothing is downloaded" in one_error_line(cli("featurize", images, "--out", out, "--init", "imagenet", "-q"))
    ckpt = make_checkpoint(tmp_path / "model.pt")
    line = one_error_line(cli("featurize", images, "--out", out, "--init", f"checkpoint:{ckpt}", "--arch", "alexnet", "-q"))
    assert "resnet18 checkpoint" in line and "--arch alexnet" in line
    assert "has layers" in one_error_line(cli("featurize", images, "--out", out, "--layer", "fc7", "-q"))
    assert "at least 63" in one_error_line(cli("featurize", images, "--out", out, "--arch", "alexnet",
                                                 "--input-size", "32", "-q"))
    assert not out.exists()
