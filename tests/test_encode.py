"""``encode``: FV/VLAD/pooling of local descriptors, PCA, saved encoders, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldpo.common.files.stores import open_store, write_store
from ldpo.stages.encode.descriptors import Encoder, fisher_vector, fit_gmm, vlad


def make_local(path, n=40, s=16, c=8, seed=0, shuffle_ids=False):
    """A local store: each image's descriptors come from one of 3 clusters (ReLU-like, >= 0)."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 4, size=(3, c))
    which = rng.integers(0, 3, size=n)
    x = np.abs(centers[which][:, None, :] + rng.normal(0, 0.5, size=(n, s, c)))
    ids = [f"img{i:03d}" for i in range(n)]
    if shuffle_ids:
        rng.shuffle(ids)
    write_store(path, ids, {"stage": "featurize", "layer": "conv5"}, local=x.astype("float16"))
    return ids


def features(path):
    with open_store(path, expect="features") as store:
        return store.read("features"), store.ids, store.attrs


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    path = tmp_path_factory.mktemp("encode") / "local.h5"
    make_local(path, shuffle_ids=True)
    return path


@pytest.mark.parametrize("method,flags,dims", [
    ("fv", ["--components", "4", "--no-pca"], 64),      # 2·K·C = 2·4·8
    ("fv", ["--components", "4", "--dim", "16"], 16),
    ("vlad", ["--components", "4", "--no-pca"], 32),    # K·C
    ("vlad", ["--components", "4", "--dim", "5"], 5),
    ("avg", ["--no-pca"], 8),                           # C
    ("max", ["--dim", "3"], 3),
])
def test_dimensions_before_and_after_pca(cli, local, tmp_path, method, flags, dims):
    out = tmp_path / "f.h5"
    r = cli("encode", local, "--out", out, "--method", method, *flags, "-q")
    assert r.code == 0, r.err
    x, ids, attrs = features(out)
    assert x.shape == (40, dims) and x.dtype == np.float32
    with open_store(local) as src:
        assert ids == src.ids                                  # ids copied in order
    assert attrs["stage"] == "encode" and attrs["method"] == method and attrs["dim"] == dims
    assert attrs["encoded_dim"] == {"fv": 64, "vlad": 32}.get(method, 8)
    if method in ("fv", "vlad") and "--no-pca" in flags:
        assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)   # final L2


def test_default_dim_is_capped_with_a_warning(cli, local, tmp_path):
    r = cli("encode", local, "--out", tmp_path / "f.zarr", "--method", "fv", "--components", "4",
            "--fit-sample", "30")
    assert r.code == 0, r.err
    x, _, attrs = features(tmp_path / "f.zarr")
    assert x.shape == (40, 30) and attrs["pca"] is True        # min(4096, 64 dims, 30 fit images)
    assert "PCA: 30 dimensions" in r.err


def test_avg_and_max_pool_over_positions(cli, local, tmp_path):
    with open_store(local) as src:
        raw = src.read("local").astype(np.float32)
    for method, expect in (("avg", raw.mean(1)), ("max", raw.max(1))):
        out = tmp_path / f"{method}.h5"
        assert cli("encode", local, "--out", out, "--method", method, "--no-pca", "-q").code == 0
        assert np.allclose(features(out)[0], expect, atol=1e-5)


def test_vlad_descriptors_on_a_codeword_give_a_zero_residual_block():
    codebook = torch.tensor([[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0]])
    d = torch.tensor([3.0, 0, -1, 0])
    x = torch.stack([codebook[0], codebook[0], codebook[1] + d]).unsqueeze(0)   # one image, S=3
    v = vlad(x, codebook)[0].reshape(3, 4)
    assert torch.equal(v[0], torch.zeros(4))          # two descriptors equal to word 0
    assert torch.equal(v[2], torch.zeros(4))          # nothing assigned to word 2
    # by hand: intra-norm d/|d|, signed sqrt, L2 → [sqrt(3)/2, 0, -1/2, 0]
    assert torch.allclose(v[1], torch.tensor([math.sqrt(3) / 2, 0, -0.5, 0]), atol=1e-6)


def test_fisher_vector_of_one_component_concentrates_in_its_block():
    k, c, s = 4, 6, 200
    means = torch.zeros(k, c)
    means[torch.arange(k), torch.arange(k)] = 6.0
    variances, weights = torch.ones(k, c), torch.full((k,), 1 / k)
    gen = torch.Generator().manual_seed(0)
    x = (means[2] + torch.randn(2, s, c, generator=gen) * torch.tensor([1.0, 1, 1, 1, 1, 2]))
    fv = fisher_vector(x, weights, means, variances)
    assert fv.shape == (2, 2 * k * c)
    assert torch.allclose(fv.norm(dim=1), torch.ones(2))
    energy = (fv.reshape(2, k, 2 * c) ** 2).sum(2)           # per-component block energy
    assert torch.all(energy[:, 2] > 0.99)
    # the doubled spread of channel 5 shows in component 2's variance gradient
    var_grad = fv.reshape(2, k, 2, c)[:, 2, 1]
    assert torch.all(var_grad[:, 5] > var_grad[:, :5].abs().max(1).values)


def test_gmm_recovers_separated_components():
    rng = np.random.default_rng(1)
    true = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    x = np.concatenate([m + rng.normal(0, s, size=(500, 2)) for m, s in zip(true, (0.5, 1.0, 2.0))])
    weights, means, variances = fit_gmm(x.astype(np.float32), 3, seed=0, device="cpu")
    order = np.argsort(means[:, 0] + 2 * means[:, 1])
    assert np.allclose(means[order], true, atol=0.3)
    assert np.allclose(np.sqrt(variances[order].mean(1)), [0.5, 1.0, 2.0], rtol=0.15)
    assert np.allclose(weights, 1 / 3, atol=0.03)


@pytest.mark.parametrize("method", ["fv", "vlad"])
def test_model_in_reproduces_model_out(cli, local, tmp_path, method):
    enc = tmp_path / "enc.npz"
    r = cli("encode", local, "--out", tmp_path / "a.h5", "--method", method, "--components", "4",
            "--dim", "12", "--model-out", enc, "-q")
    assert r.code == 0, r.err
    r = cli("encode", local, "--out", tmp_path / "b.zarr", "--model-in", enc, "-q")
    assert r.code == 0, r.err
    a, ids_a, attrs_a = features(tmp_path / "a.h5")
    b, ids_b, attrs_b = features(tmp_path / "b.zarr")
    assert np.array_equal(a, b) and ids_a == ids_b
    assert attrs_a["model_checksum"] == attrs_b["model_checksum"] and attrs_b["method"] == method
    with np.load(enc, allow_pickle=False) as z:                # plain arrays, no pickle
        assert str(z["method"]) == method and z["pca_components"].shape == (12, attrs_a["encoded_dim"])
    assert Encoder.load(str(enc)).checksum() == attrs_a["model_checksum"]


def test_same_seed_same_features_and_batch_size_does_not_matter(cli, local, tmp_path):
    argv = ["encode", local, "--method", "fv", "--components", "4", "--dim", "8", "-q"]
    assert cli(*argv, "--out", tmp_path / "a.h5", "--batch-size", "64").code == 0
    assert cli(*argv, "--out", tmp_path / "b.h5", "--batch-size", "64").code == 0
    assert cli(*argv, "--out", tmp_path / "c.h5", "--batch-size", "7").code == 0
    assert cli(*argv, "--out", tmp_path / "d.h5", "--seed", "5").code == 0
    a, b, c, d = (features(tmp_path / f"{n}.h5")[0] for n in "abcd")
    assert np.array_equal(a, b)
    assert np.allclose(a, c, atol=1e-5)
    assert not np.allclose(a, d, atol=1e-3)


def one_line_error(r):
    lines = r.err.strip().splitlines()
    return r.code == 2 and len(lines) == 1 and lines[0].startswith("encode: error:")


def test_bad_input_exits_2_with_one_line(cli, local, tmp_path):
    glob = tmp_path / "global.h5"
    write_store(glob, ["a", "b"], {"stage": "featurize"}, features=np.ones((2, 8), np.float32))
    out = tmp_path / "out.h5"

    r = cli("encode", glob, "--out", out, "--method", "fv")
    assert one_line_error(r) and "local store is needed" in r.err and str(glob) in r.err

    r = cli("encode", local, "--out", out, "--method", "fv", "--components", "4", "--dim", "65")
    assert one_line_error(r) and "--dim 65 is larger than possible" in r.err and "64 dimensions" in r.err

    r = cli("encode", local, "--out", out, "--method", "vlad", "--components", "4", "--dim", "30",
            "--fit-sample", "20")
    assert one_line_error(r) and "at most 20" in r.err

    r = cli("encode", local, "--out", out)
    assert one_line_error(r) and "--method is required" in r.err

    other = tmp_path / "c16.h5"
    make_local(other, n=10, c=16)
    enc = tmp_path / "enc.npz"
    assert cli("encode", local, "--out", out, "--method", "vlad", "--components", "4", "--dim", "4",
               "--model-out", enc, "-q").code == 0
    out.unlink()
    r = cli("encode", other, "--out", out, "--model-in", enc)
    assert one_line_error(r) and "16 channels" in r.err and "fitted on 8" in r.err

    r = cli("encode", local, "--out", out, "--model-in", local)
    assert one_line_error(r) and "not an encoder model" in r.err
    assert not out.exists()                                     # nothing half-written
