"""Labels CSV: read/write, stdin/stdout, join by id, one-line errors."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from ldpo.common.errors import InputError
from ldpo.common.files.labels import align, contiguous, read_labels, write_labels


def test_round_trip_keeps_extra_columns(tmp_path):
    path = tmp_path / "l.csv"
    write_labels(path, ["a", "b"], [3, 0], extra={"score": [0.5, 0.25]})
    lab = read_labels(path)
    assert lab.ids == ["a", "b"] and lab.labels.tolist() == [3, 0]
    assert lab.extra == {"score": ["0.5", "0.25"]}
    assert path.read_text().splitlines()[0] == "id,label,score"


def test_columns_in_any_order_and_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("label,note,id\n2,x,q\n1,y,r\n"))
    lab = read_labels("-")
    assert lab.mapping() == {"q": 2, "r": 1}


def test_write_to_stdout(capsys):
    write_labels("-", ["a"], [7])
    assert capsys.readouterr().out == "id,label\na,7\n"


@pytest.mark.parametrize("text,message", [
    ("id,lab\na,1\n", "header needs 'id' and 'label'"),
    ("id,label\na,1\na,2\n", "line 3: duplicate id 'a'"),
    ("id,label\na,one\n", "line 2: label 'one' is not an integer"),
    ("id,label\na,-1\n", "label -1 is negative"),
    ("id,label\na,1_0\n", r"line 2: label '1_0' is not an integer \(ASCII digits 0-9 only\)"),
    ("id,label\na,\u0661\u0662\n", "line 2: label '\u0661\u0662' is not an integer"),
    ("id,label\na,\uff13\n", "line 2: label '\uff13' is not an integer"),
    ("id,label\na, 3\n", "line 2: label ' 3' is not an integer"),
    ("id,label\na,+3\n", r"line 2: label '\+3' is not an integer"),
    ("id,label\n", "no labels"),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        read_labels(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_align_by_id_not_position(tmp_path):
    path = tmp_path / "l.csv"
    write_labels(path, ["c", "a", "b"], [2, 0, 1])
    lab = read_labels(path)
    assert align(lab, ["a", "b", "c"]).tolist() == [0, 1, 2]
    with pytest.raises(InputError, match="1 id\\(s\\) not in images.h5, e.g. 'c'"):
        align(lab, ["a", "b"], "images.h5")
    with pytest.raises(InputError, match="have no label, e.g. 'd'"):
        align(lab, ["a", "b", "c", "d"])
    assert align(lab, ["a", "b", "c", "d"], allow_missing=True).tolist() == [0, 1, 2, -1]
    assert align(lab, ["a", "b"], allow_unknown=True).tolist() == [0, 1]


def test_contiguous():
    new, classes = contiguous(np.array([7, 3, 7, 9]))
    assert new.tolist() == [1, 0, 1, 2] and classes == [3, 7, 9]


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such labels file"):
        read_labels(tmp_path / "nope.csv")
