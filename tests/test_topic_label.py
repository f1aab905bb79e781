"""topic-label: LDA labels from reports, K chosen by document-completion perplexity."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ldpo.common.files.labels import read_labels
from ldpo.common.numerics.metrics import nmi

REGIONS = {
    "head": "brain ventricles cerebral cortex hemorrhage infarct sulci cerebellum midline skull".split(),
    "chest": "lung pulmonary pleural effusion nodule mediastinum bronchial consolidation thorax airway".split(),
    "abdomen": "liver hepatic spleen pancreas kidney renal bowel gallbladder biliary peritoneal".split(),
    "spine": "vertebral disc lumbar cervical spinal foraminal stenosis herniation facet thecal".split(),
    "pelvis": "bladder uterus prostate ovary pelvic rectum iliac acetabulum sacrum adnexal".split(),
}
FILLER = ("findings impression comparison unchanged stable noted prior study evaluation technique "
          "contrast examination appearance mild moderate recommend clinical history").split()


def _sentence(rng: np.random.Generator, region: str, ref: str) -> str:
    own = rng.choice(REGIONS[region], 3, replace=False)
    other = rng.choice(REGIONS[rng.choice([r for r in REGIONS if r != region])])
    filler = rng.choice(FILLER, 3, replace=False)
    number = f"{rng.integers(2, 40)} mm" if rng.random() < 0.5 else f"{rng.integers(1, 9)}.{rng.integers(0, 9)}cm"
    date = f"{rng.integers(2010, 2024)}-{rng.integers(1, 12):02d}-{rng.integers(1, 28):02d}"
    words = [f"The {own[0]} shows {filler[0]} {own[1]}", f"measuring {number}",
             f"with {filler[1]} {own[2]}", f"and {other}" if rng.random() < 0.3 else "",
             f"since {date}", f"({ref})", f"{filler[2]}."]
    return " ".join(w for w in words if w)


def region_corpus(folder: Path, per_region: int = 16, seed: int = 0, script_in: str | None = None):
    """reports.csv (report_id,accession,text) and manifest.csv for the 5 regions.

    Returns (reports path, manifest path, {image id: region}). ``script_in`` puts a
    ``<script>`` tag into that report's text and sentence.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    reports, manifest, truth = [], [], {}
    for region in REGIONS:
        for j in range(per_region):
            rid = f"R-{region}-{j:03d}"
            refs = [(int(rng.integers(1, 9)), int(rng.integers(1, 80))) for _ in range(int(rng.integers(1, 4)))]
            sentences = [_sentence(rng, region, f"series {s}, image {i}") for s, i in refs]
            sentences.insert(1, _sentence(rng, region, "no image reference").replace("(no image reference)", ""))
            if rid == script_in:
                sentences[0] = "<script>alert('x')</script> " + sentences[0]
            reports.append([rid, f"ACC{len(reports):05d}", " ".join(sentences)])
            for n, (s, i) in enumerate(refs):
                index = n if n == 0 else n + 1
                ident = f"img-{region}-{j:03d}-{n}"
                context = " ".join(sentences[max(0, index - 1): index + 2])
                manifest.append([ident, f"st{j}", f"pt{j}", s, i, 0, "CT", rid, sentences[index], context])
                truth[ident] = region
    with open(folder / "reports.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["report_id", "accession", "text"], *reports])
    with open(folder / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "study", "patient", "series", "instance", "frame", "modality",
                                   "report_id", "sentence", "context"], *manifest])
    return folder / "reports.csv", folder / "manifest.csv", truth


def region_nmi(labels_path: Path, truth: dict[str, str]) -> float:
    lab = read_labels(labels_path)
    regions = sorted(REGIONS)
    return nmi(lab.labels, np.array([regions.index(truth[i]) for i in lab.ids]))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return region_corpus(tmp_path_factory.mktemp("regions"))


def test_labels_follow_regions_and_topics_name_them(cli, corpus, tmp_path):
    reports, manifest, truth = corpus
    out = tmp_path / "labels.csv"
    r = cli("topic-label", reports, "--manifest", manifest, "--out", out, "--topics", "5", "--seed", "1", "-q")
    assert r.code == 0, r.err
    lab = read_labels(out)
    assert set(lab.ids) == set(truth)
    assert set(lab.extra) == {"topic_weight"}
    score = region_nmi(out, truth)
    assert score > 0.5, score
    topics = read_csv(tmp_path / "labels.topics.csv")  # side files are named from --out
    assert list(topics[0]) == ["topic", "rank", "word", "weight"]
    top_words = {}
    for row in topics:
        if int(row["rank"]) <= 10:
            top_words.setdefault(int(row["topic"]), set()).add(row["word"])
    # every region's words lead some topic (LDA may merge two regions into one topic at times),
    # and no number or date became a word
    for region, words in REGIONS.items():
        assert max(len(ws & set(words)) for ws in top_words.values()) >= 2, region
    assert sum(max(len(ws & set(words)) for ws in top_words.values()) >= 4 for words in REGIONS.values()) >= 3
    assert not any(any(c.isdigit() for c in row["word"]) for row in topics)


def test_same_seed_same_labels(cli, corpus, tmp_path):
    reports, manifest, _ = corpus
    runs = []
    for name in ("a.csv", "b.csv"):
        r = cli("topic-label", reports, "--manifest", manifest, "--out", tmp_path / name, "--topics", "5",
                "--seed", "7", "--passes", "3", "-q")
        assert r.code == 0, r.err
        runs.append((tmp_path / name).read_text())
    assert runs[0] == runs[1]


@pytest.mark.parametrize("scope", ["sentence", "context"])
def test_sentence_scopes_also_follow_regions(cli, corpus, tmp_path, scope):
    reports, manifest, truth = corpus
    out = tmp_path / "labels.csv"
    r = cli("topic-label", reports, "--manifest", manifest, "--out", out, "--topics", "5", "--scope", scope,
            "--seed", "1", "--stem", "-q")
    assert r.code == 0, r.err
    score = region_nmi(out, truth)
    assert score > 0.5, score


def planted_corpus(folder: Path, topics: int = 4, docs: int = 160, words: int = 60, seed: int = 0):
    """Reports drawn from ``topics`` disjoint planted vocabularies (mostly one per report)."""
    rng = np.random.default_rng(seed)
    vocab = [[f"topic{chr(97 + t)}word{chr(97 + w // 26)}{chr(97 + w % 26)}" for w in range(30)] for t in range(topics)]
    rows, manifest = [], []
    for d in range(docs):
        mix = rng.dirichlet([0.1] * topics)
        counts = rng.multinomial(words, mix)
        text = " ".join(str(w) for t, c in enumerate(counts) for w in rng.choice(vocab[t], c))
        rows.append([f"d{d:04d}", text])
        manifest.append([f"i{d:04d}", f"d{d:04d}"])
    with open(folder / "reports.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["report_id", "text"], *rows])
    with open(folder / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "report_id"], *manifest])
    return folder / "reports.csv", folder / "manifest.csv"


def test_grid_picks_the_planted_number_of_topics(cli, tmp_path):
    reports, manifest = planted_corpus(tmp_path)
    out = tmp_path / "labels.csv"
    r = cli("topic-label", reports, "--manifest", manifest, "--out", out, "--topics", "2,4,8,16", "--seed", "0",
            "-q")
    assert r.code == 0, r.err
    table = read_csv(tmp_path / "labels.perplexity.csv")
    assert [int(row["k"]) for row in table] == [2, 4, 8, 16]
    chosen = [int(row["k"]) for row in table if row["chosen"] == "1"]
    assert chosen == [4], table
    perplexity = [float(row["perplexity"]) for row in table]
    assert perplexity[1] < 0.8 * perplexity[0]  # completion perplexity falls where topics are missing
    assert (tmp_path / "labels.perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(read_labels(out).classes) <= 4


def test_completion_perplexity_does_not_simply_rise_with_k(corpus):
    """gensim's log_perplexity bound grows with K on held-out documents; completion perplexity falls."""
    from gensim.corpora import Dictionary

    from ldpo.common.nlp.text import Cleaner, read_reports
    from ldpo.stages.topic_label import Options, completion_perplexity, fit_lda

    reports = read_reports(corpus[0])
    cleaner = Cleaner()
    docs = [cleaner.words(t) for t in reports.values()]
    train, test = docs[::5] + docs[1::5] + docs[2::5] + docs[3::5], docs[4::5]
    dictionary = Dictionary(train)
    corpus_bow = [dictionary.doc2bow(d) for d in train]
    test_ids = [[dictionary.token2id[w] for w in d if w in dictionary.token2id] for d in test]
    opts = Options(reports="", manifest="", out="", passes=5, seed=0)
    completion, bound = [], []
    for k in (2, 5):
        model = fit_lda(corpus_bow, dictionary, k, opts)
        completion.append(completion_perplexity(model, test_ids, np.random.default_rng(0)))
        bound.append(2 ** -model.log_perplexity([dictionary.doc2bow(d) for d in test]))
    assert completion[1] < completion[0], completion
    assert bound[1] > bound[0], bound  # the trap the issue measured


def test_choose_k_rule():
    from ldpo.stages.topic_label import choose_k, relative_decrease

    assert choose_k([2, 4, 8, 16], [100, 60, 58, 57], 0.05) == 4
    assert choose_k([2, 4, 8, 16], [100, 60, 50, 49], 0.05) == 8
    assert choose_k([2, 4, 8], [100, 80, 60], 0.05) == 8  # never flattens: the largest K
    assert choose_k([2, 4, 8], [100, 110, 90], 0.05) == 2  # a rise counts as flat
    assert relative_decrease([100, 50])[0] == 0.5


def test_missing_reports_are_an_error_unless_allowed(cli, corpus, tmp_path):
    reports, manifest, truth = corpus
    rows = read_csv(manifest)
    rows[3]["report_id"] = "no-such-report"
    rows[4]["report_id"] = ""
    bad = tmp_path / "manifest.csv"
    with open(bad, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "labels.csv"
    r = cli("topic-label", reports, "--manifest", bad, "--out", out, "--topics", "5")
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert lines[-1].startswith("topic-label: error:") and "2 image(s)" in lines[-1] and "manifest.csv" in lines[-1]
    assert not out.exists()
    r = cli("topic-label", reports, "--manifest", bad, "--out", out, "--topics", "5", "--allow-missing", "-q")
    assert r.code == 0, r.err
    assert len(read_labels(out)) == len(truth) - 2


def test_reports_from_a_folder_of_txt_files(cli, corpus, tmp_path):
    from ldpo.common.nlp.text import read_reports

    reports, manifest, truth = corpus
    folder = tmp_path / "reports"
    folder.mkdir()
    for rid, text in read_reports(reports).items():
        (folder / f"{rid}.txt").write_text(text)
    out = tmp_path / "labels.csv"
    r = cli("topic-label", folder, "--manifest", manifest, "--out", out, "--topics", "5", "--seed", "1",
            "--model-dir", tmp_path / "model", "-q")
    assert r.code == 0, r.err
    assert region_nmi(out, truth) > 0.5
    from gensim.models import LdaModel

    model = LdaModel.load(str(tmp_path / "model" / "lda.model"))
    assert model.num_topics == 5


@pytest.mark.parametrize("args, message", [
    (["--topics", "1"], "--topics"),
    (["--topics", "a,b"], "--topics"),
    (["--scope", "sentence", "--manifest-swap"], "manifest"),
])
def test_bad_input_is_one_line_and_exit_2(cli, corpus, tmp_path, args, message):
    reports, manifest, _ = corpus
    if "--manifest-swap" in args:  # a manifest without the sentence column
        plain = tmp_path / "m.csv"
        plain.write_text("id,report_id\nx,R-head-000\n")
        args = [a for a in args if a != "--manifest-swap"]
        manifest = plain
    r = cli("topic-label", reports, "--manifest", manifest, "--out", tmp_path / "l.csv", *args)
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and message in r.err and "Traceback" not in r.err


def test_unreadable_reports_name_the_file(cli, corpus, tmp_path):
    _, manifest, _ = corpus
    bad = tmp_path / "reports.csv"
    bad.write_text("id,body\n1,lung\n")
    r = cli("topic-label", bad, "--manifest", manifest, "--out", tmp_path / "l.csv")
    assert r.code == 2 and str(bad) in r.err and "report_id" in r.err
    assert len(r.err.strip().splitlines()) == 1
