"""keywords: per-cluster words from reports, words common to all clusters dropped, HTML review sheet."""

from __future__ import annotations

import csv
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_topic_label import FILLER, REGIONS, read_csv, region_corpus

from ldpo.common.files.labels import read_labels, write_labels
from ldpo.common.files.stores import write_store

VOID = {"meta", "img", "br", "hr", "link", "input"}


class Sheet(HTMLParser):
    """Parses the review sheet, checking tags nest, and collects links, ids and text."""

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.anchors, self.ids, self.text = [], [], [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a" and "href" in attrs:
            self.anchors.append(attrs["href"])
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (self.stack, tag)
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse_sheet(folder: Path) -> Sheet:
    sheet = Sheet()
    sheet.feed((folder / "index.html").read_text(encoding="utf-8"))
    sheet.close()
    assert sheet.stack == [], sheet.stack
    return sheet


def images_store(path: Path, ids: list[str]) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (len(ids), 32, 32), dtype=np.uint8)
    write_store(path, ids, {"stage": "test"}, images=images)
    return path


def keyword_table(folder: Path) -> dict[int, list[str]]:
    words: dict[int, list[str]] = {}
    for row in read_csv(folder / "keywords.csv"):
        words.setdefault(int(row["cluster"]), []).append(row["word"])
    return words


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kw")
    reports, manifest, truth = region_corpus(folder, script_in="R-head-003")
    store = images_store(folder / "images.h5", list(truth))
    return reports, manifest, truth, store


def test_topic_label_then_keywords_name_each_region(cli, corpus, tmp_path):
    reports, manifest, truth, store = corpus
    labels = tmp_path / "labels.csv"
    assert cli("topic-label", reports, "--manifest", manifest, "--out", labels, "--topics", "5", "-q").code == 0
    out = tmp_path / "review"
    r = cli("keywords", labels, "--manifest", manifest, "--reports", reports, "--images", store, "--out", out, "-q")
    assert r.code == 0, r.err
    assert list(read_csv(out / "keywords.csv")[0]) == ["cluster", "rank", "word", "count"]
    words = keyword_table(out)
    lab = read_labels(labels).mapping()
    for region, vocab in REGIONS.items():
        cluster = Counter(lab[i] for i, reg in truth.items() if reg == region).most_common(1)[0][0]
        assert len(set(words[cluster]) & set(vocab)) >= 3, (region, words[cluster])
        assert len(words[cluster]) == 10
    every = set.intersection(*(set(w) for w in words.values()))
    assert not every  # nothing common to all clusters survives
    assert not any(any(ch.isdigit() for ch in w) for ws in words.values() for w in ws)


def test_review_sheet_parses_and_links_existing_images(cli, corpus, tmp_path):
    reports, manifest, truth, store = corpus
    regions = sorted(REGIONS)
    labels = tmp_path / "truth.csv"
    write_labels(labels, list(truth), [regions.index(r) for r in truth.values()])
    out = tmp_path / "review"
    r = cli("keywords", labels, "--manifest", manifest, "--reports", reports, "--images", store, "--out", out, "-q")
    assert r.code == 0, r.err
    sheet = parse_sheet(out)
    assert len(sheet.images) == len(REGIONS)
    for src in sheet.images:
        assert not Path(src).is_absolute() and "/" not in src
        assert (out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for href in sheet.anchors:
        assert href.startswith("#") and href[1:] in sheet.ids
    from PIL import Image

    sizes = Counter(truth.values())
    for c, region in enumerate(regions):  # a montage holds min(16, size) tiles of 96 px, 4 per row
        tiles = min(16, sizes[region])
        width, height = Image.open(out / f"montage-{c}.png").size
        assert (width, height) == (4 * 100 + 4, -(-tiles // 4) * 100 + 4)
        words = keyword_table(out)[c]
        assert len(set(words) & set(REGIONS[region])) >= 5, (region, words)
    assert not set(FILLER) & {w for ws in keyword_table(out).values() for w in ws}  # in every cluster: dropped
    assert f"{sizes['head']} image(s)" in " ".join(sheet.text)


def test_report_text_is_escaped(cli, corpus, tmp_path):
    reports, manifest, truth, store = corpus
    write_labels(tmp_path / "l.csv", list(truth), [0] * 5 + [1] * (len(truth) - 5))
    out = tmp_path / "review"
    r = cli("keywords", tmp_path / "l.csv", "--manifest", manifest, "--reports", reports, "--images", store,
            "--out", out, "--examples", "1000", "-q")
    assert r.code == 0, r.err
    page = (out / "index.html").read_text()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page
    assert "alert('x')" in " ".join(parse_sheet(out).text)


def write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "study", "patient", "series", "instance", "frame", "modality", "report_id", "sentence",
                         "context"])
        for ident, rid, sentence in rows:
            writer.writerow([ident, "s", "p", 1, 1, 0, "CT", rid, sentence, sentence])
    return path


@pytest.fixture
def tiny(tmp_path):
    """3 clusters; 'shared' is in all, 'bravo' in two; r1 is referenced by two images of cluster 0."""
    reports = tmp_path / "reports.csv"
    reports.write_text("report_id,text\n"
                       "r1,alpha alpha shared bravo on 2014-03-12 measuring 12 mm. Echo sentence here.\n"
                       "r2,charlie shared bravo bravo\n"
                       "r3,delta shared the of and 3.5cm Monday\n")
    manifest = write_manifest(tmp_path / "manifest.csv", [
        ("a", "r1", "alpha alpha shared bravo."), ("b", "r1", "alpha alpha shared bravo."),
        ("c", "r2", "charlie shared"), ("d", "r3", "delta shared")])
    labels = tmp_path / "labels.csv"
    write_labels(labels, ["a", "b", "c", "d"], [0, 0, 1, 2])
    store = images_store(tmp_path / "images.zarr", ["a", "b", "c", "d"])
    return labels, manifest, reports, store


def counts(folder: Path) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for row in read_csv(folder / "keywords.csv"):
        out.setdefault(int(row["cluster"]), {})[row["word"]] = int(row["count"])
    return out


def test_common_fraction_and_counting_rules(cli, tiny, tmp_path):
    labels, manifest, reports, store = tiny
    base = ["keywords", labels, "--manifest", manifest, "--reports", reports, "--images", store, "-q"]
    assert cli(*base, "--out", tmp_path / "all").code == 0
    assert cli(*base, "--out", tmp_path / "all").code == 0  # an earlier review sheet is replaced
    # r1 counted once for cluster 0 although two of its images are there; 'shared' is in every cluster
    assert counts(tmp_path / "all") == {0: {"alpha": 2, "bravo": 1, "echo": 1, "measuring": 1, "sentence": 1},
                                        1: {"bravo": 2, "charlie": 1}, 2: {"delta": 1}}
    assert cli(*base, "--out", tmp_path / "two-thirds", "--common-fraction", "0.6").code == 0
    assert counts(tmp_path / "two-thirds") == {0: {"alpha": 2, "echo": 1, "measuring": 1, "sentence": 1},
                                               1: {"charlie": 1},
                                               2: {"delta": 1}}
    assert cli(*base, "--out", tmp_path / "sentences", "--scope", "sentence", "--top", "1").code == 0
    assert counts(tmp_path / "sentences") == {0: {"alpha": 2}, 1: {"charlie": 1}, 2: {"delta": 1}}
    sheet = parse_sheet(tmp_path / "sentences")
    assert sorted(sheet.images) == ["montage-0.png", "montage-1.png", "montage-2.png"]


def test_stemmed_keywords_show_words(cli, tmp_path):
    reports = tmp_path / "reports.csv"
    reports.write_text("report_id,text\nr1,ventricles ventricle ventricles\nr2,lungs lung lungs\n")
    manifest = write_manifest(tmp_path / "m.csv", [("a", "r1", ""), ("b", "r2", "")])
    labels = tmp_path / "l.csv"
    write_labels(labels, ["a", "b"], [0, 1])
    store = images_store(tmp_path / "i.h5", ["a", "b"])
    r = cli("keywords", labels, "--manifest", manifest, "--reports", reports, "--images", store,
            "--out", tmp_path / "o", "--stem", "-q")
    assert r.code == 0, r.err
    assert counts(tmp_path / "o") == {0: {"ventricles": 3}, 1: {"lungs": 3}}


def test_missing_ids_are_one_line_errors_unless_allowed(cli, tiny, tmp_path):
    labels, manifest, reports, store = tiny
    more = tmp_path / "more.csv"
    write_labels(more, ["a", "b", "c", "d", "zz"], [0, 0, 1, 2, 2])
    base = ["--manifest", manifest, "--reports", reports, "--images", store]
    r = cli("keywords", more, *base, "--out", tmp_path / "o1")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1
    assert "1 id(s) not in the manifest" in r.err and "'zz'" in r.err and str(more) in r.err
    assert not (tmp_path / "o1").exists()
    fewer = tmp_path / "fewer.csv"
    write_labels(fewer, ["a", "b", "c"], [0, 0, 1])
    r = cli("keywords", fewer, *base, "--out", tmp_path / "o2")
    assert r.code == 2 and "have no label" in r.err and "'d'" in r.err
    # ids the manifest lacks are also missing from the store: --allow-missing accepts both
    r = cli("keywords", more, *base, "--out", tmp_path / "o3", "--allow-missing", "-q")
    assert r.code == 0, r.err
    assert parse_sheet(tmp_path / "o3").images == ["montage-0.png", "montage-1.png", "montage-2.png"]


def test_bad_inputs_exit_2_with_one_line(cli, tiny, tmp_path):
    labels, manifest, reports, store = tiny
    base = ["keywords", labels, "--manifest", manifest, "--reports", reports, "--images", store]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("mine")
    cases = [
        ([*base, "--out", busy], "thesis.tex"),
        (["keywords", labels, "--manifest", reports, "--reports", reports, "--images", store,
          "--out", tmp_path / "x"], "manifest"),
        ([*base[:-1], tmp_path / "nope.h5", "--out", tmp_path / "y"], "no such store"),
        ([*base, "--out", tmp_path / "z", "--common-fraction", "0"], "--common-fraction"),
    ]
    for argv, message in cases:
        r = cli(*argv)
        assert r.code == 2, argv
        assert len(r.err.strip().splitlines()) == 1 and message in r.err, r.err
    assert (busy / "thesis.tex").read_text() == "mine"


PACS_WORDS = {
    "head": {"brain", "cerebral", "intracranial", "hemorrhage", "ventricles", "matter", "white", "head"},
    "chest": {"lung", "lungs", "pleural", "effusion", "nodule", "pneumonia", "chest", "atelectasis", "pulmonary"},
    "abdomen": {"liver", "kidney", "hepatic", "spleen", "pancreas", "gallbladder", "abdomen", "renal"},
    "spine": {"disc", "lumbar", "spinal", "vertebral", "spine", "stenosis", "herniation", "canal"},
    "pelvis": {"bladder", "pelvis", "prostate", "uterus", "fibroid", "pubic", "hip", "urinary", "pelvic"},
}


def test_toy_pacs_end_to_end(cli, tmp_path):
    """toy-data pacs → extract-keyimages → topic-label → keywords: labels and words follow the body region.
    The text stages read extract-keyimages' scrubbed reports.csv (report ids are pseudonyms there)."""
    from ldpo.common.numerics.metrics import nmi
    from ldpo.stages.extract_keyimages.phi import Pseudonyms

    pacs, keys, review = tmp_path / "pacs", tmp_path / "keys", tmp_path / "review"
    assert cli("toy-data", "pacs", "--out", pacs, "--studies", "50", "--size", "32", "-q").code == 0
    r = cli("extract-keyimages", pacs / "dicom", "--reports", pacs / "reports.csv", "--out", keys, "--size", "32",
            "--salt", "test-salt-0123456789", "-q")
    assert r.code == 0, r.err
    labels = keys / "labels.csv"
    r = cli("topic-label", keys / "reports.csv", "--manifest", keys / "manifest.csv", "--out", labels,
            "--topics", "5", "-q")
    assert r.code == 0, r.err
    r = cli("keywords", labels, "--manifest", keys / "manifest.csv", "--reports", keys / "reports.csv",
            "--images", keys / "images.h5", "--out", review, "-q")
    assert r.code == 0, r.err

    key = Pseudonyms("test-salt-0123456789")
    accession = {key("report", row["report_id"], length=12): row["accession"] for row in read_csv(pacs / "reports.csv")}
    region_of = {row["accession"]: row["region"] for row in read_csv(pacs / "regions.csv")}
    report_of = {row["id"]: row["report_id"] for row in read_csv(keys / "manifest.csv")}
    lab = read_labels(labels)
    assert set(lab.ids) == set(report_of)
    truth = [region_of[accession[report_of[i]]] for i in lab.ids]
    regions = sorted(set(truth))
    assert len(regions) == 5
    score = nmi(lab.labels, np.array([regions.index(t) for t in truth]))
    assert score > 0.5, score
    words = keyword_table(review)
    mapping = lab.mapping()
    for region in regions:
        cluster = Counter(mapping[i] for i, t in zip(lab.ids, truth) if t == region).most_common(1)[0][0]
        assert len(set(words[cluster]) & PACS_WORDS[region]) >= 2, (region, words[cluster])
    sheet = parse_sheet(review)
    assert sheet.images and all((review / src).is_file() for src in sheet.images)
