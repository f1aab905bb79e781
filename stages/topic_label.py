"""``topic-label``: LDA topics of the radiology reports as initial image labels (Shin et al.).

Reports are ``extract-keyimages``' ``OUT/reports.csv``: its report ids are the
manifest's, and its text was scrubbed of patient identifiers with what the DICOM
headers of each patient's studies say. Any other reports (a CSV ``report_id,text`` or a
folder of ``.txt``) are scrubbed on reading by the same code's patterns only (dates,
phone numbers, MRN- and accession-like ids, titled and labelled names: see
:mod:`ldpo.common.nlp.phi`), which cannot find a name written without a title; a run on them
ends with a warning saying so. Nothing here ever sees raw report text. Reports are
cleaned with :mod:`ldpo.common.nlp.text` and modelled with gensim's LDA (``LdaModel``, or
``LdaMulticore`` with ``--workers`` > 1), trained on every report in REPORTS. Each
image of the manifest gets the dominant topic of its text: its whole report
(``--scope report``, the default), or the manifest's ``sentence`` / ``context`` for
that image (the model's θ inferred on that text; an image whose text has no usable
word falls back to its report's topic).

With ``--mentions affirmed`` (the default) every report and manifest text first loses its
negated and uncertain finding mentions and their scope (:mod:`ldpo.common.nlp.mentions`, terms
from ``--vocabulary``), so "no pneumothorax" adds no word to any topic; ``--mentions all``
models every word.

With a grid (``--topics 10,20,40,80``) K is chosen by document-completion perplexity
on an 80/20 split of the reports: fit on 80 %; for each held-out report infer θ from
a random half of its words and score the other half under θ·φ. The chosen K is the
first one whose relative decrease to the next K is below ``--flatten`` (the point
where the curve flattens, as Shin et al. did); the final model is then fit on all
reports. gensim's own ``log_perplexity`` is not used: on held-out documents it rises
with K almost always, so its minimum is the smallest K.

Outputs: LABELS (``id,label,topic_weight``; labels are topic numbers, only those
that occur), and side files named from it (``--out run/labels.csv``):
``run/labels.topics.csv`` (``topic,rank,word,weight``, rank from 1), and with a grid
``run/labels.perplexity.csv`` (``k,perplexity,relative_decrease,chosen``) and
``run/labels.perplexity.png``. They are written together (a failed run replaces none;
a run without a grid removes an older run's perplexity files). With ``--out -`` (labels
on stdout) the side files are ``topics.csv`` etc. in ``--model-dir``, or the current
folder. ``--model-dir`` also saves the gensim model (``lda.model`` and its
``lda.model.*`` side files) and ``lda.dictionary`` there.

K is bounded by the data: a K larger than the number of reports with usable words (or
than their distinct words) is refused before any fitting, since no report could be the
dominant one of the extra topics (``--topics 1000000`` on 10 reports would otherwise
run for many minutes and gigabytes). Every output is written straight into its own
temporary name (never a temporary of a temporary), so an interrupted run leaves at most
one hidden ``.NAME.tmp-*`` per output and no file that looks done.

Same inputs and ``--seed`` give the same files. With ``--workers`` > 1
(``LdaMulticore``) results stay seeded, but on corpora larger than one chunk (2000
reports) the order in which the workers' updates merge may vary between runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..common.cli import CommonOptions, Tool, opt, positional
from ..common.errors import InputError
from ..common.files.folders import Folder, check_output_folder, output_folder
from ..common.files.labels import write_labels
from ..common.nlp.mentions import MENTION_MODES, MENTIONS_HELP, VOCABULARY_HELP, keep_mentions, keep_mentions_list
from ..common.nlp.phi import RAW_REPORTS_HINT
from ..common.files.plots import pyplot
from ..common.files.stores import atomic_paths
from ..common.files.tables import side_file, write_csv
from ..common.nlp.text import Cleaner, missing_reports, read_manifest, read_reports, warn_raw_reports

log = logging.getLogger("ldpo")


@dataclass(kw_only=True)
class Options(CommonOptions):
    reports: str = positional("reports: extract-keyimages' OUT/reports.csv (scrubbed with the DICOM headers); any "
                              "other CSV with report_id,text columns or folder of .txt files is scrubbed on reading "
                              "by pattern only (names without a title stay: a warning says so)", role="input")
    manifest: str = opt("key-image manifest CSV (id,…,report_id,sentence,context)", role="input")
    out: str = opt("output labels CSV (OUT.topics.csv and OUT.perplexity.csv/.png are named from it)", role="output")
    topics: str = opt("number of topics K, or a comma-separated grid to choose from by perplexity (at most the "
                      "number of reports with usable words)", "80")
    scope: str = opt("text that labels an image", "report", choices=["report", "sentence", "context"])
    passes: int = opt("LDA passes over the corpus", 20, min=1)
    iterations: int = opt("LDA inference iterations per document", 100, min=1)
    flatten: float = opt("grid rule: choose the first K whose relative perplexity decrease to the next K is below this",
                         0.05, min=0, max=1)
    holdout: float = opt("fraction of reports held out to score the grid", 0.2, above=0, below=1)
    min_df: int = opt("drop words found in fewer reports than this", 2, min=1)
    max_df: float = opt("drop words found in more than this fraction of the reports (boilerplate)", 0.5, above=0,
                        max=1)
    stem: bool = opt("Porter-stem words", False)
    topic_words: int = opt("words per topic in the topics table", 20, min=1)
    model_dir: str = opt("folder to save the gensim model and dictionary in", "", role="output-folder")
    allow_missing: bool = opt("skip (instead of failing on) images whose report is missing or has no usable words",
                              False)
    mentions: str = opt(MENTIONS_HELP, "affirmed", choices=list(MENTION_MODES))
    vocabulary: str = opt(VOCABULARY_HELP, "", role="input")


def check_topics(opts: Options, grid: list[int], documents: int, vocabulary: int) -> None:
    """Refuse a K the data cannot support: more topics than reports with usable words, or than distinct words."""
    bound = min(documents, vocabulary)
    if grid[-1] > bound:
        what = (f"{documents} report(s) with usable words" if documents <= vocabulary
                else f"{vocabulary} distinct usable word(s)")
        raise InputError(f"--topics {opts.topics}: at most {bound} topics for the {what} in {opts.reports}")


def parse_grid(text: str) -> list[int]:
    try:
        grid = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise InputError(f"--topics {text!r}: give an integer or a comma-separated list of integers") from None
    if not grid or grid[0] < 2:
        raise InputError(f"--topics {text!r}: every K must be >= 2")
    return grid


# -- LDA --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lda:
    """How an LDA model is fitted (plain values: ``fit_lda(corpus, dictionary, 20, Lda(seed=1))``)."""
    passes: int = 20
    iterations: int = 100
    seed: int = 0
    workers: int = 0


def fit_lda(corpus: list, dictionary, k: int, lda: Lda):
    """An LDA model with K topics; deterministic for a seed (with ``workers`` <= 1)."""
    from gensim.models import LdaModel, LdaMulticore

    common = dict(corpus=corpus, id2word=dictionary, num_topics=k, passes=lda.passes,
                  iterations=lda.iterations, random_state=lda.seed, chunksize=2000, eval_every=None)
    if lda.workers > 1:
        return LdaMulticore(workers=lda.workers, **common)
    return LdaModel(**common)


def lda_of(opts: Options) -> Lda:
    return Lda(passes=opts.passes, iterations=opts.iterations, seed=opts.seed, workers=opts.workers)


def doc_topics(model, bows: list, chunk: int = 2000) -> np.ndarray:
    """θ ``[len(bows), K]``: each document's topic proportions."""
    out = np.zeros((len(bows), model.num_topics))
    for lo in range(0, len(bows), chunk):
        gamma, _ = model.inference(bows[lo:lo + chunk])
        out[lo:lo + chunk] = gamma / gamma.sum(axis=1, keepdims=True)
    return out


def completion_perplexity(model, docs: list[list[int]], rng: np.random.Generator) -> float:
    """Document-completion perplexity: θ from a random half of each doc, scored on the other half."""
    phi = model.get_topics()  # [K, V], rows sum to 1
    total_log, total_words = 0.0, 0
    for words in docs:
        if len(words) < 2:
            continue
        words = rng.permutation(np.asarray(words))
        half = len(words) // 2
        seen, hidden = words[:half], words[half:]
        theta = doc_topics(model, [sorted(Counter(seen.tolist()).items())])[0]
        p = theta @ phi[:, hidden]
        total_log += float(np.log(np.maximum(p, 1e-300)).sum())
        total_words += len(hidden)
    if total_words == 0:
        raise InputError("held-out reports have no words to score: use fewer topics or more reports")
    return float(np.exp(-total_log / total_words))


def relative_decrease(perplexity: list[float]) -> list[float]:
    """``(p[i] - p[i+1]) / p[i]`` for each K but the last (NaN there)."""
    p = np.asarray(perplexity, dtype=float)
    return [*((p[:-1] - p[1:]) / p[:-1]).tolist(), float("nan")]


def choose_k(grid: list[int], perplexity: list[float], flatten: float) -> int:
    """The first K whose relative decrease to the next K is below ``flatten`` (else the last K)."""
    for k, dec in zip(grid, relative_decrease(perplexity)):
        if dec < flatten:
            return k
    return grid[-1]


def grid_search(docs: list[list[str]], grid: list[int], lda: Lda, holdout: float, source: str = "reports"
                ) -> list[float]:
    """Completion perplexity of each K on a held-out split (``holdout``, a fraction) of ``docs``."""
    from gensim.corpora import Dictionary

    rng = np.random.default_rng(lda.seed)
    n_test = int(round(len(docs) * holdout))
    if n_test < 1 or len(docs) - n_test < 2:
        raise InputError(f"{source}: {len(docs)} reports are too few to choose K by held-out perplexity "
                         "(give one K)")
    order = rng.permutation(len(docs))
    train = [docs[i] for i in order[n_test:]]
    test = [docs[i] for i in order[:n_test]]
    dictionary = Dictionary(train)
    corpus = [dictionary.doc2bow(d) for d in train]
    test_ids = [[dictionary.token2id[w] for w in d if w in dictionary.token2id] for d in test]
    scores = []
    for k in grid:
        model = fit_lda(corpus, dictionary, k, lda)
        scores.append(completion_perplexity(model, test_ids, np.random.default_rng([lda.seed, k])))
        log.info("K=%d: held-out completion perplexity %.1f", k, scores[-1])
    return scores


# -- outputs ----------------------------------------------------------------------------


def side_files(opts: Options) -> dict[str, Path]:
    """The side files, named from ``--out`` (``labels.topics.csv``; ``topics.csv`` in the model folder for ``-``)."""
    tails = {"topics": "topics.csv", "perplexity": "perplexity.csv", "plot": "perplexity.png"}
    if opts.out == "-":
        folder = Path(opts.model_dir or ".")
        return {key: folder / tail for key, tail in tails.items()}
    return {key: side_file(opts.out, tail) for key, tail in tails.items()}


def write_into(tmp: Path, write: Callable[[str], None]) -> None:
    """``write("-")`` with stdout sent into ``tmp``, an output's temporary name: the CSV rules of
    :mod:`ldpo.common.files.tables` (``write_csv``/``write_labels`` to ``-``), but no temporary of the temporary, which a
    killed run would leave behind."""
    with open(tmp, "w", newline="", encoding="utf-8") as fh, contextlib.redirect_stdout(fh):
        write("-")


def write_topics(path: Path, model, cleaner: Cleaner, topn: int) -> None:
    rows = ([t, rank, cleaner.display(word), f"{weight:.6g}"]
            for t in range(model.num_topics) for rank, (word, weight) in enumerate(model.show_topic(t, topn), start=1))
    write_into(path, lambda target: write_csv(target, ["topic", "rank", "word", "weight"], rows))


def write_perplexity(table: Path, plot: Path, grid: list[int], scores: list[float], chosen: int,
                     flatten: float) -> None:
    decrease = relative_decrease(scores)
    rows = ([k, f"{p:.4f}", "" if np.isnan(d) else f"{d:.4f}", int(k == chosen)]
            for k, p, d in zip(grid, scores, decrease))
    write_into(table, lambda target: write_csv(target, ["k", "perplexity", "relative_decrease", "chosen"], rows))
    plot_perplexity(plot, grid, scores, decrease, chosen, flatten)


def plot_perplexity(path: Path, grid, scores, decrease, chosen: int, flatten: float) -> None:
    """The perplexity curve as a PNG written straight to ``path`` (an output's temporary name)."""
    plt = pyplot()

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    top.plot(grid, scores, "o-")
    top.axvline(chosen, color="tab:red", linestyle="--", label=f"chosen K = {chosen}")
    top.set_ylabel("held-out completion perplexity")
    top.legend()
    bottom.plot(grid[:-1], [d * 100 for d in decrease[:-1]], "s-", color="tab:green",
                label="decrease to the next K")
    bottom.axhline(flatten * 100, color="tab:red", linestyle=":", label=f"rule: first K below {flatten:.0%}")
    bottom.axvline(chosen, color="tab:red", linestyle="--")
    bottom.set_ylabel("relative decrease (%)")
    bottom.set_xlabel("number of topics K")
    bottom.set_xscale("log", base=2)
    bottom.set_xticks(grid, [str(k) for k in grid])
    bottom.legend()
    fig.suptitle("topic-label: choosing K where perplexity flattens")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=80, format="png")
    finally:
        plt.close(fig)


# -- the command ------------------------------------------------------------------------


class TopicLabelTool(Tool):
    name = "topic-label"
    description = ("Label key images by the dominant LDA topic of their reports (gensim); with a grid of K, "
                   "choose K by held-out document-completion perplexity. Writes LABELS (id,label,topic_weight) "
                   "and, named from it, LABELS.topics.csv and LABELS.perplexity.csv/.png.")
    example = ("topic-label keyimages/reports.csv --manifest keyimages/manifest.csv --out labels0.csv --topics 80\n"
               "topic-label keyimages/reports.csv --manifest keyimages/manifest.csv --out lda/labels.csv "
               "--topics 10,20,40,80 --seed 1")
    Options = Options

    def outputs(self, opts: Options) -> list[tuple[str, str]]:
        return super().outputs(opts) + [(f"--out ({key} table)", str(path)) for key, path in side_files(opts).items()]

    def main(self, opts: Options) -> int:
        from gensim.corpora import Dictionary

        logging.getLogger("gensim").setLevel(logging.INFO if opts.verbose else logging.ERROR)
        if opts.model_dir:  # before any work: the one rule of output folders
            check_output_folder(opts.model_dir, self.name)
        grid = parse_grid(opts.topics)
        cleaner = Cleaner(stem=opts.stem)
        reports = read_reports(opts.reports)
        need = () if opts.scope == "report" else (opts.scope,)
        manifest = read_manifest(opts.manifest, need=need)
        reports = keep_mentions(reports, opts.mentions, opts.vocabulary or None, opts.reports)
        report_ids = list(reports)
        docs = [cleaner.words(reports[r]) for r in report_ids]

        dictionary = Dictionary(docs)
        dictionary.filter_extremes(no_below=min(opts.min_df, max(1, len(docs) // 2)), no_above=opts.max_df,
                                   keep_n=None)
        docs = [[w for w in d if w in dictionary.token2id] for d in docs]
        usable = {r for r, d in zip(report_ids, docs) if d}
        skipped = self.check_missing(opts, manifest, reports, usable)
        if len(dictionary) == 0:
            raise InputError(f"{opts.reports}: no usable words in the reports")
        check_topics(opts, grid, len(usable), len(dictionary))

        chosen, scores = grid[0], None
        if len(grid) > 1:
            scores = grid_search([d for d in docs if d], grid, lda_of(opts), opts.holdout, opts.reports)
            chosen = choose_k(grid, scores, opts.flatten)
            log.info("chose K=%d (first K whose decrease to the next is below %.0f%%)", chosen, opts.flatten * 100)
        corpus = [dictionary.doc2bow(d) for d in docs]
        model = fit_lda(corpus, dictionary, chosen, lda_of(opts))
        theta = dict(zip(report_ids, doc_topics(model, corpus)))

        ids, labels, weights = self.assign(opts, manifest, theta, skipped, model, dictionary, cleaner)
        sides = side_files(opts)
        # Named from --out, an older run's perplexity files are ours to remove; fixed names (--out -) are not.
        finals = [sides["topics"]]
        if scores is not None or opts.out != "-":
            finals += [sides["perplexity"], sides["plot"]]
        extra = {"topic_weight": [f"{w:.4f}" for w in weights]}
        into_folder = [p.name for p in finals] if opts.out == "-" else []
        with (output_folder(opts.model_dir, self.name, into_folder) if opts.model_dir
              else contextlib.nullcontext()) as folder:
            with atomic_paths(*finals, *([] if opts.out == "-" else [opts.out])) as tmps:
                write_topics(tmps[0], model, cleaner, opts.topic_words)
                if scores is not None:
                    write_perplexity(tmps[1], tmps[2], grid, scores, chosen, opts.flatten)
                if opts.out == "-":
                    write_labels("-", ids, labels, extra)
                else:
                    write_into(tmps[-1], lambda target: write_labels(target, ids, labels, extra))
            if folder is not None:
                self.save_model(folder, model, dictionary)
        log.info("labelled %d images with %d of %d topics", len(ids), len(set(labels)), chosen)
        warn_raw_reports(opts.reports, reports)
        return 0

    def check_missing(self, opts: Options, manifest, reports: dict, usable: set[str]) -> set[str]:
        """Manifest ids without a report, or whose report has no usable word: error unless allowed."""
        absent = set(missing_reports(manifest, reports))
        empty = {i for i, r in zip(manifest.ids, manifest.column("report_id")) if r in reports and r not in usable}
        hint = "" if reports.scrubbed else RAW_REPORTS_HINT
        problems = ((absent, f"refer to no report in {opts.reports}{hint}"),
                    (empty, "have reports with no usable words"))
        for bad, what in problems:
            if bad and not opts.allow_missing:
                first = next(i for i in manifest.ids if i in bad)
                raise InputError(f"{opts.manifest}: {len(bad)} image(s) {what}, e.g. {first!r} "
                                 "(--allow-missing skips them)")
        if absent | empty:
            log.warning("skipping %d image(s) without a usable report", len(absent | empty))
        if len(absent | empty) == len(manifest.ids):
            raise InputError(f"{opts.manifest}: no image has a usable report in {opts.reports}")
        return absent | empty

    def assign(self, opts: Options, manifest, theta: dict, skipped: set[str], model, dictionary, cleaner):
        """Each image's dominant topic and its weight."""
        keep = [i for i, ident in enumerate(manifest.ids) if ident not in skipped]
        ids = [manifest.ids[i] for i in keep]
        dist = np.asarray([theta[manifest.rows[i]["report_id"]] for i in keep])
        if opts.scope != "report":
            texts = keep_mentions_list([manifest.rows[i][opts.scope] for i in keep], opts.mentions,
                                       opts.vocabulary or None, opts.manifest)
            bows = [dictionary.doc2bow(cleaner.words(t)) for t in texts]
            has_words = np.array([bool(b) for b in bows])
            if has_words.any():
                dist[has_words] = doc_topics(model, [b for b in bows if b])
            if (~has_words).any():
                log.info("%d image(s) have no usable word in their %s: labelled by their whole report",
                         int((~has_words).sum()), opts.scope)
        return ids, dist.argmax(axis=1), dist.max(axis=1)

    def save_model(self, folder: Folder, model, dictionary) -> None:
        """``lda.model`` (+ gensim's side files ``lda.model.*``) and ``lda.dictionary`` in ``folder``,
        each recorded in the folder's record before it is written there."""
        import os
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix=".lda-", dir=folder.path))
        try:
            folder.claim(tmp.name)
            model.save(str(tmp / "lda.model"))
            dictionary.save(str(tmp / "lda.dictionary"))
            made = sorted(tmp.iterdir())
            folder.claim(*(f.name for f in made))
            for f in made:
                os.replace(f, folder.path / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("saved the LDA model to %s", folder.path / "lda.model")


TOOL = TopicLabelTool
main = TopicLabelTool.console
