"""toy-data texture25: deterministic, balanced, and hard for raw-pixel k-means."""

from __future__ import annotations

import hashlib

import numpy as np

from ldpo.common.labels import read_labels
from ldpo.common.stores import open_store
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
