"""Issue 22, the reviewer's and exporter's side: relabel, assign, export-folders, review.csv.

* outputs never land on an input or a special file (items 2, 3);
* a rerun of ``export-folders`` touches only what it wrote (item 4), every image gets its
  own file whatever its id (item 5), and ``--symlink`` never links outside SRC (item 14);
* every CSV a person may open in a spreadsheet neutralizes formula cells and reads back
  exactly (item 13);
* a checkpoint whose ``classes`` do not match its head is one line naming it (item 16).

Every refusal: exit 2, one line ``COMMAND: error: …`` naming the file, nothing changed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ldpo.common.files.labels import write_labels
from ldpo.common.files.stores import write_store
from helpers import snapshot

#: ids and names a hostile (or unlucky) archive may carry: formulas, a quote, a lone sign
TRICKY = ["=1+2", "-x", "@a", "+", "'abc", "=HYPERLINK(\"http://x\",\"y\")", "plain", "-1", "+3.5e2"]
#: cells that must never start a CSV cell (OWASP: = + - @ tab CR)
FORMULA = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|nan)")


# -- helpers ------------------------------------------------------------------------------


def one_line(r, command: str, named) -> str:
    assert r.code == 2, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    assert lines[0].startswith(f"{command}: error: "), lines[0]
    assert str(named) in lines[0], (str(named), lines[0])
    return lines[0]


def images_store(path: Path, ids: list[str], side: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    write_store(path, ids, {"stage": "test"}, images=rng.integers(0, 256, (len(ids), side, side), dtype=np.uint8))
    return path


def raw_csv(path: Path, rows: list[list]) -> Path:
    """A CSV written as a user's tool (or a hostile file) would: no escaping at all."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return path


def raw_cells(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def assert_no_formula_cell(path: Path) -> None:
    for row in raw_cells(path):
        for cell in row:
            assert not (cell.startswith(FORMULA) and not NUMBER.fullmatch(cell)), (path, cell)


def read_back(path: Path, required=("id",)) -> list[dict[str, str]]:
    """Rows as ldpo's common CSV reader gives them."""
    from ldpo.common.files.tables import csv_rows

    return [row for _, row in csv_rows(path, "CSV", list(required))]


def checkpoint(path: Path, classes: list[int], num_classes: int = 3) -> Path:
    import torch

    from ldpo.common.nets import models

    built = models.build(models.parse_init("random"), "resnet18", num_classes, 0, 32)
    torch.save({"format": "ldpo-checkpoint-1", "arch": "resnet18", "num_classes": num_classes, "classes": classes,
                "state_dict": built.model.state_dict(), "options": {}, "input_size": 32, "normalize": "zscore",
                "origin": "random"}, path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", [0, 1, 2])


@pytest.fixture
def rl(tmp_path):
    """labels.csv (6 images, labels 10/20/30) and a review naming and merging them."""
    ids = [f"img{i}" for i in range(6)]
    write_labels(tmp_path / "labels.csv", ids, [10, 20, 30] * 2)
    raw_csv(tmp_path / "review.csv", [["label", "name", "merge_into"], [10, "liver", ""], [20, "", "10"]])
    return tmp_path


@pytest.fixture
def asg(tmp_path, model):
    """images.h5 (4 images, 32 px) and a copy of the checkpoint."""
    images_store(tmp_path / "images.h5", [f"n{i}" for i in range(4)], side=32)
    shutil.copy(model, tmp_path / "model.pt")
    write_labels(tmp_path / "ref.csv", [f"n{i}" for i in range(4)], [0, 1, 2, 0])
    return tmp_path


# -- item 2: an output is never one of the inputs -------------------------------------------

@pytest.mark.parametrize("out", ["./labels.csv", "./review.csv", "{tmp}/sub/../labels.csv", "link.csv"])
def test_relabel_never_writes_over_an_input(cli, rl, monkeypatch, out):
    monkeypatch.chdir(rl)
    (rl / "sub").mkdir()
    os.symlink(rl / "labels.csv", rl / "link.csv")
    before = snapshot(rl)
    r = cli("relabel", rl / "labels.csv", rl / "review.csv", "--out", out.format(tmp=rl), "-q")
    one_line(r, "relabel", out.format(tmp=rl))
    assert "same file as" in r.err
    assert snapshot(rl) == before


@pytest.mark.parametrize("out", ["./images.h5", "{tmp}/model.pt", "./ref.csv", "link.h5"])
def test_assign_never_writes_over_an_input(cli, asg, monkeypatch, out):
    monkeypatch.chdir(asg)
    os.symlink(asg / "images.h5", asg / "link.h5")
    before = snapshot(asg)
    r = cli("assign", "images.h5", "--model", asg / "model.pt", "--out", out.format(tmp=asg), "--device", "cpu",
            "--reference-labels", asg / "ref.csv", "--reference-images", asg / "images.h5", "-q")
    one_line(r, "assign", out.format(tmp=asg))
    assert "same file as" in r.err
    assert snapshot(asg) == before


def test_every_path_has_its_role():
    from ldpo.stages.assign import AssignTool
    from ldpo.stages.export_folders import ExportFoldersTool
    from ldpo.stages.relabel import RelabelTool

    def flags(tool, argv):
        opts = tool.parse(argv)
        return sorted(f for f, _ in tool.inputs(opts)), sorted(f for f, _ in tool.outputs(opts))

    assert flags(RelabelTool(), ["l.csv", "r.csv", "--out", "o.csv"]) == (["LABELS", "REVIEW"], ["--out"])
    assert flags(AssignTool(), ["i.h5", "--model", "m.pt", "--out", "o.csv", "--reference-labels", "l.csv",
                                "--reference-images", "r.h5"]) == (
        ["--model", "--reference-images", "--reference-labels", "IMAGES"], ["--out"])
    inputs, _ = flags(ExportFoldersTool(), ["l.csv", "i.h5", "--out", "o", "--names", "r.csv", "--symlink", "src"])
    assert inputs == ["--names", "--symlink", "IMAGES", "LABELS"]


# -- item 3: special files stay special -----------------------------------------------------

def special(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / ("mynull" if kind == "chr" else "pipe")
    if kind == "fifo":
        os.mkfifo(path)
    else:
        if os.geteuid() != 0:
            pytest.skip("mknod of a character device needs root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return path


@pytest.mark.parametrize("kind", ["fifo", "chr"])
def test_relabel_refuses_a_special_file_as_out(cli, rl, kind):
    path = special(rl, kind)
    r = cli("relabel", rl / "labels.csv", rl / "review.csv", "--out", path, "-q")
    one_line(r, "relabel", path)
    mode = path.lstat().st_mode
    assert (stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISCHR(mode)), "the special file was replaced"


@pytest.mark.parametrize("kind", ["fifo", "chr"])
def test_assign_refuses_a_special_file_as_out(cli, asg, kind):
    path = special(asg, kind)
    r = cli("assign", asg / "images.h5", "--model", asg / "model.pt", "--out", path, "--device", "cpu", "-q")
    one_line(r, "assign", path)
    mode = path.lstat().st_mode
    assert (stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISCHR(mode)), "the special file was replaced"


# -- export-folders data ---------------------------------------------------------------------

@pytest.fixture
def ex(tmp_path):
    """images.h5 with 9 ids s0..s8, labels 3/5/7."""
    ids = [f"s{i}" for i in range(9)]
    images_store(tmp_path / "images.h5", ids)
    write_labels(tmp_path / "labels.csv", ids, [3, 3, 3, 5, 5, 7, 7, 7, 7])
    return tmp_path


def export(cli, ws: Path, *extra, labels="labels.csv", images="images.h5", out="out"):
    return cli("export-folders", ws / labels, ws / images, "--out", ws / out, "-q", *extra)


def exported_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() or p.is_symlink())


# -- item 4: a rerun updates only what export-folders wrote ------------------------------------

def test_rerun_keeps_what_users_added(cli, ex):
    assert export(cli, ex).code == 0
    out = ex / "out"
    (out / "notes.txt").write_text("my notes")
    (out / "category-3" / "annotations.xml").write_text("<boxes/>")
    (out / ".tool").mkdir()
    (out / ".tool" / "state.json").write_text("{}")
    (out / "category-7" / "todo.txt").write_text("check s5")
    # the rerun: category 7 is gone (its images went to 3), s8 is gone altogether
    ids = [f"s{i}" for i in range(8)]
    write_labels(ex / "labels2.csv", ids, [3, 3, 3, 5, 5, 3, 3, 3])
    r = export(cli, ex, labels="labels2.csv")
    assert r.code == 0, r.err
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "category-3" / "annotations.xml").read_text() == "<boxes/>"
    assert (out / ".tool" / "state.json").read_text() == "{}"
    assert (out / "category-7" / "todo.txt").read_text() == "check s5"  # its folder stays for it
    assert not list((out / "category-7").glob("*.png"))  # the export's own files there are gone
    assert sorted(p.name for p in (out / "category-3").glob("*.png")) == [f"s{i}.png" for i in (0, 1, 2, 5, 6, 7)]
    assert sorted(p.name for p in (out / "category-5").glob("*.png")) == ["s3.png", "s4.png"]
    assert [(c["label"], c["count"]) for c in read_back(out / "categories.csv", ["label"])] == [("3", "6"), ("5", "2")]
    # a third run with the first labels puts category 7 back beside the user's file
    assert export(cli, ex).code == 0
    assert sorted(p.name for p in (out / "category-7").iterdir()) == ["s5.png", "s6.png", "s7.png", "s8.png",
                                                                      "todo.txt"]
    assert not [p for p in ex.iterdir() if p.name.startswith(".out")]


def test_rerun_removes_an_emptied_folder_it_made(cli, ex):
    assert export(cli, ex).code == 0
    write_labels(ex / "labels2.csv", [f"s{i}" for i in range(9)], [3] * 9)
    assert export(cli, ex, labels="labels2.csv").code == 0
    assert sorted(p.name for p in (ex / "out").iterdir()) == [".ldpo-export.json", "categories.csv", "category-3",
                                                                "files.csv"]


@pytest.mark.parametrize("setup, named", [
    (lambda out: (out / "categories.csv").write_text("label,folder,name,count\n"), "categories.csv"),
    (lambda out: (out / "thesis.docx").write_text("x"), "thesis.docx"),
])
def test_a_folder_that_is_not_an_export_is_refused(cli, ex, setup, named):
    out = ex / "out"
    out.mkdir()
    setup(out)
    before = snapshot(ex)
    one_line(export(cli, ex), "export-folders", out)
    assert snapshot(ex) == before


def test_an_empty_folder_is_filled(cli, ex):
    (ex / "out").mkdir()
    assert export(cli, ex).code == 0
    assert len(list((ex / "out").rglob("*.png"))) == 9


def test_a_users_file_where_the_rerun_would_write_is_kept_and_refused(cli, ex):
    assert export(cli, ex).code == 0
    images_store(ex / "images2.h5", [f"s{i}" for i in range(9)] + ["new"])
    write_labels(ex / "labels2.csv", [f"s{i}" for i in range(9)] + ["new"], [3, 3, 3, 5, 5, 7, 7, 7, 7, 3])
    (ex / "out" / "category-3" / "new.png").write_text("a user's file")
    before = snapshot(ex)
    one_line(export(cli, ex, labels="labels2.csv", images="images2.h5"), "export-folders",
             ex / "out" / "category-3" / "new.png")
    assert snapshot(ex) == before


@pytest.mark.parametrize("listed", ["../victim.txt", "/tmp/victim.txt", "category-3/../../victim.txt", "."])
def test_a_forged_export_record_deletes_nothing_outside(cli, ex, listed):
    assert export(cli, ex).code == 0
    (ex / "victim.txt").write_text("keep me")
    record = ex / "out" / ".ldpo-export.json"
    data = json.loads(record.read_text())
    data["files"].append(listed)
    record.write_text(json.dumps(data))
    before = snapshot(ex)
    one_line(export(cli, ex), "export-folders", record)
    assert snapshot(ex) == before


# -- item 5: every image gets its own file ----------------------------------------------------

def test_ids_that_sanitize_alike_each_get_a_file(cli, tmp_path):
    ids = ["a/b", "a b", "a-b", "a:b", "A-B", "c", "C", "///", "..", "x"]
    images_store(tmp_path / "images.h5", ids)
    write_labels(tmp_path / "labels.csv", ids, [0] * len(ids))
    r = export(cli, tmp_path)
    assert r.code == 0, r.err
    out = tmp_path / "out"
    pngs = sorted((out / "category-0").glob("*.png"))
    assert len(pngs) == len(ids)
    assert len({p.name.lower() for p in pngs}) == len(ids)  # apart on case-insensitive file systems too
    assert [c["count"] for c in read_back(out / "categories.csv", ["label"])] == [str(len(ids))]
    files = read_back(out / "files.csv")
    assert sorted(f["id"] for f in files) == sorted(ids)
    assert sorted(f["file"] for f in files) == sorted(f"category-0/{p.name}" for p in pngs)
    assert {f["id"]: f["file"] for f in files}["x"] == "category-0/x.png"  # a safe, unique id keeps its name
    # deterministic: the same names again
    assert export(cli, tmp_path, out="out2").code == 0
    assert exported_files(tmp_path / "out2") == exported_files(out)


def test_folder_names_never_collide(cli, ex):
    ids = [f"s{i}" for i in range(9)]
    write_labels(ex / "labels4.csv", ids, [0, 1, 2, 3, 4, 5, 0, 1, 2])
    raw_csv(ex / "review.csv", [["label", "name", "merge_into"], [0, "a", ""], [1, "a", ""], [2, "a-1", ""],
                                [3, "b", ""], [4, "categories.csv", ""], [5, "files.csv", ""]])
    r = export(cli, ex, "--names", ex / "review.csv", labels="labels4.csv")
    assert r.code == 0, r.err
    cats = read_back(ex / "out" / "categories.csv", ["label"])
    folders = [c["folder"] for c in cats]
    assert len({f.lower() for f in folders}) == 6
    assert not {"categories.csv", "files.csv"} & {f.lower() for f in folders}
    for c in cats:
        assert len(list((ex / "out" / c["folder"]).iterdir())) == int(c["count"]), c
    assert sum(int(c["count"]) for c in cats) == 9


# -- item 14: --symlink never links outside SRC -------------------------------------------------

@pytest.mark.parametrize("make_id", [lambda ws: str(ws / "outside" / "secret.png"),
                                     lambda ws: "../outside/secret.png",
                                     lambda ws: "sub/../../outside/secret",
                                     lambda ws: "escape/secret"])
def test_symlink_never_points_outside_src(cli, tmp_path, make_id):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.png").write_bytes(b"secret")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "ok.png").write_bytes(b"ok")
    os.symlink(tmp_path / "outside", src / "escape")
    bad = make_id(tmp_path)
    images_store(tmp_path / "images.h5", ["ok", bad])
    write_labels(tmp_path / "labels.csv", ["ok", bad], [0, 1])
    before = snapshot(tmp_path)
    line = one_line(export(cli, tmp_path, "--symlink", src), "export-folders", repr(bad))
    assert "outside" in line
    assert snapshot(tmp_path) == before


def test_symlink_inside_src_still_works(cli, tmp_path):
    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    (src / "deep" / "a.dcm").write_bytes(b"a")
    (src / "b.png").write_bytes(b"b")
    images_store(tmp_path / "images.h5", ["deep/a", "b"])
    write_labels(tmp_path / "labels.csv", ["deep/a", "b"], [0, 0])
    assert export(cli, tmp_path, "--symlink", src).code == 0
    links = sorted((tmp_path / "out" / "category-0").iterdir())
    assert sorted(os.readlink(p) for p in links) == [str((src / "b.png").resolve()),
                                                       str((src / "deep" / "a.dcm").resolve())]


# -- item 13: formulas are neutralized and read back exactly --------------------------------------

ROUND_TRIP = TRICKY + ["'=x", "''", "'", "'-0.5", "\tx", "\rx", "", "-0.5", "1e5", "a,b", 'say "hi"', "=", "-",
                       "-inf", "-Inf", "'-nan"]


def test_write_csv_neutralizes_formulas_and_csv_rows_reads_them_back(tmp_path):
    from ldpo.common.files.tables import write_csv

    path = tmp_path / "t.csv"
    write_csv(path, ["id", "n", "f"], [[v, i, -0.25] for i, v in enumerate(ROUND_TRIP)])
    assert_no_formula_cell(path)
    got = read_back(path)
    assert [g["id"] for g in got] == ROUND_TRIP
    assert {g["f"] for g in got} == {"-0.25"}  # numbers from ints and floats are left alone
    assert raw_cells(path)[1:4] == [["'=1+2", "0", "-0.25"], ["'-x", "1", "-0.25"], ["'@a", "2", "-0.25"]]
    assert raw_cells(path)[ROUND_TRIP.index("'=x") + 1][0] == "''=x"
    assert raw_cells(path)[ROUND_TRIP.index("'abc") + 1][0] == "'abc"
    assert raw_cells(path)[ROUND_TRIP.index("-1") + 1][0] == "-1"  # a plain number is not a formula


def test_the_rule_reads_back_every_short_text_and_never_leaves_a_formula():
    """Every text of up to 4 characters from the characters that matter: read_cell(csv_cell(v)) == v,
    and what is written never starts a formula (unless it is a plain number)."""
    import itertools

    from ldpo.common.files.tables import csv_cell, read_cell

    alphabet = ["'", "=", "-", "+", "@", "\t", "\r", "a", "1", ".", "e", "inf"]
    for k in range(5):
        for chars in itertools.product(alphabet, repeat=k):
            value = "".join(chars)
            written = csv_cell(value)
            assert read_cell(written) == value, (value, written)
            assert not written.startswith(FORMULA) or NUMBER.fullmatch(written), (value, written)


def test_labels_round_trip_through_read_labels(tmp_path):
    from ldpo.common.files.labels import read_labels

    ids = [v for v in ROUND_TRIP if v and v.strip() == v]
    write_labels(tmp_path / "l.csv", ids, list(range(len(ids))), {"name": ids})
    back = read_labels(tmp_path / "l.csv")
    assert back.ids == ids and back.extra["name"] == ids


def test_relabel_output_neutralizes_ids_and_names(cli, tmp_path):
    ids = TRICKY
    raw_csv(tmp_path / "labels.csv", [["id", "label"]] + [[i, n % 3] for n, i in enumerate(ids)])
    names = ["=cmd|' /C calc'!A0", "-2+3", "'=x"]
    raw_csv(tmp_path / "review.csv", [["label", "name", "merge_into"]] + [[c, csv_escape(n), ""]
                                                                        for c, n in enumerate(names)])
    r = cli("relabel", tmp_path / "labels.csv", tmp_path / "review.csv", "--out", tmp_path / "new.csv", "-q")
    assert r.code == 0, r.err
    assert_no_formula_cell(tmp_path / "new.csv")
    got = read_back(tmp_path / "new.csv")
    assert [g["id"] for g in got] == ids
    assert [g["name"] for g in got] == [names[n % 3] for n in range(len(ids))]


def csv_escape(value: str) -> str:
    from ldpo.common.files.tables import csv_cell

    return csv_cell(value)


def test_review_csv_reads_back_what_the_writer_escaped(tmp_path):
    from ldpo.common.files.review import read_review

    names = ["=1+2", "'=x", "'abc", "@SUM(A1)", "-", "plain"]
    raw_csv(tmp_path / "review.csv", [["label", "name", "merge_into"]] + [[c, csv_escape(n), ""]
                                                                        for c, n in enumerate(names)])
    assert read_review(tmp_path / "review.csv").names == dict(enumerate(names))


def test_export_folders_csvs_neutralize_names_and_ids(cli, tmp_path):
    ids = TRICKY
    images_store(tmp_path / "images.h5", ids)
    raw_csv(tmp_path / "labels.csv", [["id", "label"]] + [[i, n % 2] for n, i in enumerate(ids)])
    raw_csv(tmp_path / "review.csv", [["label", "name"], [0, csv_escape("=cmd|'/C calc'!A0")], [1, "@x"]])
    r = export(cli, tmp_path, "--names", tmp_path / "review.csv")
    assert r.code == 0, r.err
    for name in ("categories.csv", "files.csv"):
        assert_no_formula_cell(tmp_path / "out" / name)
    assert [c["name"] for c in read_back(tmp_path / "out" / "categories.csv", ["label"])] == ["=cmd|'/C calc'!A0",
                                                                                                "@x"]
    assert sorted(f["id"] for f in read_back(tmp_path / "out" / "files.csv")) == sorted(ids)


def test_assign_output_neutralizes_ids(cli, tmp_path, model):
    ids = ["=1+2", "-x", "@a", "+"]
    images_store(tmp_path / "images.h5", ids, side=32)
    r = cli("assign", tmp_path / "images.h5", "--model", model, "--out", tmp_path / "a.csv", "--device", "cpu", "-q")
    assert r.code == 0, r.err
    assert_no_formula_cell(tmp_path / "a.csv")
    assert [g["id"] for g in read_back(tmp_path / "a.csv")] == ids


def js_cells(values: list[str]) -> list[str]:
    """The report page's own ``cell()`` (the JavaScript that builds review.csv), run by node."""
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        pytest.skip("node is not installed: the page's JavaScript cannot be run here")
    from ldpo.stages.report.page import JS

    source = re.search(r"\n  function cell\(text\) \{\n.*?\n  \}\n", JS, re.S)
    assert source, "the page's cell() function was not found"
    program = source.group(0) + f"\nprocess.stdout.write(JSON.stringify({json.dumps(values)}.map(cell)));\n"
    done = subprocess.run([node, "-e", program], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


def test_the_pages_review_csv_neutralizes_names_and_relabel_reads_them_back(cli, tmp_path):
    from ldpo.common.files.review import read_review
    from ldpo.common.files.tables import csv_cell

    names = ["=1+2", "-x", "@a", "+", "'=x", "'abc", "''", "'", "-1", "+3.5e2", "=HYPERLINK(\"a\",\"b\")",
             "a,b", "plain name", "  =spaced", "\t=tab", "'-0.5", "-inf", "-Inf", "'-inf"]
    cells = js_cells(names)
    text = "label,name,merge_into\n" + "".join(f"{c},{cell},\n" for c, cell in enumerate(cells))
    (tmp_path / "review.csv").write_text(text, encoding="utf-8")
    assert_no_formula_cell(tmp_path / "review.csv")
    expect = [" ".join(n.split()) for n in names]  # the page folds white space, as read_review does
    assert read_review(tmp_path / "review.csv").names == dict(enumerate(expect))
    # the same rule as the Python writer, cell for cell
    assert [next(csv.reader([c])) for c in cells] == [[csv_cell(n)] for n in expect]


# -- item 16: a checkpoint whose classes do not fit its head ----------------------------------------

@pytest.mark.parametrize("classes", [[7], [0, 1, 2, 3], [0, 0, 1], [0, -1, 2]])
def test_assign_with_classes_that_do_not_fit_names_the_checkpoint(cli, tmp_path, classes):
    ckpt = checkpoint(tmp_path / "short.pt", classes)
    images_store(tmp_path / "images.h5", [f"n{i}" for i in range(3)], side=32)
    r = cli("assign", tmp_path / "images.h5", "--model", ckpt, "--out", tmp_path / "a.csv", "--device", "cpu", "-q")
    line = one_line(r, "assign", ckpt)
    assert "unexpected" not in line and "classes" in line
    assert not (tmp_path / "a.csv").exists()
