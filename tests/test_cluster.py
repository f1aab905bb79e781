"""``cluster``: k-means and RIM on synthetic feature stores."""

from __future__ import annotations

import numpy as np
import pytest

from ldpo.common.files.labels import read_labels
from ldpo.common.numerics.metrics import nmi, purity
from ldpo.common.files.stores import write_store


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


def issue_blobs(seed: int):
    """5 Gaussian blobs, 200 rows x 64 dims, centres at 10x the noise (the case one random start missed)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 64)) * 10
    truth = rng.integers(0, 5, 200)
    return (centres[truth] + rng.normal(size=(200, 64))).astype(np.float32), truth


def test_default_kmeans_recovers_the_5_blobs_for_every_seed_where_one_random_start_does_not(cli, tmp_path):
    exact = {"default": 0, "v1": 0}
    for seed in range(10):
        x, truth = issue_blobs(seed)
        ids = feature_store(tmp_path / f"b{seed}.h5", x)
        for name, extra in (("default", []), ("v1", ["--nredo", "1", "--init", "random"])):
            out = tmp_path / f"{name}{seed}.csv"
            assert cli("cluster", tmp_path / f"b{seed}.h5", "--out", out, "--k", 5, "--seed", seed, *extra).code == 0
            exact[name] += nmi(labels_of(out, ids), truth) > 0.999
    assert exact["default"] == 10, exact
    assert exact["v1"] < 10, exact  # the lever matters: one random start misses some


def test_kmeans_same_seed_same_labels_other_seed_other_starts(cli, tmp_path):
    x, _ = blobs(400, k=12, d=8, spread=0.9, seed=3)
    ids = feature_store(tmp_path / "f.h5", x)
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        assert cli("cluster", tmp_path / "f.h5", "--out", tmp_path / f"{name}.csv", "--k", 12, "--seed", seed).code == 0
        runs[name] = labels_of(tmp_path / f"{name}.csv", ids)
    assert np.array_equal(runs["a"], runs["b"])


def test_sinkhorn_balance_makes_clusters_equal_sized(cli, tmp_path):
    rng = np.random.default_rng(0)
    sizes = [300, 60, 40]  # very unequal groups
    x = np.concatenate([rng.normal(size=(n, 4)) + 3 * np.eye(4)[i] for i, n in enumerate(sizes)]).astype(np.float32)
    feature_store(tmp_path / "f.h5", x)
    for balance in ("none", "sinkhorn"):
        assert cli("cluster", tmp_path / "f.h5", "--out", tmp_path / f"{balance}.csv", "--k", 4, "--no-l2",
                   "--balance", balance).code == 0
    plain = np.bincount(read_labels(tmp_path / "none.csv").labels, minlength=4)
    balanced = np.bincount(read_labels(tmp_path / "sinkhorn.csv").labels, minlength=4)
    assert plain.max() - plain.min() > 100
    assert balanced.max() - balanced.min() <= 0.1 * len(x), balanced


# -- large stores: learn from a sample, assign block by block ---------------------------------

def test_kmeans_on_a_sample_assigns_every_row_and_same_seed_same_labels(cli, tmp_path):
    x, truth = blobs(3000, d=32, spread=0.3, seed=2)
    ids = feature_store(tmp_path / "f.h5", x)
    outs = []
    for name in ("a.csv", "b.csv"):
        r = cli("cluster", tmp_path / "f.h5", "--out", tmp_path / name, "--k", "5", "--pca", "8",
                "--train-rows", "400", "--batch-size", "700")
        assert r.code == 0, r.err
        assert "learns from 400 of 3000 rows" in r.err and "K'=5" in r.err
        outs.append(labels_of(tmp_path / name, ids))
    assert purity(outs[0], truth) == 1.0 and purity(truth, outs[0]) == 1.0
    assert np.array_equal(outs[0], outs[1])


def test_kmeans_on_a_sample_never_holds_the_whole_matrix(cli, tmp_path, monkeypatch):
    """Traced numpy memory stays well below the N x D matrix when k-means learns from a sample,
    and reaches it when every row is used (so the measurement does see the matrix). The matrix
    (80000 x 128, 41 MB) is large beside what any run holds whatever N is (zarr's and faiss's
    buffers, about 10 MB, varying with the load), so the bound tells the two apart on a busy machine."""
    import tracemalloc

    from ldpo.stages import cluster

    x, truth = blobs(80000, d=128, spread=0.3, seed=3)
    ids = feature_store(tmp_path / "f.zarr", x)
    matrix = x.nbytes
    del x
    learned = []
    real = cluster.kmeans
    monkeypatch.setattr(cluster, "kmeans", lambda y, *a, **kw: learned.append(len(y)) or real(y, *a, **kw))
    # once untraced first: the modules a first run imports (faiss, zarr's codecs) are not the clustering's memory
    assert cli("cluster", tmp_path / "f.zarr", "--out", tmp_path / "warm.csv", "--k", "5", "--train-rows", "2000",
               "--batch-size", "4096", "--nredo", "1").code == 0
    learned.clear()
    peaks = {}
    for rows in ("2000", "80000"):
        tracemalloc.start()
        r = cli("cluster", tmp_path / "f.zarr", "--out", tmp_path / f"{rows}.csv", "--k", "5", "--train-rows", rows,
                "--batch-size", "4096", "--nredo", "1")
        peaks[rows] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert r.code == 0, r.err
        assert purity(labels_of(tmp_path / f"{rows}.csv", ids), truth) == 1.0
    assert learned == [2000, 80000]
    assert peaks["2000"] < matrix / 2 < matrix <= peaks["80000"]


def test_default_train_rows_uses_every_row_of_a_small_store_and_samples_a_large_one():
    from types import SimpleNamespace

    from ldpo.stages.cluster import train_rows

    opts = SimpleNamespace(method="kmeans", balance="none", k=100, train_rows=0)
    assert train_rows(opts, 20000, 512) == 20000  # under max(256 x 100, 128 MiB / 2 KiB = 65536): all rows
    assert train_rows(opts, 200000, 512) == 65536
    assert train_rows(opts, 200000, 4096) == 25600  # 256 per cluster
    assert train_rows(SimpleNamespace(**opts.__dict__ | {"method": "rim"}), 200000, 4096) == 200000
    assert train_rows(SimpleNamespace(**opts.__dict__ | {"method": "scan"}), 200000, 4096) == 25600
    assert train_rows(SimpleNamespace(**opts.__dict__ | {"balance": "sinkhorn"}), 200000, 4096) == 200000
    assert train_rows(SimpleNamespace(**opts.__dict__ | {"train_rows": 1000}), 200000, 4096) == 1000


def test_sampled_kmeans_names_a_non_finite_row_outside_the_sample(cli, tmp_path):
    x, _ = blobs(2000, d=8, seed=4)
    x[1777, 3] = np.nan
    feature_store(tmp_path / "f.h5", x)
    r = cli("cluster", tmp_path / "f.h5", "--out", tmp_path / "l.csv", "--k", "5", "--train-rows", "100",
            "--no-progress")
    assert r.code == 2
    assert r.err.strip() == (f"cluster: error: {tmp_path / 'f.h5'}: row 1777 (id 'img01777') has NaN or infinite "
                             "features")
    assert not (tmp_path / "l.csv").exists()


def test_train_rows_is_refused_where_every_row_is_needed(cli, blobs200, tmp_path):
    path, _, _ = blobs200
    for extra in (["--method", "rim"], ["--balance", "sinkhorn"]):
        r = cli("cluster", path, "--out", tmp_path / "l.csv", "--k", "5", "--train-rows", "100", *extra)
        assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "--train-rows 100" in r.err


# -- scan ---------------------------------------------------------------------------------

def test_scan_recovers_blobs_writes_confidence_and_same_seed_same_file(cli, tmp_path):
    x, truth = blobs(300, k=5, d=32, spread=0.4, seed=2)
    ids = feature_store(tmp_path / "f.h5", x)
    outs = []
    for name in ("a.csv", "b.csv"):
        r = cli("cluster", tmp_path / "f.h5", "--out", tmp_path / name, "--k", "5", "--method", "scan",
                "--scan-steps", "300", "--seed", "4")
        assert r.code == 0, r.err
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
    assert "kept head" in r.err and "K'=5" in r.err
    labels = labels_of(tmp_path / "a.csv", ids)
    assert purity(labels, truth) >= 0.95 and purity(truth, labels) >= 0.95
    rows = (tmp_path / "a.csv").read_text().splitlines()
    assert rows[0] == "id,label,confidence"
    confidence = np.array([float(r.split(",")[2]) for r in rows[1:]])
    assert ((confidence > 1 / 5) & (confidence <= 1)).all() and np.median(confidence) > 0.5


def test_scan_on_a_sample_assigns_every_row_with_its_confidence(cli, tmp_path, monkeypatch):
    from ldpo.stages.cluster import scan as scan_heads

    x, truth = blobs(3000, k=5, d=32, spread=0.4, seed=5)
    ids = feature_store(tmp_path / "f.h5", x)
    learned = []
    real = scan_heads.fit
    monkeypatch.setattr(scan_heads, "fit", lambda y, *a, **kw: learned.append(len(y)) or real(y, *a, **kw))
    outs = []
    for name in ("a.csv", "b.csv"):
        r = cli("cluster", tmp_path / "f.h5", "--out", tmp_path / name, "--k", "5", "--method", "scan",
                "--scan-steps", "300", "--train-rows", "500", "--batch-size", "700")
        assert r.code == 0, r.err
        assert "scan learns from 500 of 3000 rows" in r.err and "K'=5" in r.err
        outs.append((tmp_path / name).read_bytes())
    assert learned == [500, 500] and outs[0] == outs[1]
    labels = labels_of(tmp_path / "a.csv", ids)
    assert len(labels) == 3000 and purity(labels, truth) >= 0.95 and purity(truth, labels) >= 0.95
    confidence = np.array([float(r.split(",")[2]) for r in (tmp_path / "a.csv").read_text().splitlines()[1:]])
    assert len(confidence) == 3000 and np.median(confidence) > 0.5


def test_scan_without_the_entropy_term_says_which_clusters_emptied(cli, tmp_path):
    # no entropy term: nothing keeps clusters alive; the loss is logged and empty clusters named
    x, _ = blobs(200, k=5, d=16, spread=0.4, seed=3)
    feature_store(tmp_path / "f.h5", x)
    r = cli("cluster", tmp_path / "f.h5", "--out", tmp_path / "l.csv", "--k", "8", "--method", "scan",
            "--entropy-weight", "0", "--scan-steps", "300")
    assert r.code == 0, r.err
    used = len(set(read_labels(tmp_path / "l.csv").labels.tolist()))
    assert used < 8 and f"{8 - used} of 8 clusters ended empty" in r.err


def test_scan_self_labeling_runs_on_confident_rows(cli, tmp_path, blobs200):
    path, ids, truth = blobs200
    r = cli("cluster", path, "--out", tmp_path / "l.csv", "--k", "5", "--method", "scan", "--scan-steps", "200",
            "--self-label", "0.9")
    assert r.code == 0, r.err
    assert "self-labeling on" in r.err
    assert purity(labels_of(tmp_path / "l.csv", ids), truth) >= 0.9


def test_nearest_neighbours_exclude_the_row_and_the_inverted_index_agrees_with_exact():
    from ldpo.common.numerics.features import nearest_neighbours

    x, truth = blobs(2000, k=10, d=32, spread=0.5, seed=5)
    exact = nearest_neighbours(x, 10)
    approx = nearest_neighbours(x, 10, exact_max_rows=500)
    assert exact.shape == (2000, 10) and (exact != np.arange(2000)[:, None]).all()
    assert (truth[exact] == truth[:, None]).mean() > 0.95  # neighbours share the blob
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)])
    assert overlap > 0.8


def test_bench_scan_ends_with_the_comparison_line(tmp_path, capsys):
    import importlib.util

    from ldpo.common.files.labels import write_labels

    x, truth = blobs(150, k=3, d=16, spread=0.3, seed=6)
    ids = feature_store(tmp_path / "f.h5", x)
    write_labels(tmp_path / "truth.csv", ids, truth)
    spec = importlib.util.spec_from_file_location("bench_scan", "tests/bench/bench_scan.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([str(tmp_path / "f.h5"), str(tmp_path / "truth.csv"), "--seeds", "0", "--",
                       "--scan-steps", "100"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    name, km, sc = last.split()
    assert name == "scan:" and km.startswith("kmeans=") and sc.startswith("scan=")
    assert float(km.split("=")[1]) >= 0.9 and float(sc.split("=")[1]) >= 0.9


def test_scan_on_a_tiny_set_mines_fewer_neighbours_than_a_cluster_holds(cli, tmp_path):
    # 12 rows in 3 blobs: 20 neighbours would be every other row, pulling the blobs together
    x, truth = blobs(12, k=3, d=8, spread=0.2, seed=7)
    ids = feature_store(tmp_path / "f.h5", x)
    r = cli("cluster", tmp_path / "f.h5", "--out", tmp_path / "l.csv", "--k", "3", "--method", "scan",
            "--scan-steps", "200")
    assert r.code == 0, r.err
    assert "3 neighbours per row instead of 20" in r.err
    assert purity(labels_of(tmp_path / "l.csv", ids), truth) == 1.0


def test_cluster_store_is_callable_from_python_with_plain_settings(tmp_path):
    from ldpo.stages.cluster import ScanSettings, Settings, cluster_store

    x, truth = blobs(300, k=4, d=8, seed=5)
    feature_store(tmp_path / "f.h5", x)
    ids, labels, confidence = cluster_store(str(tmp_path / "f.h5"), Settings(k=4, seed=1))
    assert confidence is None and purity(labels, truth) == 1.0
    ids2, labels2, confidence = cluster_store(str(tmp_path / "f.h5"), Settings(
        method="scan", k=4, scan=ScanSettings(steps=100)))
    assert ids2 == ids and len(confidence) == 300 and purity(labels2, truth) == 1.0


def long_tail_blobs(sizes=(240, 90, 35, 14, 6), d: int = 24, seed: int = 0):
    """Separated blobs of very uneven sizes (an archive's long tail)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(sizes), d)) * 4
    x = np.concatenate([c + rng.normal(0, 0.5, (n, d)) for c, n in zip(centres, sizes)]).astype(np.float32)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return x, truth


@pytest.mark.parametrize("method", ["kmeans", "scan"])
def test_k_auto_keeps_the_tail_and_never_mixes_categories_and_says_why(cli, tmp_path, method):
    """--k auto on five separated blobs of 240 down to 6 rows: no cluster mixes two blobs, and every blob,
    the 6-row one too, is the majority of a cluster of its own (the tail is kept). Gaussian blobs are cut
    into more pieces than there are blobs (modularity cuts a homogeneous region where the cut is thin; the
    category tree re-joins them), so K is at least 5, not exactly 5. The choice and why go to SUMMARY.k.json."""
    import json

    x, truth = long_tail_blobs()
    ids = feature_store(tmp_path / "f.h5", x)
    r = cli("cluster", tmp_path / "f.h5", "--out", tmp_path / "l.csv", "--k", "auto", "--method", method,
            "--summary", tmp_path / "sizes", "--scan-steps", "300")
    assert r.code == 0, r.err
    labels = labels_of(tmp_path / "l.csv", ids)
    chosen = json.loads((tmp_path / "sizes.k.json").read_text())
    assert chosen["k"] >= 5 and "Louvain" in chosen["why"] and len(np.unique(labels)) <= chosen["k"]
    assert purity(labels, truth) == 1.0
    majority = {int(np.bincount(truth[labels == c]).argmax()) for c in np.unique(labels)}
    assert majority == set(range(5))
    for bad in ("0", "many", "-3"):
        r = cli("cluster", tmp_path / "f.h5", "--out", tmp_path / "b.csv", "--k", bad)
        assert r.code == 2 and "--k" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("cluster", tmp_path / "f.h5", "--out", tmp_path / "b.csv", "--k", "auto", "--method", "rim")
    assert r.code == 2 and "RIM" in r.err
