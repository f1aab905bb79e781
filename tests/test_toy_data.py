"""toy-data texture25: deterministic, balanced, and hard for raw-pixel k-means."""

from __future__ import annotations

import hashlib

import numpy as np

from ldpo.common.files.labels import read_labels
from ldpo.common.files.stores import open_store
from ldpo.stages.toy_data.texture25 import generate, raw_pixel_purity


def digest(path) -> str:
    with open_store(path) as store:
        return hashlib.sha256(store.read("images").tobytes() + "".join(store.ids).encode()).hexdigest()


def test_same_seed_same_bytes_other_seed_differs(cli, tmp_path):
    args = ["--classes", "4", "--per-class", "3", "--size", "32", "--no-sheet", "-q"]
    assert cli("toy-data", "texture25", "--out", tmp_path / "a", *args).code == 0
    assert cli("toy-data", "texture25", "--out", tmp_path / "b", *args).code == 0
    assert cli("toy-data", "texture25", "--out", tmp_path / "c", *args, "--seed", "1").code == 0
    assert digest(tmp_path / "a/images.h5") == digest(tmp_path / "b/images.h5")
    assert digest(tmp_path / "a/images.h5") != digest(tmp_path / "c/images.h5")
    assert (tmp_path / "a/truth.csv").read_bytes() == (tmp_path / "b/truth.csv").read_bytes()


def test_classes_balanced_and_store_valid(cli, tmp_path):
    r = cli("toy-data", "texture25", "--out", tmp_path, "--classes", "6", "--per-class", "5",
            "--size", "48", "--format", "zarr")
    assert r.code == 0 and "raw-pixel k-means purity" in r.out
    truth = read_labels(tmp_path / "truth.csv")
    assert np.bincount(truth.labels).tolist() == [5] * 6
    with open_store(tmp_path / "images.zarr", expect="images") as store:
        assert store.shape("images") == (30, 48, 48) and store.ids == truth.ids
        images = store.read("images")
    assert images.std() > 20  # textures, not flat fields
    sheet = tmp_path / "contact-sheet.png"
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_raw_pixel_kmeans_purity_stays_low_on_the_default_set():
    images, _, labels = generate(show_progress=False)  # 25 classes x 40, 256 px: the defaults
    assert images.shape == (1000, 256, 256)
    score = raw_pixel_purity(images, labels)
    print(f"raw-pixel k-means purity on the default set: {score:.3f}")
    assert score < 0.7


def test_classes_differ_visually():
    """Within-class images resemble each other more than other classes in a simple texture statistic."""
    images, _, labels = generate(classes=25, per_class=6, size=64, show_progress=False)
    spectra = np.abs(np.fft.fft2(images.astype(np.float32) - images.mean(axis=(1, 2), keepdims=True)))
    spectra = spectra.reshape(len(images), -1)
    spectra /= np.linalg.norm(spectra, axis=1, keepdims=True)
    sim = spectra @ spectra.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    off = ~same
    np.fill_diagonal(off, False)
    assert sim[same].mean() > sim[off].mean() + 0.1


def test_bad_arguments_exit_2(cli, tmp_path):
    r = cli("toy-data", "texture25", "--out", tmp_path, "--classes", "30")
    assert r.code == 2 and r.err.strip() == "toy-data texture25: error: --classes 30: must be between 1 and 25"
    assert cli("toy-data", "nonsense").code == 2


# -- toy-data archive ------------------------------------------------------------------------

def archive(cli, path, *args):
    return cli("toy-data", "archive", "--out", path, "--no-progress", "-q", *args)


def test_archive_same_seed_same_bytes_and_rows_independent_of_n_and_threads(cli, tmp_path):
    small = ["--n", "300", "--size", "32", "--classes", "4"]
    assert archive(cli, tmp_path / "a.zarr", *small).code == 0
    assert archive(cli, tmp_path / "b.h5", *small, "--workers", "2").code == 0
    assert archive(cli, tmp_path / "c.zarr", *small, "--seed", "1").code == 0
    assert archive(cli, tmp_path / "long.zarr", "--n", "700", "--size", "32", "--classes", "4").code == 0
    assert digest(tmp_path / "a.zarr") == digest(tmp_path / "b.h5")  # format and threads change nothing
    assert digest(tmp_path / "a.zarr") != digest(tmp_path / "c.zarr")
    with open_store(tmp_path / "a.zarr") as a, open_store(tmp_path / "long.zarr") as long:
        assert np.array_equal(a.read("images"), long.read("images", 0, 300))  # a prefix of a longer archive
        assert long.ids[:300] == a.ids
    assert (tmp_path / "a.zarr.truth.csv").read_bytes() == (tmp_path / "b.h5.truth.csv").read_bytes()
    assert (tmp_path / "long.zarr.truth.csv").read_text().startswith((tmp_path / "a.zarr.truth.csv").read_text())


def test_archive_store_shape_ids_truth_and_chunks(cli, tmp_path):
    r = archive(cli, tmp_path / "a.zarr", "--n", "600", "--size", "128", "--classes", "5",
                "--truth", tmp_path / "t.csv")
    assert r.code == 0 and "600 images of 128 px" in r.out and "images/s" in r.out
    assert not (tmp_path / "a.zarr.truth.csv").exists()
    truth = read_labels(tmp_path / "t.csv")
    with open_store(tmp_path / "a.zarr", expect="images") as store:
        images = store.array("images")
        assert images.shape == (600, 128, 128) and images.dtype == np.uint8
        assert images.chunks == (256, 128, 128)  # 4 MiB / 16 KiB per image: block reads, not one image per chunk
        assert store.ids == truth.ids and len(set(store.ids)) == 600
        assert store.attrs["classes"] == 5 and store.attrs["stage"] == "toy-data archive"
        pixels = store.read("images")
    assert sorted(set(truth.labels.tolist())) == [0, 1, 2, 3, 4]
    assert 40 < pixels.mean() < 160 and pixels.std() > 20  # bodies on a dark background, not a flat field
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_archive_chunk_rows():
    from ldpo.stages.toy_data.archive import chunk_rows_for

    assert [chunk_rows_for(s) for s in (16, 32, 64, 100, 256, 512, 4096)] == [4096, 4096, 1024, 256, 64, 16, 1]


def test_archive_chunk_rows_option(cli, tmp_path):
    assert archive(cli, tmp_path / "a.h5", "--n", "50", "--size", "32", "--chunk-rows", "1").code == 0
    with open_store(tmp_path / "a.h5") as store:
        assert store.array("images").chunks == (1, 32, 32)


def test_archive_classes_are_separable_but_not_by_raw_pixels_alone():
    """Nearest class centroid on the amplitude spectrum (phase-free) sorts held-out images almost
    perfectly; raw-pixel k-means finds the classes well above chance but far from perfectly."""
    from ldpo.stages.toy_data.archive import block_labels, generate_block

    classes = 10
    images = np.concatenate([generate_block(0, b, classes, 64) for b in range(4)])
    labels = np.concatenate([block_labels(0, b, classes) for b in range(4)])
    assert images.shape == (1024, 64, 64) and images.dtype == np.uint8
    spectra = np.abs(np.fft.fft2(images - images.mean(axis=(1, 2), keepdims=True))).reshape(len(images), -1)
    spectra /= np.linalg.norm(spectra, axis=1, keepdims=True)
    train, test = slice(0, 768), slice(768, None)
    centroids = np.stack([spectra[train][labels[train] == c].mean(axis=0) for c in range(classes)])
    guess = ((spectra[test][:, None, :] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    assert (guess == labels[test]).mean() > 0.9  # chance: 0.1
    assert 0.3 < raw_pixel_purity(images, labels) < 0.9


def test_archive_class_looks_the_same_whatever_the_class_count():
    from ldpo.stages.toy_data.archive import class_params

    few, many = class_params(3), class_params(40)
    assert np.allclose(few.freq1, many.freq1[:3]) and np.allclose(few.level, many.level[:3])
    assert len(np.unique(np.round(many.angle1, 6))) == 40


def test_archive_failure_leaves_nothing(cli, tmp_path, monkeypatch):
    from ldpo.stages.toy_data import archive as module

    made = []

    def failing(seed, block, *args, **kwargs):
        if block == 2:
            raise RuntimeError("disk full")
        made.append(block)
        return real(seed, block, *args, **kwargs)

    real = module.generate_block
    monkeypatch.setattr(module, "generate_block", failing)
    r = archive(cli, tmp_path / "a.zarr", "--n", "1000", "--size", "16")
    assert r.code == 2 and r.err.strip() == "toy-data archive: error: disk full"
    assert made and list(tmp_path.iterdir()) == []


def test_archive_bad_options_exit_2_with_one_line(cli, tmp_path):
    cases = {("--n", "0"): "toy-data archive: error: --n 0: must be between 1 and 100000000",
             ("--size", "8"): "toy-data archive: error: --size 8: must be between 16 and 4096",
             ("--classes", "0"): "toy-data archive: error: --classes 0: must be between 1 and 10000"}
    for args, message in cases.items():
        r = cli("toy-data", "archive", "--out", tmp_path / "a.zarr", *args)
        assert r.code == 2 and r.err.strip() == message
    r = cli("toy-data", "archive", "--out", tmp_path / "a.png")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "unknown store format '.png'" in r.err
    r = cli("toy-data", "archive", "--out", tmp_path / "a.zarr", "--truth", tmp_path / "a.zarr")
    assert r.code == 2 and "same file" in r.err
    assert list(tmp_path.iterdir()) == []


def test_imbalance_sizes_fall_geometrically_and_images_stay_the_same(cli, tmp_path):
    """--imbalance R: class 0 keeps --per-class images, the last class --per-class / R, geometric in between;
    every image that exists in the balanced set is the same image (a long-tailed set is a subset of it)."""
    args = ["--classes", "5", "--per-class", "40", "--size", "32", "--no-sheet", "-q"]
    assert cli("toy-data", "texture25", "--out", tmp_path / "lt", *args, "--imbalance", "20").code == 0
    assert cli("toy-data", "texture25", "--out", tmp_path / "eq", *args).code == 0
    long, even = read_labels(tmp_path / "lt/truth.csv"), read_labels(tmp_path / "eq/truth.csv")
    sizes = np.bincount(long.labels).tolist()
    assert sizes == [40, 19, 9, 4, 2] and sizes[0] / sizes[-1] == 20
    with open_store(tmp_path / "lt/images.h5") as a, open_store(tmp_path / "eq/images.h5") as b:
        rows = [even.ids.index(i) for i in long.ids]
        assert np.array_equal(a.read("images"), b.read("images")[rows])


def test_archive_imbalance_draws_a_long_tail(cli, tmp_path):
    from ldpo.stages.toy_data.archive import class_shares, labels_for

    shares = class_shares(10, 50)
    assert np.isclose(shares.sum(), 1) and np.isclose(shares[0] / shares[-1], 50)
    assert np.all(np.diff(shares) < 0)
    counts = np.bincount(labels_for(20000, 10, 0, 50), minlength=10)
    assert np.allclose(counts / 20000, shares, atol=0.01)
    assert np.array_equal(labels_for(1000, 10, 0), labels_for(1000, 10, 0, 1.0))  # balanced: the same bytes as before
    out = tmp_path / "lt.h5"
    assert cli("toy-data", "archive", "--out", out, "--n", "300", "--size", "32", "--classes", "6",
               "--imbalance", "30", "-q").code == 0
    truth = np.bincount(read_labels(tmp_path / "lt.h5.truth.csv").labels, minlength=6)
    assert truth[0] > 4 * truth[-1]
    bad = cli("toy-data", "texture25", "--out", tmp_path / "bad", "--imbalance", "0.5")
    assert bad.code == 2 and "--imbalance" in bad.err
