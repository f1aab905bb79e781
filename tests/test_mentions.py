"""ldpo.common.nlp.mentions: finding mentions with assertion status, and the text stages' --mentions option."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ldpo.common.errors import InputError
from ldpo.common.files.labels import write_labels
from ldpo.common.nlp.mentions import (affirmed_terms, affirmed_text, affirmed_texts, assertion_scores, find_mentions,
                                  find_mentions_many, keep_mentions, load_vocabulary, parse_vocabulary,
                                  predict_statuses, read_assertion_set)
from ldpo.common.files.stores import write_store

SENTENCES = Path(__file__).parent / "data" / "assertion_sentences.tsv"


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


def statuses(text, vocab):
    return {m.term: m.status for m in find_mentions(text, vocab)}


# -- the vocabulary ----------------------------------------------------------------------------


def test_default_vocabulary_has_canonical_terms_and_synonyms(vocab):
    assert len(vocab.terms) >= 80
    assert "pleural effusion" in vocab.terms and "pneumothorax" in vocab.terms
    assert vocab.canonical("Hydrothorax") == "pleural effusion"
    assert vocab.canonical("kidney stone") == "nephrolithiasis"
    assert len(set(vocab.terms)) == len(vocab.terms)


def test_vocabulary_file_format(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("# a comment\n\nPleural Effusion | hydrothorax\nmass, tumour,  growth \n\ncyst\n",
                    encoding="utf-8")
    v = load_vocabulary(str(path))
    assert v.terms == ("pleural effusion", "mass", "cyst")
    assert v.canonical("TUMOUR") == "mass" and v.canonical("growth") == "mass"
    found = find_mentions("Hydrothorax and a small growth. Two cysts.", v)
    assert [(m.term, m.text) for m in found] == [("pleural effusion", "Hydrothorax"), ("mass", "growth"),
                                                 ("cyst", "cysts")]


@pytest.mark.parametrize("content, message", [
    (None, "no such vocabulary file"),
    (b"# only comments\n\n  \n", "no terms"),
    ("effusion\nn\u00e9oplasie\n".encode("latin-1"), "not UTF-8"),
])
def test_bad_vocabulary_is_one_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as err:
        load_vocabulary(str(path))
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


# -- mentions ------------------------------------------------------------------------------------


def test_mentions_carry_canonical_term_offsets_and_status(vocab):
    text = "Small LEFT pleural effusions. No pneumothorax; cannot exclude pneumonia."
    found = find_mentions(text, vocab)
    assert [(m.term, m.status) for m in found] == [("pleural effusion", "affirmed"), ("pneumothorax", "negated"),
                                                   ("pneumonia", "uncertain")]
    assert all(text[m.start:m.end] == m.text for m in found)
    assert found[0].text == "pleural effusions"


@pytest.mark.parametrize("text, expected", [
    ("No pleural effusion.", {"pleural effusion": "negated"}),
    ("Without evidence of acute infiltrate.", {"infiltrate": "negated"}),
    ("The lungs are clear of focal airspace disease.", {"airspace disease": "negated"}),
    ("Cannot exclude ascending aortic aneurysm.", {"aortic aneurysm": "uncertain"}),
    ("Concern for pneumonia.", {"pneumonia": "uncertain"}),
    ("Findings suggesting metastases.", {"metastasis": "uncertain"}),
    ("No effusion but a small nodule.", {"effusion": "negated", "nodule": "affirmed"}),
    ("No effusion, pneumothorax or consolidation.", {"effusion": "negated", "pneumothorax": "negated",
                                                     "consolidation": "negated"}),
    ("Pneumonia has not been ruled out.", {"pneumonia": "uncertain"}),
    ("History of stroke.", {"infarct": "historical"}),
    ("Atelectasis versus pneumonia.", {"atelectasis": "uncertain", "pneumonia": "uncertain"}),
])
def test_the_issues_phrases(vocab, text, expected):
    assert statuses(text, vocab) == expected


def test_batch_equals_one_by_one_and_is_deterministic(vocab):
    texts = [r[0] for r in read_assertion_set(str(SENTENCES))][:60]
    batch = find_mentions_many(texts, vocab)
    assert batch == [find_mentions(t, vocab) for t in texts]
    assert batch == find_mentions_many(texts, vocab)


def test_affirmed_terms_and_text_drop_negated_scope(vocab):
    text = "No pleural effusion or acute infiltrate. Small nodule in the right lung, possibly a granuloma."
    assert affirmed_terms(text, vocab) == ["nodule"]
    kept = affirmed_text(text, vocab).lower()
    for gone in ("pleural", "effusion", "acute", "infiltrate", "granuloma"):
        assert gone not in kept, kept
    assert "small nodule in the right lung" in kept
    assert affirmed_text("Lungs are clear of focal airspace disease.", vocab) == "Lungs are"
    assert affirmed_texts(["Hepatic cyst.", ""], vocab) == ["Hepatic cyst.", ""]


def test_keep_mentions_keeps_the_mapping_type(vocab):
    from ldpo.common.nlp.reports import ReportTexts

    texts = ReportTexts(a="No pneumothorax. Large pleural effusion.", b="Normal.")
    texts.scrubbed = True
    kept = keep_mentions(texts, "affirmed", None, "reports.csv")
    assert isinstance(kept, ReportTexts) and kept.scrubbed
    assert "pneumothorax" not in kept["a"] and "pleural effusion" in kept["a"] and kept["b"] == "Normal."
    assert keep_mentions(texts, "all", None, "reports.csv") is texts


# -- the shipped sentence set ---------------------------------------------------------------------


def test_sentence_set_size_and_coverage(vocab):
    rows = read_assertion_set(str(SENTENCES))
    assert len({r[0] for r in rows}) >= 200
    counts = {s: sum(r[2] == s for r in rows) for s in ("affirmed", "negated", "uncertain")}
    assert min(counts.values()) >= 50, counts
    assert all(term in vocab.terms for _, term, _ in rows)  # every gold term is a canonical term


@pytest.mark.parametrize("part", [None, "heldout"])
def test_assertion_f1_at_least_090_per_status(vocab, part):
    rows = read_assertion_set(str(SENTENCES), part)
    scores = assertion_scores(rows, predict_statuses(rows, vocab))
    for status in ("affirmed", "negated", "uncertain"):
        assert scores[status]["f1"] >= 0.90, (part, status, scores[status])


# -- the stages' --mentions option -----------------------------------------------------------------


@pytest.fixture
def chest(tmp_path):
    """Two categories whose reports negate findings: 'pneumothorax' only ever appears negated."""
    reports = tmp_path / "reports.csv"
    rows = [("r1", "No pneumothorax. Large pleural effusion with atelectasis."),
            ("r2", "No pneumothorax. Pleural effusion is increasing."),
            ("r3", "No pneumothorax. Hepatic cyst and renal cyst."),
            ("r4", "Cannot exclude pneumothorax. Hepatic cyst in the liver.")]
    with open(reports, "w", newline="") as f:
        csv.writer(f).writerows([("report_id", "text"), *rows])
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "study", "patient", "series", "instance", "frame", "modality", "report_id", "sentence",
                    "context"])
        for i, (rid, text) in enumerate(rows):
            w.writerow([f"i{i}", "s", "p", 1, 1, 0, "CT", rid, text, text])
    labels = tmp_path / "labels.csv"
    write_labels(labels, ["i0", "i1", "i2", "i3"], [0, 0, 1, 1])
    images = tmp_path / "images.h5"
    write_store(images, ["i0", "i1", "i2", "i3"], {"stage": "test"}, images=np.zeros((4, 32, 32), np.uint8))
    return labels, manifest, reports, images


def keywords(folder: Path) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    with open(folder / "keywords.csv", newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(int(row["cluster"]), set()).add(row["word"])
    return out


def test_keywords_count_affirmed_mentions_only(cli, chest, tmp_path):
    labels, manifest, reports, images = chest
    base = ["keywords", labels, "--manifest", manifest, "--reports", reports, "--images", images, "-q"]
    assert cli(*base, "--out", tmp_path / "all", "--mentions", "all").code == 0
    assert cli(*base, "--out", tmp_path / "aff").code == 0
    everything, affirmed = keywords(tmp_path / "all"), keywords(tmp_path / "aff")
    # with all mentions 'pneumothorax' is in both categories and dropped as common; 'exclude' stays in 1
    assert "exclude" in everything[1] and "exclude" not in affirmed[1]
    assert "pneumothorax" not in affirmed[0] | affirmed[1]
    assert {"effusion", "pleural"} <= affirmed[0] and {"cyst", "hepatic"} <= affirmed[1]


def test_topic_label_and_hierarchy_take_the_option(cli, chest, tmp_path):
    labels, manifest, reports, images = chest
    r = cli("topic-label", reports, "--manifest", manifest, "--out", tmp_path / "l.csv", "--topics", "2",
            "--min-df", "1", "--max-df", "1.0", "--mentions", "affirmed", "-q")
    assert r.code == 0, r.err
    with open(tmp_path / "l.topics.csv", newline="") as f:
        words = {row["word"] for row in csv.DictReader(f)}
    assert "pneumothorax" not in words and "cyst" in words
    r = cli("hierarchy", images, labels, "--out", tmp_path / "t", "--vocabulary", tmp_path / "none.txt")
    assert r.code == 2 and "only --affinity reports uses it" in r.err, r.err


def test_bad_vocabulary_or_reports_exit_2_with_one_line(cli, chest, tmp_path):
    labels, manifest, reports, images = chest
    base = ["keywords", labels, "--manifest", manifest, "--reports", reports, "--images", images]
    empty, unrelated = tmp_path / "empty.txt", tmp_path / "unrelated.txt"
    empty.write_text("# nothing\n")
    unrelated.write_text("glioma\nmeningioma|meningeal tumour\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("report_id,text\nr1,No \u00e9panchement.\n".encode("latin-1"))
    cases = [([*base, "--vocabulary", empty, "--out", tmp_path / "o1"], str(empty), "no terms"),
             ([*base, "--vocabulary", unrelated, "--out", tmp_path / "o2"], str(unrelated), "none of its 2 terms"),
             (["keywords", labels, "--manifest", manifest, "--reports", latin, "--images", images,
               "--out", tmp_path / "o3"], str(latin), "UTF-8")]
    for argv, name, message in cases:
        r = cli(*argv)
        assert r.code == 2, r.err
        assert len(r.err.strip().splitlines()) == 1 and name in r.err and message in r.err, r.err
    r = cli("topic-label", reports, "--manifest", manifest, "--out", tmp_path / "l.csv", "--topics", "2",
            "--vocabulary", unrelated)
    assert r.code == 2 and str(unrelated) in r.err and len(r.err.strip().splitlines()) == 1


def test_vocabulary_parsing_without_a_file():
    v = parse_vocabulary(["a b|c", "c", "d"], "inline")
    assert v.terms == ("a b", "d")  # 'c' is already a spelling of 'a b'


def test_hierarchy_report_words_leave_out_negated_mentions(chest):
    from ldpo.stages.hierarchy import read_report_words

    labels, manifest, reports, _ = chest
    ids, row_class = ["i0", "i1", "i2", "i3"], np.array([0, 0, 1, 1])
    every, _ = read_report_words(str(reports), str(manifest), str(labels), ids, row_class, 2, "all")
    affirmed, incidence = read_report_words(str(reports), str(manifest), str(labels), ids, row_class, 2)
    assert incidence.shape == (2, 4)
    # 'pneumothorax' (4 reports) and 'exclude' (1) are counted only with all mentions
    assert every.shape[1] - affirmed.shape[1] == 2
    assert every.sum() - affirmed.sum() == 5
