"""Benchmark for words from reports (issue 19): assertion status, negated keywords, image → words.

* ``f1_affirmed``, ``f1_negated``, ``f1_uncertain``: :mod:`ldpo.common.nlp.mentions` on the shipped
  sentence set ``tests/data/assertion_sentences.tsv`` (every part; ``--part dev|heldout`` for one).
* ``negated_share``: on the toy PACS (``toy-data pacs`` → ``extract-keyimages``; categories = the
  studies' body regions, the truth, so the figure does not depend on a clustering run) or on a real
  export (``--labels --manifest --reports --images``), ``keywords --top 10`` is run with
  ``--mentions all`` and ``--mentions affirmed``. A keyword is a *negated or uncertain term* of its
  category when more than half of its occurrences in that category's reports (each report once per
  category, as ``keywords`` counts them) are inside negated or uncertain vocabulary mentions (as
  :mod:`ldpo.common.nlp.mentions` finds them). The share is flagged keywords / all keywords, over all
  categories.
* ``recall5``, ``freq_baseline``, ``keyword_baseline``: image → words recall@5 on held-out reports'
  key images and its two baselines (:func:`recall_scores` says how).

Run:
  .venv/bin/python tests/bench/bench_words.py   (300 toy studies whose key images show their findings;
                                                --plain-images: only their body region)
  .venv/bin/python tests/bench/bench_words.py --labels L.csv --manifest M.csv --reports R.csv --images I.h5
The last line is ``words: f1_affirmed=A f1_negated=N f1_uncertain=U negated_share=S recall5=R
freq_baseline=F keyword_baseline=K`` (negated_share with ``--mentions affirmed``; the line before gives
``--mentions all``). The recall part trains two resnet18 models (``--topic-epochs``, ``--word-epochs``,
``--size``): about 5 min on the idle 2-core machine for the toy's 300 studies. Prints figures, asserts
nothing (not collected by pytest).
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from ldpo.common.nlp.mentions import (assertion_scores as score_rows, find_mentions_many, load_vocabulary,
                                  predict_statuses, read_assertion_set)

SENTENCES = Path(__file__).resolve().parents[1] / "data" / "assertion_sentences.tsv"


def assertion_scores(path: str | Path = SENTENCES, vocabulary: str | None = None,
                     part: str | None = None) -> dict[str, dict[str, float]]:
    """Per-status precision, recall, F1, support on the labelled sentence set."""
    vocab = load_vocabulary(vocabulary)
    rows = read_assertion_set(str(path), part)
    return score_rows(rows, predict_statuses(rows, vocab))


def _cli(*argv) -> None:
    from ldpo.stages import tool

    name, *rest = [str(a) for a in argv]
    code = tool(name)().run(rest + ["-q"])
    if code != 0:
        raise SystemExit(f"{name} exited {code}")


def toy_pacs(work: Path, studies: int, size: int, seed: int, show_findings: bool = True) -> dict[str, Path]:
    """toy-data pacs [--show-findings] → extract-keyimages; labels = each key image's body region (the truth).
    The reports are the same with or without ``--show-findings``; only the key images' pixels differ."""
    from ldpo.common.files.labels import write_labels
    from ldpo.stages.extract_keyimages.phi import Pseudonyms

    pacs, keys = work / "pacs", work / "keys"
    _cli("toy-data", "pacs", "--out", pacs, "--studies", studies, "--size", size, "--seed", seed,
         *(["--show-findings"] if show_findings else []))
    _cli("extract-keyimages", pacs / "dicom", "--reports", pacs / "reports.csv", "--out", keys, "--size", size,
         "--salt", "bench-salt-0123456789")
    key = Pseudonyms("bench-salt-0123456789")
    with open(pacs / "reports.csv", newline="") as f:
        accession = {key("report", r["report_id"], length=12): r["accession"] for r in csv.DictReader(f)}
    with open(pacs / "regions.csv", newline="") as f:
        region_of = {r["accession"]: r["region"] for r in csv.DictReader(f)}
    with open(keys / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    regions = sorted(set(region_of.values()))
    ids = [r["id"] for r in rows]
    labels = [regions.index(region_of[accession[r["report_id"]]]) for r in rows]
    write_labels(work / "regions.csv", ids, labels)
    print(f"toy PACS: {studies} studies, {len(ids)} key images{' showing their findings' if show_findings else ''}, "
          f"categories = regions {regions}")
    return {"labels": work / "regions.csv", "manifest": keys / "manifest.csv", "reports": keys / "reports.csv",
            "images": keys / "images.h5"}


def keyword_table(inputs: dict[str, Path], out: Path, mentions: str, vocabulary: str | None,
                  top: int = 10) -> dict[int, list[str]]:
    """``keywords --mentions MENTIONS``: each category's top words."""
    extra = ["--vocabulary", vocabulary] if vocabulary else []
    _cli("keywords", inputs["labels"], "--manifest", inputs["manifest"], "--reports", inputs["reports"],
         "--images", inputs["images"], "--out", out, "--top", top, "--mentions", mentions, "--allow-missing", *extra)
    table: dict[int, list[str]] = defaultdict(list)
    with open(out / "keywords.csv", newline="") as f:
        for row in csv.DictReader(f):
            table[int(row["cluster"])].append(row["word"])
    return dict(table)


def negated_words(inputs: dict[str, Path], vocabulary: str | None) -> dict[int, set[str]]:
    """Per category, the words that occur there more often inside negated or uncertain vocabulary
    mentions than anywhere else (each report counted once per category, as ``keywords`` counts)."""
    from ldpo.common.files.labels import read_labels
    from ldpo.common.nlp.text import Cleaner, read_manifest, read_reports

    vocab = load_vocabulary(vocabulary)
    labels = read_labels(str(inputs["labels"])).mapping()
    manifest = read_manifest(str(inputs["manifest"]))
    reports = read_reports(str(inputs["reports"]))
    per_category: dict[int, set[str]] = defaultdict(set)
    for ident, rid in zip(manifest.ids, (r["report_id"] for r in manifest.rows)):
        if ident in labels and rid in reports:
            per_category[labels[ident]].add(rid)
    used = sorted({r for rs in per_category.values() for r in rs})
    t0 = time.perf_counter()
    mentions = dict(zip(used, find_mentions_many([reports[r] for r in used], vocab)))
    took = time.perf_counter() - t0
    print(f"mentions: {len(used)} reports in {took:.1f} s ({len(used) / took:.0f} reports/s), "
          f"{sum(len(m) for m in mentions.values())} mentions")
    cleaner = Cleaner()
    words = {r: Counter(cleaner.words(reports[r])) for r in used}
    out = {}
    for category, rids in per_category.items():
        hedged, total = Counter(), Counter()
        for rid in rids:
            total.update(words[rid])
            for m in mentions[rid]:
                if m.status in ("negated", "uncertain"):
                    hedged.update(cleaner.words(m.text))
        out[category] = {w for w, n in hedged.items() if n / max(total[w], n) > 0.5}
    return out


def negated_share(keywords: dict[int, list[str]], flagged: dict[int, set[str]], show: bool = False) -> float:
    """Flagged keywords / all keywords, over all categories."""
    hits = {c: [w for w in ws if w in flagged.get(c, set())] for c, ws in keywords.items()}
    if show:
        for c, ws in sorted(keywords.items()):
            print(f"  category {c}: {', '.join(ws)}" + (f"   [negated/uncertain: {', '.join(hits[c])}]" if hits[c]
                                                        else ""))
    n = sum(len(ws) for ws in keywords.values())
    return sum(len(h) for h in hits.values()) / n if n else math.nan


def split_by_report(manifest, heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """Manifest row numbers of the training and held-out images: whole reports held out (seeded), so no
    sentence of a held-out image was trained on."""
    import numpy as np

    rids = sorted(set(manifest.column("report_id")))
    n_test = max(1, round(heldout * len(rids)))
    test = set(np.random.default_rng(seed).permutation(rids)[:n_test].tolist())
    rows = range(len(manifest.ids))
    return ([i for i in rows if manifest.rows[i]["report_id"] not in test],
            [i for i in rows if manifest.rows[i]["report_id"] in test])


def top_terms(images: list[list[str]], k: int = 5) -> list[str]:
    """The ``k`` terms most images have (ties by term)."""
    counts = Counter(t for terms in images for t in set(terms))
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def category_keywords(categories: dict[str, int], ids: list[str], terms: dict[str, list[str]],
                      k: int = 5) -> dict[int, list[str]]:
    """Per category, the ``k`` affirmed vocabulary terms most of its (training) images have: the
    category's keywords restricted to the vocabulary, so they can match an image's terms."""
    members: dict[int, list[list[str]]] = defaultdict(list)
    for ident in ids:
        if ident in categories:
            members[categories[ident]].append(terms[ident])
    return {c: top_terms(m, k) for c, m in members.items()}


def recall_scores(inputs: dict[str, Path] | None = None, work: Path | None = None, vocabulary: str | None = None,
                  seed: int = 0, size: int = 32, topic_epochs: int = 4, word_epochs: int = 16, k: int = 5,
                  heldout: float = 0.2, w2v_epochs: int = 20,
                  word_schedule: str = "cosine") -> tuple[float, float, float]:
    """recall@5 of each held-out image's affirmed report terms among its predicted words, and the same
    for two baselines: the 5 most frequent terms, and the image's category keywords. A held-out
    image's terms: the affirmed vocabulary terms of its sentence and the two around it (the words
    target's rule). Held out: 20% of the reports, whole (``split_by_report``). On the other 80%:
    ``word-vectors`` (and the words targets), ``topic-label`` → ``finetune`` (resnet18 from random
    init at ``size`` px: the topic model) → ``finetune --vectors --init checkpoint:topics`` (the
    words model), then ``describe`` on every image. Categories: ``cluster --k K`` (k-means) on the
    topic model's avgpool features (``featurize``) of every image, as one LDPO iteration makes them;
    their keywords are the vocabulary terms most of their training images have (:func:`category_keywords`).
    The line ``keyword baseline, given categories`` does the same with ``inputs["labels"]`` (on the toy
    PACS the true body regions)."""
    from ldpo.common.files.labels import read_labels
    from ldpo.common.nlp.mentions import find_mentions_many
    from ldpo.common.files.tables import write_csv
    from ldpo.common.nlp.text import read_manifest, read_reports
    from ldpo.common.nlp.words import recall_at, term_token

    work = Path(work or tempfile.mkdtemp(prefix="ldpo-recall-"))
    work.mkdir(parents=True, exist_ok=True)
    vocab = load_vocabulary(vocabulary)
    manifest = read_manifest(str(inputs["manifest"]))
    reports = read_reports(str(inputs["reports"]))
    train, test = split_by_report(manifest, heldout, seed)
    texts = [r.get("context") or r.get("sentence", "") for r in manifest.rows]
    found = find_mentions_many(texts, vocab)
    terms = {ident: list(dict.fromkeys(term_token(m.term) for m in ms if m.status == "affirmed"))
             for ident, ms in zip(manifest.ids, found)}
    train_ids, test_ids = [manifest.ids[i] for i in train], [manifest.ids[i] for i in test]
    columns = list(manifest.rows[0])
    write_csv(work / "train-manifest.csv", columns, ([manifest.rows[i].get(c, "") for c in columns] for i in train))
    train_reports = sorted({manifest.rows[i]["report_id"] for i in train} & set(reports))
    from ldpo.common.nlp.phi import SCRUBBED_COLUMN, SCRUBBED_MARK

    mark = SCRUBBED_MARK if reports.scrubbed else ""  # extract-keyimages' text stays marked as scrubbed
    write_csv(work / "train-reports.csv", ["report_id", "text", SCRUBBED_COLUMN],
              ((r, reports[r], mark) for r in train_reports))
    print(f"recall: {len(train_ids)} training images ({len(train_reports)} reports), {len(test_ids)} held out; "
          f"{sum(1 for i in test_ids if terms[i])} held-out images with an affirmed term")
    voc = ["--vocabulary", vocabulary] if vocabulary else []
    t0 = time.perf_counter()
    _cli("word-vectors", work / "train-reports.csv", "--out", work / "vectors.txt", "--manifest",
         work / "train-manifest.csv", "--targets", work / "words-target.csv", "--seed", seed, "--epochs",
         w2v_epochs, *voc)
    _cli("topic-label", work / "train-reports.csv", "--manifest", work / "train-manifest.csv", "--out",
         work / "topics.csv", "--topics", "10", "--seed", seed, "--no-progress", *voc)
    common = ["--input-size", size, "--batch-size", 32, "--seed", seed, "--no-progress", "--allow-missing",
              "--split", "90/10/0"]  # the held-out reports are the test split
    _cli("finetune", inputs["images"], work / "topics.csv", "--out", work / "topics.pt", "--init", "random",
         "--arch", "resnet18", "--epochs", topic_epochs, *common)
    _cli("finetune", inputs["images"], work / "words-target.csv", "--vectors", work / "vectors.txt", "--out",
         work / "words.pt", "--init", f"checkpoint:{work / 'topics.pt'}", "--epochs", word_epochs, "--schedule", word_schedule, *common)
    _cli("describe", inputs["images"], "--model", work / "words.pt", "--vectors", work / "vectors.txt", "--out",
         work / "words.csv", "--no-progress", *voc)
    _cli("featurize", inputs["images"], "--out", work / "features.h5", "--init", f"checkpoint:{work / 'topics.pt'}",
         "--layer", "avgpool", "--no-progress")
    _cli("cluster", work / "features.h5", "--out", work / "clusters.csv", "--k", k, "--seed", seed)
    print(f"recall: models and categories in {time.perf_counter() - t0:.0f} s")
    predicted: dict[str, list[str]] = defaultdict(list)
    with open(work / "words.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            predicted[row["id"]].append(row["word"])
    truth = [terms[i] for i in test_ids]
    recall5 = recall_at([predicted[i] for i in test_ids], truth, 5)
    frequent = top_terms([terms[i] for i in train_ids], 5)
    freq = recall_at([frequent] * len(test_ids), truth, 5)
    clusters = read_labels(str(work / "clusters.csv")).mapping()
    kw_of = category_keywords(clusters, train_ids, terms)
    keyword = recall_at([kw_of.get(clusters.get(i, -1), []) for i in test_ids], truth, 5)
    given = read_labels(str(inputs["labels"])).mapping()
    kw_given = category_keywords(given, train_ids, terms)
    keyword_given = recall_at([kw_given.get(given.get(i, -1), []) for i in test_ids], truth, 5)
    print(f"recall@5 held out: image → words {recall5:.3f}; most frequent terms ({', '.join(frequent)}) {freq:.3f}; "
          f"category keywords (cluster --k {k} on the topic model's features) {keyword:.3f}; keyword baseline, "
          f"given categories ({inputs['labels']}) {keyword_given:.3f}")
    return recall5, freq, keyword


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", default=str(SENTENCES), help="labelled sentence set (TSV)")
    ap.add_argument("--part", default=None, help="only this part of the sentence set (dev, heldout)")
    ap.add_argument("--vocabulary", default=None, help="vocabulary file (default: ldpo's list)")
    ap.add_argument("--studies", type=int, default=300, help="toy PACS studies")
    ap.add_argument("--size", type=int, default=32, help="toy PACS image size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plain-images", action="store_true", help="toy PACS without --show-findings: key images "
                    "show only their body region, not the findings their sentences name")
    ap.add_argument("--labels", help="a real export: labels CSV (categories)")
    ap.add_argument("--manifest", help="a real export: extract-keyimages' manifest.csv")
    ap.add_argument("--reports", help="a real export: extract-keyimages' reports.csv")
    ap.add_argument("--images", help="a real export: extract-keyimages' images store")
    ap.add_argument("--w2v-epochs", type=int, default=20, help="image → words: word2vec epochs (the toy's few "
                    "reports need more than word2vec's 5)")
    ap.add_argument("--topic-epochs", type=int, default=4, help="image → words: epochs of the topic model")
    ap.add_argument("--word-epochs", type=int, default=16, help="image → words: epochs of the words model")
    ap.add_argument("--word-schedule", default="cosine", choices=["constant", "cosine"],
                    help="image → words: finetune --schedule of the words model")
    ap.add_argument("--k", type=int, default=5, help="image → words: categories (cluster --k) of the keyword baseline")
    ap.add_argument("--work", help="keep the intermediate files here (default: a temporary folder)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    scores = assertion_scores(args.sentences, args.vocabulary, args.part)
    for status, s in scores.items():
        print(f"assertion {status:>10}: precision {s['precision']:.3f} recall {s['recall']:.3f} "
              f"F1 {s['f1']:.3f} (n={s['support']})")
    print(f"assertion scoring: {time.perf_counter() - t0:.1f} s")

    with tempfile.TemporaryDirectory(prefix="ldpo-bench-words-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        real = [args.labels, args.manifest, args.reports, args.images]
        if any(real) and not all(real):
            raise SystemExit("a real export needs --labels, --manifest, --reports and --images")
        inputs = ({"labels": Path(args.labels), "manifest": Path(args.manifest), "reports": Path(args.reports),
                   "images": Path(args.images)} if all(real) else toy_pacs(work, args.studies, args.size, args.seed,
                                                     not args.plain_images))
        flagged = negated_words(inputs, args.vocabulary)
        shares = {}
        for mode in ("all", "affirmed"):
            t0 = time.perf_counter()
            table = keyword_table(inputs, work / f"keywords-{mode}", mode, args.vocabulary)
            print(f"keywords --mentions {mode} ({time.perf_counter() - t0:.1f} s):")
            shares[mode] = negated_share(table, flagged, show=True)
            print(f"  negated/uncertain terms among the top-10 keywords: {shares[mode]:.1%}")
        recall5, freq, kw = recall_scores(inputs, work / "recall", args.vocabulary, args.seed, args.size,
                                          args.topic_epochs, args.word_epochs, args.k, w2v_epochs=args.w2v_epochs,
                                          word_schedule=args.word_schedule)
    print(f"negated_share: --mentions all {shares['all']:.4f}, affirmed {shares['affirmed']:.4f}")
    f1 = {s: scores.get(s, {}).get("f1", math.nan) for s in ("affirmed", "negated", "uncertain")}
    print(f"words: f1_affirmed={f1['affirmed']:.3f} f1_negated={f1['negated']:.3f} "
          f"f1_uncertain={f1['uncertain']:.3f} negated_share={shares['affirmed']:.4f} recall5={recall5:.3f} "
          f"freq_baseline={freq:.3f} keyword_baseline={kw:.3f}")


if __name__ == "__main__":
    main()
