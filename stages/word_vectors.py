"""``word-vectors``: skip-gram word vectors of the reports, and the image → words targets.

Trains gensim's Word2Vec on the report sentences with the settings of Shin et al.
(CVPR 2015, §5) as defaults: skip-gram, 256 dimensions, hierarchical softmax (``hs=1``,
no negative sampling), a window of 10 words, frequent words sub-sampled at 1e-3
(word2vec's and the paper's threshold), 5 epochs (gensim's). ``--min-count`` (5, word2vec's
default) drops rare words, but never a vocabulary term: every term found at least once keeps
a vector. Tokens are :mod:`ldpo.common.nlp.words`' (each mention of a vocabulary term or of a
synonym becomes one token, ``pleural_effusion``). Reports are ``extract-keyimages``'
``reports.csv`` (``report_id,text``; read through the common scrubber like every text stage).

Writes ``--out``: word2vec text format (see :mod:`ldpo.common.nlp.words`). Prints, per
``--probe`` term, its nearest tokens by cosine (default: the 5 most frequent vocabulary terms).

With ``--manifest`` and ``--targets``, also writes the words-target file for
``finetune --vectors`` (``id,term_a,term_b``: the bi-grams of each key image's affirmed
terms in its sentence and the two around it; see :mod:`ldpo.common.nlp.words`).

One worker thread (``--workers`` 0 or 1) gives the same vectors for the same seed and
input, byte for byte; more threads are faster and not reproducible (gensim's threads
race on the shared weights, as in the original word2vec).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from ..common.cli import CommonOptions, Tool, opt, positional
from ..common.errors import InputError

log = logging.getLogger("ldpo")


@dataclass(kw_only=True)
class Options(CommonOptions):
    reports: str = positional("reports CSV (report_id,text), e.g. extract-keyimages' OUT/reports.csv", role="input")
    out: str = opt("output vectors file (word2vec text format)", role="output")
    vocabulary: Optional[str] = opt("disease/finding vocabulary, one term per line (synonyms allowed; default: "
                                    "ldpo's own list of common radiology findings)", None, role="input")
    dim: int = opt("vector dimensions", 256, min=2, max=4096)
    window: int = opt("context window (words each side)", 10, min=1, max=100)
    sample: float = opt("sub-sampling threshold of frequent words (0 = none)", 1e-3, min=0, max=1)
    min_count: int = opt("drop words seen fewer times (vocabulary terms are always kept)", 5, min=1)
    epochs: int = opt("passes over the sentences", 5, min=1, max=1000)
    negative: int = opt("negative samples (0 = hierarchical softmax only, the paper's setting)", 0, min=0, max=50)
    probe: Optional[str] = opt("comma-separated terms whose nearest words are printed (default: the 5 most "
                               "frequent vocabulary terms)", None)
    manifest: Optional[str] = opt("key-image manifest (id,…,report_id,sentence,context): with --targets, write "
                                  "the words-target file", None, role="input")
    targets: Optional[str] = opt("output words-target CSV (id,term_a,term_b) for finetune --vectors; needs "
                                 "--manifest", None, role="output")


class WordVectorsTool(Tool):
    name = "word-vectors"
    description = ("Train skip-gram word vectors (gensim Word2Vec, Shin et al.'s settings) on report text, "
                   "vocabulary terms as single tokens; print the nearest words of a few probe terms; optionally "
                   "write the image → words targets (bi-grams of affirmed terms) for finetune --vectors.")
    example = ("word-vectors keys/reports.csv --out vectors.txt\n"
               "word-vectors keys/reports.csv --out vectors.txt --vocabulary doid.txt --probe "
               "'pleural effusion,nodule'\n"
               "word-vectors keys/reports.csv --out vectors.txt --manifest keys/manifest.csv --targets words.csv")
    Options = Options

    def main(self, opts: Options) -> int:
        from ..common.nlp import words
        from ..common.nlp.mentions import load_vocabulary
        from ..common.nlp.text import read_reports, warn_raw_reports

        if (opts.manifest is None) != (opts.targets is None):
            raise InputError("--manifest and --targets go together (the targets are made from the manifest)")
        vocab = load_vocabulary(opts.vocabulary)
        where = opts.vocabulary or "the default vocabulary"
        if not vocab.terms:
            raise InputError(f"{where}: no terms in the vocabulary")
        texts = read_reports(opts.reports)
        phrases = words.phrase_table(vocab)
        sentences = words.corpus(texts.values(), phrases)
        terms = set(phrases.values())
        counts = Counter(t for s in sentences for t in s)
        found = sorted((t for t in terms if counts[t]), key=lambda t: (-counts[t], t))
        if not sentences:
            raise InputError(f"{opts.reports}: no words in the reports")
        if not found:
            raise InputError(f"{where}: none of its {len(vocab.terms)} terms occurs in {opts.reports}")
        kept = sum(1 for t, n in counts.items() if n >= opts.min_count or t in terms)
        if kept < 2:
            raise InputError(f"{opts.reports}: {kept} distinct word(s) seen {opts.min_count} times or more (or "
                             "vocabulary terms): word2vec needs two or more (more reports, or a lower --min-count)")
        log.info("word-vectors: %d reports, %d sentences, %d tokens; %d of %d vocabulary terms found", len(texts),
                 len(sentences), sum(counts.values()), len(found), len(terms))
        model = train(sentences, opts, terms)
        kv = model.wv
        words.write_vectors(opts.out, list(kv.index_to_key), kv.vectors)
        log.info("wrote %s: %d words x %d", opts.out, len(kv.index_to_key), kv.vector_size)
        print_probes(kv, probe_terms(opts.probe, found), found)
        if opts.manifest:
            write_targets(opts, vocab, set(kv.index_to_key))
        warn_raw_reports(opts.reports, texts)
        return 0


def train(sentences: list[list[str]], opts: Options, terms: set[str]):
    """gensim Word2Vec skip-gram (see the module doc); vocabulary terms survive --min-count."""
    from gensim.models import Word2Vec
    from gensim.utils import RULE_DEFAULT, RULE_KEEP

    def keep_terms(word, count, min_count):
        return RULE_KEEP if word in terms else RULE_DEFAULT

    threads = max(1, opts.workers)
    start = time.perf_counter()
    model = Word2Vec(sentences, vector_size=opts.dim, window=opts.window, sample=opts.sample,
                     min_count=opts.min_count, sg=1, hs=1 if opts.negative == 0 else 0, negative=opts.negative,
                     epochs=opts.epochs, seed=opts.seed, workers=threads, trim_rule=keep_terms)
    log.info("word2vec: %d epochs in %.1f s (%d thread%s)", opts.epochs, time.perf_counter() - start, threads,
             "" if threads == 1 else "s: not reproducible")
    return model


def probe_terms(text: str | None, found: list[str]) -> list[str]:
    from ..common.nlp.words import term_token

    if text is None:
        return found[:5]
    return [term_token(t) for t in text.split(",") if t.strip()]


def print_probes(kv, probes: list[str], terms: list[str], top: int = 5) -> None:
    """Per probe, its nearest words (any token) and nearest vocabulary terms."""
    for probe in probes:
        if probe not in kv.key_to_index:
            print(f"{probe}: not in the vectors")
            continue
        near = kv.most_similar(probe, topn=top)
        others = [t for t in terms if t != probe and t in kv.key_to_index]
        near_terms = sorted(((t, float(kv.similarity(probe, t))) for t in others), key=lambda kv_: -kv_[1])[:top]
        print(f"{probe}: " + ", ".join(f"{w} {s:.2f}" for w, s in near)
              + ("   | terms: " + ", ".join(f"{w} {s:.2f}" for w, s in near_terms) if near_terms else ""))


def write_targets(opts: Options, vocab, known: set[str]) -> None:
    """The words-target file: per key image, the bi-grams of the affirmed terms of its context."""
    from ..common.nlp.text import read_manifest
    from ..common.nlp.words import image_bigrams, write_words_target

    manifest = read_manifest(opts.manifest)
    rows, images = [], 0
    for ident, row in zip(manifest.ids, manifest.rows):
        pairs = [p for p in image_bigrams(row.get("context") or row.get("sentence", ""), vocab)
                 if p[0] in known and p[1] in known]
        images += bool(pairs)
        rows.extend((ident, a, b) for a, b in pairs)
    if not rows:
        raise InputError(f"{opts.manifest}: no key image has an affirmed vocabulary term in its sentence or context")
    write_words_target(opts.targets, rows)
    log.info("wrote %s: %d bi-grams of %d of %d key images (the others have no affirmed term)", opts.targets,
             len(rows), images, len(manifest.ids))


TOOL = WordVectorsTool
main = WordVectorsTool.console

if __name__ == "__main__":
    main()
