"""``relabel``: a reviewer's merges and names applied to a labels CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ldpo.common.files.labels import read_labels, write_labels


def rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def labels(tmp_path):
    ids = [f"img{i:02d}" for i in range(12)]
    values = [10, 20, 30, 40, 50, 60] * 2  # six categories, label values not 0..K-1
    write_labels(tmp_path / "labels.csv", ids, values)
    return tmp_path / "labels.csv", dict(zip(ids, values))


def review(tmp_path, text, name="review.csv"):
    (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path / name


def test_merges_are_transitive_names_kept_and_labels_renumbered(cli, tmp_path, labels):
    path, before = labels
    rv = review(tmp_path, 'label,name,merge_into\n10,"Liver, axial",\n20,,10\n30,spine,20\n40,,\n'
                          '50,lungs,\n60,,50\n')
    r = cli("relabel", path, rv, "--out", tmp_path / "new.csv")
    assert r.code == 0, r.err
    assert "categories: 6 -> 3" in r.err and r.out == ""
    got = {row["id"]: row for row in rows(tmp_path / "new.csv")}
    # 30 -> 20 -> 10: all into 10 (renumbered 0); 40 alone (1); 60 -> 50 (2)
    expect = {10: 0, 20: 0, 30: 0, 40: 1, 50: 2, 60: 2}
    assert {i: int(row["label"]) for i, row in got.items()} == {i: expect[v] for i, v in before.items()}
    assert {i: int(row["previous_label"]) for i, row in got.items()} == before
    names = {int(row["label"]): row["name"] for row in got.values()}
    assert names == {0: "Liver, axial", 1: "", 2: "lungs"}
    # the loop takes it as --init-labels: a valid labels CSV with labels 0..K'-1
    assert read_labels(tmp_path / "new.csv").classes == [0, 1, 2]


def test_unnamed_target_takes_a_members_name_and_unreviewed_labels_stay(cli, tmp_path, labels):
    path, _ = labels
    rv = review(tmp_path, "label,name,merge_into\n20,bones,30\n30,,\n")
    assert cli("relabel", path, rv, "--out", tmp_path / "new.csv").code == 0
    got = rows(tmp_path / "new.csv")
    assert len({r["label"] for r in got}) == 5
    assert {r["name"] for r in got if r["previous_label"] in ("20", "30")} == {"bones"}
    assert {r["label"] for r in got if r["previous_label"] in ("20", "30")} == {"1"}


def test_deterministic(cli, tmp_path, labels):
    path, _ = labels
    rv = review(tmp_path, "label,name,merge_into\n60,x,10\n40,y,\n")
    for out in ("a.csv", "b.csv"):
        assert cli("relabel", path, rv, "--out", tmp_path / out).code == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


@pytest.mark.parametrize("text,needle", [
    ("label,name,merge_into\n10,,20\n20,,30\n30,,10\n", "cycle (10 → 20 → 30 → 10)"),
    ("label,name,merge_into\n10,,99\n99,,\n", "label 99 has no image"),
    ("label,name,merge_into\n10,,77\n", "merge_into 77 is not a category of"),
    ("label,name,merge_into\n10,a,\n10,b,\n", "line 3: label 10 is reviewed twice"),
    ("label,name,merge_into\nten,a,\n", "line 2: label 'ten' is not an integer"),
    ("id,label\na,1\n", "not a review CSV"),
])
def test_bad_reviews_exit_2_naming_the_file(cli, tmp_path, labels, text, needle):
    path, _ = labels
    rv = review(tmp_path, text)
    r = cli("relabel", path, rv, "--out", tmp_path / "new.csv")
    assert r.code == 2
    line = r.err.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"relabel: error: {rv}: ") and needle in line, line
    assert not (tmp_path / "new.csv").exists()


def test_output_may_not_overwrite_an_input(cli, tmp_path, labels):
    path, _ = labels
    rv = review(tmp_path, "label,name,merge_into\n10,,\n")
    r = cli("relabel", path, rv, "--out", path)
    assert r.code == 2 and "is the same file as LABELS" in r.err
    assert np.array_equal(read_labels(path).labels, np.array([10, 20, 30, 40, 50, 60] * 2))
