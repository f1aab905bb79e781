"""``export-folders``: one folder of PNGs (or symlinks) per category, named by the review."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from PIL import Image

from ldpo.common.files.labels import write_labels
from ldpo.common.files.stores import write_store


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (9, 12, 10), dtype=np.uint8)
    ids = [f"s{i}" for i in range(9)]
    write_store(tmp_path / "images.h5", ids, {}, images=images)
    labels = [3, 3, 3, 5, 5, 7, 7, 7, 7]
    write_labels(tmp_path / "labels.csv", ids[::-1], labels[::-1])
    return tmp_path, ids, images, labels


def categories(out):
    with open(out / "categories.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_one_folder_of_lossless_pngs_per_category(cli, data):
    tmp, ids, images, labels = data
    r = cli("export-folders", tmp / "labels.csv", tmp / "images.h5", "--out", tmp / "out")
    assert r.code == 0, r.err
    assert sorted(p.name for p in (tmp / "out").iterdir()) == [".ldpo-export.json", "categories.csv", "category-3",
                                                                "category-5", "category-7", "files.csv"]
    for ident, image, c in zip(ids, images, labels):
        png = tmp / "out" / f"category-{c}" / f"{ident}.png"
        assert np.array_equal(np.asarray(Image.open(png)), image)  # the store's pixels, exactly
    assert [(r["label"], r["count"]) for r in categories(tmp / "out")] == [("3", "3"), ("5", "2"), ("7", "4")]
    assert not [p for p in tmp.iterdir() if p.name.startswith(".out")]  # no temporary folder left


def test_names_from_a_review_are_sanitized_and_kept_apart(cli, data):
    tmp, ids, _, _ = data
    (tmp / "review.csv").write_text('label,name,merge_into\n3,"CT / liver: axial",\n5,../etc,\n7,CT liver axial,\n')
    r = cli("export-folders", tmp / "labels.csv", tmp / "images.h5", "--out", tmp / "out", "--names",
            tmp / "review.csv")
    assert r.code == 0, r.err
    folders = {row["label"]: row["folder"] for row in categories(tmp / "out")}
    assert folders == {"3": "CT-liver-axial-3", "5": "etc", "7": "CT-liver-axial-7"}
    assert len(list((tmp / "out" / "etc").glob("*.png"))) == 2


def test_names_from_relabel_output(cli, data):
    tmp, ids, _, labels = data
    names = {3: "head", 5: "", 7: "chest"}
    write_labels(tmp / "named.csv", ids, labels, {"name": [names[c] for c in labels]})
    assert cli("export-folders", tmp / "named.csv", tmp / "images.h5", "--out", tmp / "out").code == 0
    assert sorted(p.name for p in (tmp / "out").iterdir() if p.is_dir()) == ["category-5", "chest", "head"]


def test_symlinks_to_source_files(cli, data):
    tmp, ids, _, labels = data
    src = tmp / "src"
    src.mkdir()
    for ident in ids:
        (src / f"{ident}.jpg").write_bytes(b"jpeg " + ident.encode())
    r = cli("export-folders", tmp / "labels.csv", tmp / "images.h5", "--out", tmp / "out", "--symlink", src)
    assert r.code == 0, r.err
    link = tmp / "out" / "category-7" / "s8.jpg"
    assert link.is_symlink() and os.readlink(link) == str((src / "s8.jpg").resolve())
    (src / "s4.jpg").unlink()
    r = cli("export-folders", tmp / "labels.csv", tmp / "images.h5", "--out", tmp / "out2", "--symlink", src)
    assert r.code == 2 and "no source file for id 's4'" in r.err and not (tmp / "out2").exists()


def test_rerun_replaces_an_export_but_never_a_foreign_folder(cli, data):
    tmp, *_ = data
    assert cli("export-folders", tmp / "labels.csv", tmp / "images.h5", "--out", tmp / "out").code == 0
    assert cli("export-folders", tmp / "labels.csv", tmp / "images.h5", "--out", tmp / "out").code == 0
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.docx").write_text("x")
    r = cli("export-folders", tmp / "labels.csv", tmp / "images.h5", "--out", tmp / "mine")
    assert r.code == 2 and "not an earlier export" in r.err
    assert (tmp / "mine" / "thesis.docx").exists()


def test_ids_not_in_the_store(cli, data):
    tmp, ids, _, labels = data
    write_labels(tmp / "more.csv", ids + ["ghost"], labels + [3])
    r = cli("export-folders", tmp / "more.csv", tmp / "images.h5", "--out", tmp / "out")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "'ghost'" in r.err
    r = cli("export-folders", tmp / "more.csv", tmp / "images.h5", "--out", tmp / "out", "--allow-missing")
    assert r.code == 0 and "1 label id(s) not in" in r.err
    assert [row["count"] for row in categories(tmp / "out")] == ["3", "2", "4"]
