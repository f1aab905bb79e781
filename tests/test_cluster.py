"""``cluster``: k-means and RIM on synthetic feature stores."""

from __future__ import annotations

import numpy as np
import pytest

from ldpo.common.labels import read_labels
from ldpo.common.metrics import nmi, purity
from ldpo.common.stores import write_store


def blobs(n: int, k: int = 5, d: int = 16, spread: float = 0.5, seed: int = 0):
    """``k`` Gaussian blobs around unit-norm centres; ``spread`` is the total std of a blob."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.arange(n) % k
    x = centres[truth] + spread * rng.standard_normal((n, d)) / np.sqrt(d)
    return x.astype(np.float32), truth


def feature_store(path, x, prefix="img"):
    ids = [f"{prefix}{i:05d}" for i in range(len(x))]
    write_store(path, ids, {"stage": "test"}, features=x)
    return ids


def labels_of(path, ids):
    lab = read_labels(path)
    assert lab.ids == ids  # same rows, same order as the store
    return lab.labels


@pytest.fixture(scope="module")
def blobs200(tmp_path_factory):
    x, truth = blobs(200)
    path = tmp_path_factory.mktemp("blobs") / "feats.h5"
    ids = feature_store(path, x)
    return path, ids, truth


def test_kmeans_recovers_separated_blobs_and_writes_summary(cli, tmp_path):
    x, truth = blobs(300, d=32, spread=0.3, seed=1)
    ids = feature_store(tmp_path / "f.zarr", x)
    r = cli("cluster", tmp_path / "f.zarr", "--out", tmp_path / "l.csv", "--k", "5", "--summary", tmp_path / "sizes")
    assert r.code == 0, r.err
    labels = labels_of(tmp_path / "l.csv", ids)
    assert purity(labels, truth) == 1.0 and purity(truth, labels) == 1.0
    assert "K'=5" in r.err and "loss" in r.err
    sizes = (tmp_path / "sizes.csv").read_text().splitlines()
    assert sizes[0] == "cluster,size" and sorted(int(s.split(",")[1]) for s in sizes[1:]) == [60] * 5
    assert (tmp_path / "sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kmeans_with_pca_whitening_and_same_seed_same_labels(cli, tmp_path, blobs200):
    path, ids, truth = blobs200
    outs = []
    for name in ("a.csv", "b.csv"):
        r = cli("cluster", path, "--out", tmp_path / name, "--k", "5", "--pca", "8", "--whiten", "--seed", "3")
        assert r.code == 0, r.err
        outs.append(labels_of(tmp_path / name, ids))
    assert purity(outs[0], truth) == 1.0
    assert np.array_equal(outs[0], outs[1])


def test_rim_from_50_finds_about_5_clusters(cli, tmp_path, blobs200):
    path, ids, truth = blobs200
    r = cli("cluster", path, "--out", tmp_path / "l.csv", "--method", "rim", "--k", "50")
    assert r.code == 0, r.err
    labels = labels_of(tmp_path / "l.csv", ids)
    k_found = labels.max() + 1
    assert 4 <= k_found <= 8
    assert sorted(np.unique(labels)) == list(range(k_found))  # pruned and renumbered 0..K'-1
    assert nmi(labels, truth) > 0.9
    assert f"K'={k_found}" in r.err


def test_rim_cluster_count_falls_as_lambda_grows(cli, tmp_path, blobs200):
    path, ids, _ = blobs200
    found = {}
    for lam in ("1e-2", "1e-3", "1e-4"):
        r = cli("cluster", path, "--out", tmp_path / "l.csv", "--method", "rim", "--k", "50", "--lam", lam, "-q")
        assert r.code == 0, r.err
        found[lam] = labels_of(tmp_path / "l.csv", ids).max() + 1
    assert found["1e-2"] <= 2 < found["1e-3"] < found["1e-4"], found  # collapse, the blobs, over-segmentation


def test_rim_lambda_means_the_same_at_any_n_and_scale(cli, tmp_path):
    x, truth = blobs(600, seed=2)
    ids = feature_store(tmp_path / "big.h5", x)
    r = cli("cluster", tmp_path / "big.h5", "--out", tmp_path / "big.csv", "--method", "rim", "--k", "50", "-q")
    assert r.code == 0, r.err
    assert nmi(labels_of(tmp_path / "big.csv", ids), truth) > 0.95  # same default lambda as at N=200

    small, truth_small = blobs(200, seed=4)
    runs = []
    for scale in (1.0, 25.0):  # without L2 normalization only the penalty's variance factor absorbs the scale
        ids = feature_store(tmp_path / f"s{scale}.h5", small * scale)
        r = cli("cluster", tmp_path / f"s{scale}.h5", "--out", tmp_path / f"s{scale}.csv", "--method", "rim",
                "--k", "40", "--no-l2", "-q")
        assert r.code == 0, r.err
        runs.append(labels_of(tmp_path / f"s{scale}.csv", ids))
    assert nmi(runs[0], runs[1]) > 0.95 and nmi(runs[0], truth_small) > 0.9


def test_rim_caps_k_for_small_n(cli, tmp_path):
    x, truth = blobs(60, k=3, spread=0.3)
    ids = feature_store(tmp_path / "f.h5", x)
    r = cli("cluster", tmp_path / "f.h5", "--out", tmp_path / "l.csv", "--method", "rim", "--k", "1000")
    assert r.code == 0, r.err
    assert "starting from k=15" in r.err
    assert purity(labels_of(tmp_path / "l.csv", ids), truth) == 1.0


@pytest.mark.parametrize("array,hint", [("local", "encode"), ("images", "featurize")])
def test_store_without_features_says_what_to_run(cli, tmp_path, array, hint):
    data = {"local": np.zeros((4, 3, 2), np.float32), "images": np.zeros((4, 8, 8), np.uint8)}[array]
    write_store(tmp_path / "s.h5", [f"i{i}" for i in range(4)], {}, **{array: data})
    r = cli("cluster", tmp_path / "s.h5", "--out", tmp_path / "l.csv", "--k", "2", "--no-progress")
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and hint in r.err and "s.h5" in r.err
    assert not (tmp_path / "l.csv").exists()


def test_bad_inputs_exit_2_with_one_line(cli, tmp_path):
    x, _ = blobs(20)
    feature_store(tmp_path / "f.h5", x)
    bad = x.copy()
    bad[7, 3] = np.nan
    feature_store(tmp_path / "nan.h5", bad)
    (tmp_path / "junk.h5").write_text("not hdf5")
    cases = [
        (["--k", "21"], "f.h5", "more than the 20 rows"),
        (["--k", "0"], "f.h5", "--k"),
        (["--whiten"], "f.h5", "--pca"),
        (["--k", "2"], "nan.h5", "row 7"),
        (["--k", "2"], "junk.h5", "junk.h5"),
        (["--k", "2"], "missing.h5", "no such store"),
    ]
    for flags, store, needle in cases:
        r = cli("cluster", tmp_path / store, "--out", tmp_path / "l.csv", "--no-progress", *flags)
        assert r.code == 2, (flags, store, r.err)
        assert len(r.err.strip().splitlines()) == 1 and needle in r.err, r.err
    assert not (tmp_path / "l.csv").exists()
