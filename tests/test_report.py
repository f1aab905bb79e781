"""``report``: the static HTML page of a finished loop (structure, links, typicality, atomic output)."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from ldpo.common.files.labels import read_labels, write_labels
from ldpo.common.files.stores import write_store
from workdir import loop_work, synthetic_work


class Page(HTMLParser):
    """Collects links, images, sections, inputs and details; checks that tags balance."""

    VOID = {"meta", "img", "input", "br", "hr", "link", "option", "source", "wbr"}

    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.images: list[dict] = []
        self.sections: list[dict] = []
        self.inputs: list[dict] = []
        self.details = 0
        self.stack: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)
        for key in ("src", "href"):
            if a.get(key):
                self.links.append(a[key])
        if tag == "img":
            self.images.append(a)
        if tag == "section":
            self.sections.append(a)
        if tag == "input":
            self.inputs.append(a)
        if tag == "details" and "node" in a.get("class", "").split():  # the tree's groups
            self.details += 1

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], f"unclosed tags {page.stack}"
    return page


def check_self_contained(out: Path, page: Page) -> None:
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "//cdn" not in html  # no network
    assert "data:image" not in html  # thumbnails are files, not base64
    for link in page.links:
        if link.startswith("#"):
            assert link[1:] in html, link
            continue
        assert (out / link).is_file(), f"the page links {link}, which does not exist"
    for img in page.images:
        assert img.get("loading") == "lazy", img
        assert (out / img["src"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
    return loop_work(tmp_path_factory)


def test_report_of_a_real_loop(cli, loop_run, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(loop_run, work)
    r = cli("report", work, "--no-progress")
    assert r.code == 0, r.err
    assert r.out == ""
    out = work / "report"
    page = parse(out / "index.html")
    check_self_contained(out, page)
    labels = read_labels(work / "final/labels.csv")
    assert [int(s["data-label"]) for s in page.sections] == labels.classes
    text = " ".join(page.text)
    assert "Run settings" in text and "Settings unknown" not in text
    assert "purity vs truth" in text  # the loop had --truth: the table shows agreement with it
    assert f"--model {work / 'final/model.pt'}" in text  # how to assign new images: the final model
    last = sorted(work.glob('iter-*/model.pt'))[-1]  # (a copy of the last iteration's)
    assert (work / "final/model.pt").read_bytes() == last.read_bytes()
    rows = (work / "history.csv").read_text().strip().splitlines()[1:]
    assert (out / "history.png").is_file() and (out / "tree.png").is_file()
    html = (out / "index.html").read_text()
    assert html.count('<tr><td class="num">') == len(rows)
    tree = json.loads((work / "final/tree/tree.json").read_text())
    assert len(tree["levels"]) >= 3  # a level between the categories and the root
    assert page.details == sum(tree["levels"][1:])  # one <details> per group above the categories
    names = [i for i in page.inputs if "name" in i.get("class", "").split()]
    merges = [i for i in page.inputs if "merge" in i.get("class", "").split()]
    assert len(names) == len(merges) == len(labels.classes)
    thumbs = {f"thumbs/{p.name}" for p in (out / "thumbs").iterdir()}
    assert thumbs == {i["src"] for i in page.images if i["src"].startswith("thumbs/")}  # no orphans
    for c in labels.classes:
        size = int((labels.labels == c).sum())
        shown = [i for i in page.images if i["src"].startswith(f"thumbs/{c}-")]
        assert len(shown) >= min(size, 8)
    assert not [p for p in work.iterdir() if p.name.startswith(".report")]  # no temporary folder left


def test_same_inputs_same_report(cli, loop_run, tmp_path):
    for name in ("a", "b"):
        assert cli("report", loop_run, "--out", tmp_path / name, "-q").code == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def small_work(tmp_path: Path, run_json: bool = True) -> Path:
    """Three categories of 6 images; image o2-5 is far from category 2's centroid."""
    work = tmp_path / "w"
    (work / "final").mkdir(parents=True)
    ids = [f"o{c}-{i}" for c in range(3) for i in range(6)]
    y = np.repeat([0, 1, 2], 6)
    probs = np.full((18, 3), 0.05, np.float32)
    probs[np.arange(18), y] = 0.9
    probs[17] = [0.45, 0.1, 0.45]  # o2-5: least typical of category 2
    probs[12] = [0.04, 0.04, 0.92]  # o2-0 slightly off the other way
    write_store(work / "final/probs.h5", ids, {"classes": [0, 1, 2]}, features=probs)
    write_labels(work / "final/labels.csv", ids, y)
    images = np.stack([np.full((20, 30), 10 * i, np.uint8) for i in range(18)])
    write_store(tmp_path / "images.h5", ids, {}, images=images)
    if run_json:
        (work / "run.json").write_text(json.dumps({"format": "ldpo-run-1",
                                                   "settings": {"images": str(tmp_path / "images.h5"), "k": 3}}))
    return work


def test_typical_and_least_typical_images(cli, tmp_path):
    work = small_work(tmp_path)
    r = cli("report", work, "--typical", "3", "--atypical", "2", "--thumb", "16")
    assert r.code == 0, r.err
    page = parse(work / "report/index.html")
    check_self_contained(work / "report", page)
    alts = [(i["src"], i["alt"]) for i in page.images if i["src"].startswith("thumbs/2-")]
    typical = [a for s, a in alts if "-t" in s]
    atypical = [a for s, a in alts if "-a" in s]
    assert len(typical) == 3 and "o2-5" not in typical and "o2-0" not in typical
    assert atypical == ["o2-5", "o2-0"]  # farthest first
    img = next(i for i in page.images if i["alt"] == "o2-5")
    assert (img["width"], img["height"]) == ("16", "11")  # 30x20 shrunk to a 16 px long side
    assert "No history.csv" in " ".join(page.text) and "No category tree" in " ".join(page.text)


def test_without_a_run_record_settings_are_unknown(cli, tmp_path):
    work = small_work(tmp_path, run_json=False)
    r = cli("report", work)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "give --images STORE" in r.err
    r = cli("report", work, "--images", tmp_path / "images.h5")
    assert r.code == 0, r.err
    assert "Settings unknown" in " ".join(parse(work / "report/index.html").text)


def test_bad_work_folders_exit_2(cli, tmp_path):
    work = small_work(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = cli("report", work, "--out", tmp_path / "mine")
    assert r.code == 2 and "is not an earlier report output" in r.err and (tmp_path / "mine" / "notes.txt").exists()
    r = cli("report", tmp_path / "nowhere")
    assert r.code == 2 and "no such work folder" in r.err
    other = tmp_path / "other.h5"
    write_store(other, ["a", "b"], {}, images=np.zeros((2, 8, 8), np.uint8))
    r = cli("report", work, "--images", other)
    assert r.code == 2 and "are not in it" in r.err and not (work / "report").exists()
    (work / "final/labels.csv").unlink()
    r = cli("report", work)
    assert r.code == 2 and "the loop has not finished" in r.err


def test_a_broken_run_record_tree_or_work_path_is_one_line_naming_the_file(cli, tmp_path):
    """Issue 22, items 16 and 21: what the loop's record or hierarchy's tree says is checked
    before it is used; an error is one line naming the file, never `unexpected ...`."""
    work = small_work(tmp_path)
    run = work / "run.json"
    good = json.loads(run.read_text())
    cases = [("", "not valid JSON (empty file)"), ('{"settings": {', "not valid JSON (Expecting"),
             ("[1, 2]", "not a run record (a JSON list, not an object)"),
             (json.dumps({**good, "inputs": ["images.h5"]}), "not a run record (`inputs` is not an object)"),
             (json.dumps({**good, "commands": {"cluster_cmd": ["ldpo", "cluster"]}}), "not a run record (")]
    for text, says in cases:
        run.write_text(text)
        r = cli("report", work)
        assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "unexpected" not in r.err, r.err
        assert f"{run}: {says}" in r.err, r.err
    run.write_text(json.dumps(good))
    tree = work / "final/tree/tree.json"
    tree.parent.mkdir()
    leaves = [{"id": f"L0-{c}", "level": 0, "size": 6, "classes": [c], "children": []} for c in ("a", "b", "c")]
    for bad in ({"id": "L1-0", "level": 1, "size": 18, "classes": ["a", "b", "c"], "children": leaves,
                 "levels": [3, 1]},
                {"id": "L1-0", "classes": [0, 1, 2], "children": [{"classes": [1.5]}], "levels": [3, 1]},
                {"id": "L1-0", "classes": [0, 1, 2], "children": "L0-0", "levels": [3, 1]}):
        tree.write_text(json.dumps(bad))
        r = cli("report", work)
        assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "unexpected" not in r.err, r.err
        assert f"{tree}: not a category tree from hierarchy (" in r.err, r.err
    tree.unlink()
    assert cli("report", work).code == 0
    r = cli("report", work / "final/labels.csv")
    assert r.code == 2 and f"{work / 'final/labels.csv'}: is a file, not a work folder" in r.err, r.err


def test_report_declares_the_paths_it_reads():
    """Issue 22, item 2: WORK and --images are inputs, so the base check compares outputs with them."""
    from ldpo.stages.report import ReportTool

    tool = ReportTool()
    opts = tool.parse(["runs/w", "--images", "images.h5"])
    assert set(tool.inputs(opts)) >= {("WORK", "runs/w"), ("--images", "images.h5")}


def test_a_270_category_report_stays_light(cli, tmp_path_factory, tmp_path):
    work = synthetic_work(tmp_path_factory)
    out = tmp_path / "report"
    r = cli("report", work, "--out", out, "-q")
    assert r.code == 0, r.err
    page = parse(out / "index.html")
    check_self_contained(out, page)
    assert len(page.sections) == 270
    tree = json.loads((work / "final/tree/tree.json").read_text())
    assert len(tree["levels"]) >= 3 and page.details >= tree["levels"][-2]  # nested, collapsible levels
    files = [p for p in out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    html = (out / "index.html").stat().st_size
    print(f"\n270-category report: {len(files)} files, {size / 1e6:.2f} MB in all, index.html {html / 1e6:.2f} MB")
    assert html < 3e6 and size < 30e6


def test_inputs_of_the_loops_run_record_show_path_and_checksum():
    from ldpo.stages.report.page import settings_html

    run = {"settings": {"images": "/data/images.h5", "truth": "", "init": "weights:/w/a.pth"},
           "inputs": {"images_sha256": "ab" * 32, "truth_sha256": "", "init_sha256": "cd" * 32}}
    html = "\n".join(settings_html(run, "run.json")).split("Inputs (SHA-256")[1]
    assert "<td>images</td><td>/data/images.h5</td><td><code>" + "ab" * 8 + "</code>" in html
    assert "<td>init</td><td>/w/a.pth</td>" in html
    assert "<td>truth</td>" not in html  # no truth was given: no row


@pytest.mark.parametrize("affinity, says", [("lift", "class confusion"), ("confusion", "class confusion"),
                                            ("centroids", "mean features"), ("reports", "reports read most alike")])
def test_the_tree_says_what_it_was_built_from(affinity, says):
    from ldpo.stages.report.page import tree_html

    leaves = [{"id": f"L0-{c}", "level": 0, "index": c, "size": 3, "classes": [c], "children": []} for c in (0, 1)]
    tree = {"id": "L1-0", "level": 1, "index": 0, "size": 6, "classes": [0, 1], "children": leaves,
            "levels": [2, 1], "affinity": affinity}
    text = "\n".join(tree_html(tree, {}, None))
    assert says in text and ("class confusion" in text) == (affinity in ("lift", "confusion"))


# -- issue 18 item 6: agreement with DICOM header fields ---------------------------------------------------


def test_header_field_agreement_section(cli, tmp_path):
    work = small_work(tmp_path)
    r = cli("report", work, "--thumb", "16")
    assert r.code == 0, r.err
    assert "header fields" not in (work / "report/index.html").read_text()  # no fields file: no section, no link
    (work / "history.csv").write_text("iteration,k,nmi_prev,converged\n0,3,,0\n1,3,0.95,1\n")
    (work / "history.fields.csv").write_text(
        "iteration,field,values,coverage,nmi,purity\n"
        "0,modality,2,1,0.31234,0.7\n0,body_part,5,0.8,0.2,0.5\n"
        "1,modality,2,1,0.64512,0.9\n1,body_part,5,0.8,0.47,0.61\n"
        "2,modality,2,1,0.99,0.99\n")  # iteration 2 is not in the history (a restart left it): not shown
    r = cli("report", work, "--thumb", "16")
    assert r.code == 0, r.err
    page = parse(work / "report/index.html")
    check_self_contained(work / "report", page)
    html = (work / "report/index.html").read_text()
    assert '<h2 id="fields">Agreement with DICOM header fields</h2>' in html and 'href="#fields"' in html
    assert "0.645 against modality" in html  # the published anchor, to read the numbers by
    rows = [line for line in html.splitlines() if line.startswith('<tr class="fields">')]
    assert len(rows) == 2
    assert rows[1] == ('<tr class="fields"><td class="num">1</td><td class="num">0.645</td><td class="num">0.900</td>'
                       '<td class="num">0.470</td><td class="num">0.610</td></tr>')
    assert "body_part" in html and "80% of images" in html and "0.990" not in html

    (work / "history.fields.csv").write_text("iteration,field,values,coverage,nmi,purity\n0,modality,2,1,high,0.7\n")
    r = cli("report", work)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "history.fields.csv: line 2" in r.err
    (work / "history.fields.csv").write_text("iteration,field\n0,modality\n")
    r = cli("report", work)
    assert r.code == 2 and "history.fields.csv" in r.err and "missing values" in r.err


def test_categories_show_the_median_clustering_confidence_when_the_labels_carry_it():
    import numpy as np

    from ldpo.common.files.labels import Labels
    from ldpo.stages.report import gather
    from ldpo.stages.report.page import category_html

    labels = Labels(["a", "b", "c", "d"], np.array([0, 0, 1, 1]), {"confidence": ["0.9", "0.5", "0.2", "0.4"]})
    cats = gather(labels, None, None, 2, 1, "none")
    assert cats[0]["cluster_confidence"] == 0.7 and abs(cats[1]["cluster_confidence"] - 0.3) < 1e-9
    for cat in cats.values():
        for im in cat["typical"] + cat["atypical"]:
            im.update(src=f"thumbs/{im['id']}.png", w=64, h=64)
    assert "median clustering confidence 0.70" in "".join(category_html(cats[0], 4, 64))
    plain = gather(Labels(["a", "b"], np.array([0, 1])), None, None, 2, 1, "none")
    assert plain[0]["cluster_confidence"] is None
    for im in plain[0]["typical"] + plain[0]["atypical"]:
        im.update(src="x.png", w=64, h=64)
    assert "clustering confidence" not in "".join(category_html(plain[0], 2, 64))
