"""Stores: the same API over HDF5 and Zarr 3, validated, written atomically."""

from __future__ import annotations

import numpy as np
import pytest

from ldpo.common.errors import InputError
from ldpo.common.files.stores import create_store, open_store, store_format, write_store

FORMATS = ["h5", "zarr"]
KINDS = {
    "images": np.arange(4 * 6 * 5, dtype=np.uint8).reshape(4, 6, 5),
    "features": np.linspace(-1, 1, 4 * 7, dtype=np.float32).reshape(4, 7),
    "local": np.linspace(0, 3, 4 * 3 * 2).astype(np.float16).reshape(4, 3, 2),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", [*KINDS, "rgb"])
def test_round_trip_every_kind(tmp_path, fmt, kind):
    data = np.zeros((4, 5, 5, 3), np.uint8) + np.arange(4, dtype=np.uint8)[:, None, None, None] if kind == "rgb" else KINDS[kind]
    name = "images" if kind == "rgb" else kind
    ids = ["b", "a", "é-3", "x y"]
    path = tmp_path / f"s.{fmt}"
    write_store(path, ids, {"stage": "test", "classes": [3, 1], "n": 4}, **{name: data})
    with open_store(path) as store:
        assert store.kind == name
        assert store.ids == ids
        assert len(store) == 4
        assert store.attrs["classes"] == [3, 1] and store.attrs["n"] == 4 and store.attrs["stage"] == "test"
        back = store.read(name)
        assert back.dtype == data.dtype and np.array_equal(back, data)
        assert np.array_equal(store.take(name, [3, 0, 3]), data[[3, 0, 3]])
        blocks = list(store.batches(name, 3))
        assert [(lo, hi) for lo, hi, _ in blocks] == [(0, 3), (3, 4)]
        assert np.array_equal(np.concatenate([b for _, _, b in blocks]), data)


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_by_row_ranges_fills_regions(tmp_path, fmt):
    path = tmp_path / f"f.{fmt}"
    with create_store(path, n=6, arrays={"features": ((2,), "float32")}, ids=list("abcdef")):
        pass
    for lo, hi in [(4, 6), (0, 2), (2, 4)]:  # shards in any order
        with open_store(path, "r+") as store:
            store.write("features", lo, np.full((hi - lo, 2), lo, np.float32))
    with open_store(path) as store:
        assert store.read("features")[:, 0].tolist() == [0, 0, 2, 2, 4, 4]
        with pytest.raises(InputError, match="read-only"):
            store.write("features", 0, np.zeros((1, 2)))
    with open_store(path, "r+") as store:
        with pytest.raises(InputError, match="outside"):
            store.write("features", 5, np.zeros((2, 2)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_write_leaves_no_final_output(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    with pytest.raises(RuntimeError):
        with create_store(path, n=3, arrays={"features": ((2,), "float32")}, ids=["a", "b", "c"]) as store:
            store.write("features", 0, np.ones((1, 2)))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupted_rewrite_keeps_the_old_store(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    write_store(path, ["a"], features=np.ones((1, 2), np.float32))
    with pytest.raises(RuntimeError):
        with create_store(path, n=1, arrays={"features": ((2,), "float32")}, ids=["a"]):
            raise RuntimeError("killed")
    with open_store(path) as store:
        assert store.read("features").tolist() == [[1.0, 1.0]]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("fmt", FORMATS)
def test_validation_errors_name_the_file(tmp_path, fmt):
    dup = tmp_path / f"dup.{fmt}"
    with create_store(dup, n=2, arrays={"features": ((2,), "float32")}, ids=["a", "a"]):
        pass
    with pytest.raises(InputError, match=r"dup\..*duplicate id 'a'"):
        open_store(dup)
    wrong = tmp_path / f"wrong.{fmt}"
    with create_store(wrong, n=2, arrays={"features": ((2,), "float64")}, ids=["a", "b"]):
        pass
    with pytest.raises(InputError, match="dtype float64"):
        open_store(wrong)
    good = tmp_path / f"good.{fmt}"
    write_store(good, ["a"], features=np.ones((1, 2), np.float32))
    with pytest.raises(InputError, match="holds features, but a local store is needed"):
        open_store(good, expect="local")
    with pytest.raises(InputError, match="no such store"):
        open_store(tmp_path / f"missing.{fmt}")


def test_format_by_suffix(tmp_path):
    assert store_format("x.h5") == "h5" and store_format("x.HDF5") == "h5" and store_format("a/b.zarr") == "zarr"
    with pytest.raises(InputError, match="unknown store format"):
        store_format("x.npy")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(InputError, match="cannot open"):
        open_store(junk)


# -- what an output may replace (issue 22, item 1 and 3) ----------------------------------------

def user_folder(path):
    (path / "a").mkdir(parents=True)
    (path / "a" / "model.pt").write_text("x")
    return path


def test_a_file_output_never_replaces_a_folder(tmp_path):
    from ldpo.common.files.stores import atomic_path

    runs = user_folder(tmp_path / "runs")
    with pytest.raises(InputError, match=r"runs: is an existing folder, not a file"):
        with atomic_path(tmp_path / "runs") as tmp:
            tmp.write_text("id,label\n")
    assert (runs / "a" / "model.pt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # no temporary left


def test_a_zarr_store_replaces_only_an_earlier_ldpo_zarr_store(tmp_path):
    from ldpo.common.files.stores import ldpo_store_problem

    store = tmp_path / "f.zarr"
    write_store(store, ["a"], {"stage": "test"}, features=np.ones((1, 2), np.float32))
    assert ldpo_store_problem(store) == ""
    write_store(store, ["a"], {"stage": "test"}, features=np.zeros((1, 2), np.float32))
    with open_store(store) as opened:
        assert opened.read("features").tolist() == [[0.0, 0.0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.zarr"]

    no_stage = tmp_path / "g.zarr"
    write_store(no_stage, ["a"], features=np.ones((1, 2), np.float32))  # a Zarr store, but not ldpo's
    assert "no ldpo stage" in ldpo_store_problem(no_stage)
    with pytest.raises(InputError, match="not an earlier ldpo Zarr store"):
        write_store(no_stage, ["a"], {"stage": "test"}, features=np.zeros((1, 2), np.float32))
    with open_store(no_stage) as opened:
        assert opened.read("features").tolist() == [[1.0, 1.0]]

    (store / "notes.txt").write_text("mine")
    assert "notes.txt" in ldpo_store_problem(store)
    with pytest.raises(InputError, match="notes.txt"):
        write_store(store, ["a"], {"stage": "test"}, features=np.ones((1, 2), np.float32))
    assert (store / "notes.txt").read_text() == "mine"

    mine = user_folder(tmp_path / "h.zarr")
    with pytest.raises(InputError, match="no Zarr metadata"):
        write_store(mine, ["a"], {"stage": "test"}, features=np.ones((1, 2), np.float32))
    assert (mine / "a" / "model.pt").read_text() == "x"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_an_h5_store_never_replaces_a_zarr_store(tmp_path):
    store = tmp_path / "f.h5"
    store.mkdir()  # a folder named like a file
    with pytest.raises(InputError, match="is an existing folder"):
        write_store(store, ["a"], {"stage": "test"}, features=np.ones((1, 2), np.float32))
    assert store.is_dir()


def test_outputs_never_replace_special_files(tmp_path):
    import os

    from ldpo.common.files.stores import atomic_path

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "link").symlink_to(fifo)
    (tmp_path / "null").symlink_to("/dev/null")
    for path, what in ((fifo, "is a FIFO"), (tmp_path / "link", "a link to a FIFO"),
                       (tmp_path / "null", "a link to a character device")):
        with pytest.raises(InputError, match=what):
            with atomic_path(path) as tmp:
                tmp.write_text("x")
    assert os.path.islink(tmp_path / "link") and os.path.islink(tmp_path / "null")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link", "null"]


def test_outputs_that_belong_together_are_all_refused_when_one_is(tmp_path):
    from ldpo.common.files.stores import atomic_paths

    (tmp_path / "a.csv").write_text("old a")
    runs = user_folder(tmp_path / "b.csv")
    with pytest.raises(InputError, match="b.csv: is an existing folder"):
        with atomic_paths(tmp_path / "a.csv", tmp_path / "b.csv") as (a, b):
            a.write_text("new a")
            b.write_text("new b")
    assert (tmp_path / "a.csv").read_text() == "old a"  # nothing renamed before all were checked
    assert (runs / "a" / "model.pt").read_text() == "x"
    # an output the block did not write is removed as stale, but never a folder that is not ldpo's
    with pytest.raises(InputError, match="b.csv: is an existing folder"):
        with atomic_paths(tmp_path / "a.csv", tmp_path / "b.csv") as (a, b):
            a.write_text("new a")
    assert (runs / "a" / "model.pt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_opening_a_folder_that_is_not_a_store_says_so_in_one_line(tmp_path, fmt):
    folder = tmp_path / f"dir.{fmt}"
    folder.mkdir()
    with pytest.raises(InputError) as caught:
        open_store(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder}: ") and "folder" in message[len(str(folder)):] and "\n" not in message
    assert message.count("(") == message.count(")"), message


def test_a_folder_output_replaces_only_the_earlier_one_its_command_checked(tmp_path):
    from ldpo.common.files.folders import RECORD, check_output_folder, write_record
    from ldpo.common.files.stores import atomic_path

    out = tmp_path / "sheet"
    out.mkdir()
    (out / "index.html").write_text("old")
    write_record(out, "sheet", ["index.html"])

    def write_sheet():
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / "index.html").write_text("new")
            write_record(tmp, "sheet", ["index.html"])

    with pytest.raises(InputError, match="is an existing folder that is not an earlier ldpo Zarr store"):
        write_sheet()  # not checked: a folder like any other
    check_output_folder(out, "sheet")
    write_sheet()
    assert (out / "index.html").read_text() == "new"
    with pytest.raises(InputError):
        write_sheet()  # the check is good for one replacement
    check_output_folder(out, "sheet")
    (out / "notes.txt").write_text("added after the check")
    with pytest.raises(InputError):
        write_sheet()
    assert (out / "notes.txt").read_text() == "added after the check"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet"]
    assert sorted(p.name for p in out.iterdir()) == [RECORD, "index.html", "notes.txt"]
