"""``keywords``: the words of each image category's reports, and a static review sheet.

Per cluster of LABELS, words are counted over its images' text: each report once per
cluster (``--scope report``), or each distinct manifest sentence once per cluster
(``--scope sentence``). Words are cleaned by :mod:`ldpo.common.nlp.text` (stop words,
numbers, dates, tokens shorter than ``--min-length`` dropped; ``--stem`` shows each
stem as its most frequent word). A word found in at least ``--common-fraction`` of the
clusters is dropped from every cluster (the paper's rule; 1.0 = found in all of them).
With ``--mentions affirmed`` (the default) the counted text first loses every negated or
uncertain finding mention and its scope (:mod:`ldpo.common.nlp.mentions`, terms from
``--vocabulary``): "no pneumothorax" makes no keyword; ``--mentions all`` counts every word.

Reports are ``extract-keyimages``' ``OUT/reports.csv`` (report ids as in the manifest,
text scrubbed of patient identifiers with the DICOM headers of each patient's studies).
Any other reports (a CSV ``report_id,text`` or a folder of ``.txt``) are scrubbed on
reading by the same code's patterns only (:mod:`ldpo.common.nlp.phi`: dates, phone numbers,
MRN- and accession-like ids, titled and labelled names), which cannot find a name
written without a title; a run on them ends with a warning saying so. The manifest's
sentences pass through the same patterns. No word with 3 or more digits is a keyword.

Writes OUT (a folder, replaced as a whole when complete):

* ``keywords.csv``: ``cluster,rank,word,count`` (rank from 1, the top ``--top`` words);
* ``index.html``: a section per cluster (size, keyword table, example sentences, a
  montage of up to 16 sample images) that opens in a browser without a server;
* ``montage-<cluster>.png``: the montages, linked from the page by relative paths.
"""

from __future__ import annotations

import html
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.cli import CommonOptions, Tool, opt, positional
from ..common.errors import InputError
from ..common.files.labels import read_labels
from ..common.nlp.mentions import MENTION_MODES, MENTIONS_HELP, VOCABULARY_HELP, keep_mentions
from ..common.nlp.phi import RAW_REPORTS_HINT
from ..common.files.stores import atomic_path, open_store
from ..common.files.tables import write_csv
from ..common.nlp.text import Cleaner, Manifest, missing_reports, read_manifest, read_reports, warn_raw_reports

log = logging.getLogger("ldpo")

MONTAGE_SIZE = 16
THUMB = 96


@dataclass(kw_only=True)
class Options(CommonOptions):
    labels: str = positional("labels CSV (id,label)", role="input")
    manifest: str = opt("key-image manifest CSV (id,…,report_id,sentence,context)", role="input")
    reports: str = opt("reports: extract-keyimages' OUT/reports.csv (scrubbed with the DICOM headers); any other "
                       "CSV with report_id,text columns or folder of .txt files is scrubbed on reading by pattern only "
                       "(names without a title stay: a warning says so)", role="input")
    images: str = opt("images store (.h5/.zarr) for the montages", role="input")
    out: str = opt("output folder: keywords.csv, index.html, montage-*.png", role="output-folder")
    top: int = opt("keywords per cluster", 10, min=1)
    scope: str = opt("text counted per image", "report", choices=["report", "sentence"])
    common_fraction: float = opt("drop words found in at least this fraction of the clusters", 1.0, above=0, max=1)
    min_length: int = opt("drop words shorter than this", 3, min=1)
    stem: bool = opt("count Porter stems (shown as their most frequent word)", False)
    examples: int = opt("example sentences per cluster on the review sheet", 3, min=0)
    mentions: str = opt(MENTIONS_HELP, "affirmed", choices=list(MENTION_MODES))
    vocabulary: str = opt(VOCABULARY_HELP, "", role="input")
    allow_missing: bool = opt("allow label ids without manifest rows or reports (and manifest rows without labels)",
                              False)


# -- counting -----------------------------------------------------------------------


def cluster_texts(labels: dict[str, int], manifest: Manifest, reports: dict[str, str],
                  scope: str) -> dict[int, list[str]]:
    """Each cluster's distinct texts: its reports, or its images' sentences (each once)."""
    index = manifest.index()
    seen: dict[int, dict[tuple, str]] = {c: {} for c in sorted(set(labels.values()))}
    for ident, cluster in labels.items():
        row = index.get(ident)
        if row is None:
            continue
        rid = manifest.rows[row]["report_id"]
        if scope == "report":
            if rid in reports:
                seen[cluster].setdefault((rid,), reports[rid])
        else:
            sentence = manifest.rows[row].get("sentence", "")
            seen[cluster].setdefault((rid, sentence), sentence)
    return {c: list(texts.values()) for c, texts in seen.items()}


def mined_texts(texts: dict[int, list[str]], mentions: str, vocabulary: str | None, source: str
                ) -> dict[int, list[str]]:
    """Each cluster's texts as counted: with ``mentions`` affirmed, without negated/uncertain mentions."""
    flat = {(c, i): t for c, ts in texts.items() for i, t in enumerate(ts)}
    kept = keep_mentions(flat, mentions, vocabulary, source)
    return {c: [kept[(c, i)] for i in range(len(ts))] for c, ts in texts.items()}


def count_words(texts: dict[int, list[str]], cleaner: Cleaner) -> dict[int, Counter]:
    return {c: Counter(w for t in ts for w in cleaner.words(t)) for c, ts in texts.items()}


def drop_common(counts: dict[int, Counter], fraction: float) -> tuple[dict[int, Counter], set[str]]:
    """Remove words found in at least ``fraction`` of the clusters (none with a single cluster)."""
    if len(counts) < 2:
        return counts, set()
    presence = Counter(w for c in counts.values() for w in c)
    common = {w for w, n in presence.items() if n / len(counts) >= fraction}
    return {k: Counter({w: n for w, n in c.items() if w not in common}) for k, c in counts.items()}, common


def top_words(counts: Counter, top: int) -> list[tuple[str, int]]:
    """The ``top`` most counted words, ties by word."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]


# -- the review sheet ---------------------------------------------------------------


def montage(images: np.ndarray, path: Path) -> None:
    """Up to 16 images, 4 per row, as ``THUMB``-pixel grey or colour tiles in one PNG."""
    from PIL import Image

    n = len(images)
    cols = min(4, n)
    rows = -(-n // cols)
    mode = "RGB" if images.ndim == 4 else "L"
    sheet = Image.new(mode, (cols * (THUMB + 4) + 4, rows * (THUMB + 4) + 4), color=255 if mode == "L" else (255,) * 3)
    for i, img in enumerate(images):
        tile = Image.fromarray(img, mode=None).resize((THUMB, THUMB), Image.Resampling.BILINEAR)
        sheet.paste(tile, (4 + (i % cols) * (THUMB + 4), 4 + (i // cols) * (THUMB + 4)))
    sheet.save(path, format="PNG")


def sample_rows(ids: list[str], row_of: dict[str, int], seed: int, cluster: int) -> list[int]:
    """Store rows of up to 16 of a cluster's images, the same ones for the same seed."""
    have = sorted(row_of[i] for i in ids if i in row_of)
    if len(have) <= MONTAGE_SIZE:
        return have
    rng = np.random.default_rng([seed, cluster])
    return sorted(rng.choice(have, MONTAGE_SIZE, replace=False).tolist())


def page(title: str, sources: list[tuple[str, str]], sections: list[dict]) -> str:
    """The review sheet's HTML; every piece of text goes through ``html.escape``."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{e(title)}</title>",
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}section{margin-bottom:2.5em}"
           "blockquote{color:#444;margin:0.3em 1em}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>", "<ul>"]
    out += [f"<li>{e(name)}: <code>{e(value)}</code></li>" for name, value in sources]
    out += ["</ul>", "<table>", "<tr><th>cluster</th><th>images</th><th>keywords</th></tr>"]
    for s in sections:
        words = ", ".join(w for w, _ in s["words"])
        out.append(f'<tr><td><a href="#cluster-{s["cluster"]}">{s["cluster"]}</a></td><td>{s["size"]}</td>'
                   f"<td>{e(words)}</td></tr>")
    out.append("</table>")
    for s in sections:
        out += [f'<section id="cluster-{s["cluster"]}">', f"<h2>cluster {s['cluster']}</h2>",
                f"<p>{s['size']} image(s), {s['texts']} distinct text(s)</p>",
                "<table>", "<tr><th>rank</th><th>word</th><th>count</th></tr>"]
        out += [f"<tr><td>{r}</td><td>{e(w)}</td><td>{n}</td></tr>" for r, (w, n) in enumerate(s["words"], 1)]
        out.append("</table>")
        if s["examples"]:
            out.append("<h3>examples</h3>")
            out += [f"<blockquote>{e(t)}</blockquote>" for t in s["examples"]]
        if s["montage"]:
            out.append(f'<p><img src="{e(s["montage"])}" alt="{e("samples of cluster " + str(s["cluster"]))}"></p>')
        out.append("</section>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def examples(texts: list[str], n: int, limit: int = 400) -> list[str]:
    """The first ``n`` texts, shortened to ``limit`` characters."""
    return [t if len(t) <= limit else t[:limit] + "…" for t in texts[:n]]


# -- the command --------------------------------------------------------------------


class KeywordsTool(Tool):
    name = "keywords"
    description = ("Mine each category's keywords from its reports (words common to all categories removed) and "
                   "write keywords.csv plus a static HTML review sheet with image montages.")
    example = ("keywords labels.csv --manifest keyimages/manifest.csv --reports keyimages/reports.csv "
               "--images keyimages/images.h5 --out review/ --top 10")
    Options = Options

    def main(self, opts: Options) -> int:
        out = Path(opts.out)
        check_out(out)
        lab = read_labels(opts.labels)
        labels = lab.mapping()
        manifest = read_manifest(opts.manifest, need=("sentence",) if opts.scope == "sentence" else ())
        reports = read_reports(opts.reports)
        self.check_ids(opts, lab.ids, manifest, reports)
        with open_store(opts.images, expect="images") as store:
            row_of = {ident: i for i, ident in enumerate(store.ids)}
            absent = [i for i in lab.ids if i not in row_of]
            if absent and not opts.allow_missing:
                raise InputError(f"{opts.labels}: {len(absent)} id(s) not in {opts.images}, e.g. {absent[0]!r} "
                                 "(--allow-missing accepts this)")
            self.write(opts, out, labels, manifest, reports, store, row_of)
        warn_raw_reports(opts.reports, reports)
        return 0

    def write(self, opts: Options, out: Path, labels: dict[str, int], manifest: Manifest, reports: dict,
              store, row_of: dict[str, int]) -> None:
        cleaner = Cleaner(stem=opts.stem, min_length=opts.min_length)
        texts = cluster_texts(labels, manifest, reports, opts.scope)
        source = opts.reports if opts.scope == "report" else opts.manifest
        counted = count_words(mined_texts(texts, opts.mentions, opts.vocabulary or None, source), cleaner)
        counts, common = drop_common(counted, opts.common_fraction)
        if common:
            log.info("dropped %d word(s) found in >= %.0f%% of the clusters", len(common), opts.common_fraction * 100)
        members: dict[int, list[str]] = {}
        for ident, c in labels.items():
            members.setdefault(c, []).append(ident)
        sentences = example_sentences(labels, manifest)
        sections = []
        with atomic_path(out) as tmp:
            tmp.mkdir()
            for c in sorted(members):
                rows = sample_rows(members[c], row_of, opts.seed, c)
                if rows:
                    montage(store.take("images", np.asarray(rows)), tmp / f"montage-{c}.png")
                sections.append({
                    "cluster": c, "size": len(members[c]), "texts": len(texts[c]),
                    "montage": f"montage-{c}.png" if rows else "",
                    "words": [(cleaner.display(w), n) for w, n in top_words(counts[c], opts.top)],
                    "examples": examples(sentences.get(c) or texts[c], opts.examples),
                })
            write_keywords(tmp / "keywords.csv", sections)
            sources = [("labels", opts.labels), ("manifest", opts.manifest), ("reports", opts.reports),
                       ("images", opts.images), ("scope", opts.scope), ("mentions", opts.mentions),
                       ("vocabulary", opts.vocabulary or "default")]
            (tmp / "index.html").write_text(page("ldpo keywords: categories and their words", sources, sections),
                                            encoding="utf-8")
            from ..common.files.folders import write_record

            write_record(tmp, "keywords", os.listdir(tmp))
        log.info("wrote keywords of %d cluster(s) to %s", len(sections), out)

    def check_ids(self, opts: Options, label_ids: list[str], manifest: Manifest, reports: dict) -> None:
        """Label ids without manifest rows, manifest rows without labels, rows without reports."""
        in_manifest, labelled = set(manifest.ids), set(label_ids)
        problems = [
            (opts.labels, [i for i in label_ids if i not in in_manifest], f"not in the manifest {opts.manifest}"),
            (opts.manifest, [i for i in manifest.ids if i not in labelled], f"have no label in {opts.labels}"),
            (opts.manifest, [i for i in missing_reports(manifest, reports) if i in labelled],
             f"refer to no report in {opts.reports}"
             + ("" if reports.scrubbed else RAW_REPORTS_HINT)),
        ]
        for source, bad, what in problems:
            if bad and not opts.allow_missing:
                raise InputError(f"{source}: {len(bad)} id(s) {what}, e.g. {bad[0]!r} (--allow-missing accepts this)")
            if bad:
                log.warning("%d id(s) %s", len(bad), what)


def example_sentences(labels: dict[str, int], manifest: Manifest) -> dict[int, list[str]]:
    """Each cluster's distinct, non-empty manifest sentences, in manifest order."""
    found: dict[int, dict[str, None]] = {}
    for ident, row in zip(manifest.ids, manifest.rows):
        sentence = row.get("sentence", "").strip()
        if ident in labels and sentence:
            found.setdefault(labels[ident], {})[sentence] = None
    return {c: list(s) for c, s in found.items()}


def check_out(out: Path) -> None:
    """OUT is replaced as a whole: the one rule of output folders (:mod:`ldpo.common.files.folders`)."""
    from ..common.files.folders import check_output_folder

    check_output_folder(out, "keywords")


def write_keywords(path: Path, sections: list[dict]) -> None:
    write_csv(path, ["cluster", "rank", "word", "count"],
              ([s["cluster"], rank, word, n] for s in sections for rank, (word, n) in enumerate(s["words"], start=1)))


TOOL = KeywordsTool
main = KeywordsTool.console
