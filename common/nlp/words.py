"""Word vectors and image → words targets (Shin et al., CVPR 2015, §5), shared by
``word-vectors``, ``finetune --vectors`` and ``describe``.

**Tokens.** Report text is cut into sentences (line breaks, and ``. ! ?`` before a space),
each sentence into :func:`ldpo.common.nlp.text.tokenize`'s lower-case tokens; the scrubber's
placeholders and other tools' de-identification marks (``XXXX``, ``[** … **]``, ``___``), numbers, measurements, dates and tokens with 3 or more digits are dropped
(as for keywords); stop words stay (skip-gram's sub-sampling of frequent words handles
them). With a vocabulary, every mention of a term or of one of its synonyms becomes one
token, the canonical term with ``_`` for spaces (:func:`term_token`: "pleural effusion",
"effusion, pleural" → ``pleural_effusion``), longest match first.

**The vectors file** (``VECTORS``): word2vec's text format, UTF-8: a first line ``COUNT
DIM``, then one line per token, ``token v1 … vDIM`` (space-separated decimals), most
frequent token first. gensim (``KeyedVectors.load_word2vec_format``), fastText and most
tools read it; :func:`read_vectors` is ldpo's one reader. Its SHA-256 is the file's identity
(a ``finetune --vectors`` checkpoint records it and ``describe`` checks it).

**The words-target file** (``finetune --vectors``' labels): CSV ``id,term_a,term_b``,
one row per bi-gram of an image (an image with several bi-grams has several rows and is
trained once per bi-gram; an image without a row is not trained on). Terms are tokens of
the vectors file (``pleural_effusion``). ``word-vectors --manifest M --targets T`` writes
it from each key image's report sentence and its two neighbours (the manifest's
``context``, else ``sentence``): the affirmed vocabulary terms there
(:func:`ldpo.common.nlp.mentions.affirmed_terms`: negated and uncertain mentions are left out),
in order of first mention, paired into every bi-gram ``(a, b)`` with a before b; an image
with a single term gets the bi-gram ``(a, a)``.

**Scaling** (the 512-unit sigmoid head regresses [0, 1] targets): per dimension, min-max
over every token of the vectors file, ``s = (v - lo) / (hi - lo)``; a predicted half
goes back with ``v = lo + s (hi - lo)`` before the cosine to the vocabulary terms
(:class:`Scaling`). The checkpoint records ``lo`` and ``hi``.

**Decoding** (:func:`describe`): each term's score is its best centred cosine to either
predicted half, plus ``prior_weight`` x the log of its share among the training images
(:func:`term_prior`; add-one smoothed). The cosine alone (Shin et al.'s decode,
``prior_weight`` 0) names the terms nearest the predicted vectors, which for an image whose
sentences mention several findings is an average of them; the prior says how often a term
is there at all, which the cosine cannot (a finding the images do not show, like sinusitis
on a head CT, is then named when it is common). ``finetune`` chooses the weight on its
validation split (:data:`PRIOR_WEIGHTS`) and records the prior and the weight.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..errors import InputError

log = logging.getLogger("ldpo")

WORDS_TARGET_COLUMNS = ("id", "term_a", "term_b")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")
_PARTS = re.compile(r"[./:]")


# -- tokens ---------------------------------------------------------------------------
def term_token(term: str) -> str:
    """A vocabulary term as one token: lower case, words joined by ``_`` ("Pleural effusion" → pleural_effusion)."""
    from .text import tokenize

    return "_".join(tokenize(term))


def phrase_table(vocab) -> dict[tuple[str, ...], str]:
    """``{surface tokens: canonical token}`` for every term and synonym of a vocabulary
    (:class:`ldpo.common.nlp.mentions.Vocabulary`)."""
    from .text import tokenize

    table: dict[tuple[str, ...], str] = {}
    for surface, canonical in vocabulary_forms(vocab):
        words = tuple(tokenize(surface))
        if words:
            table.setdefault(words, term_token(canonical))
    return table


def vocabulary_forms(vocab) -> list[tuple[str, str]]:
    """``(surface form, canonical term)`` of every spelling of ``vocab``'s terms and their simple plurals
    (the forms :mod:`ldpo.common.nlp.mentions` matches)."""
    from .mentions import plural_forms

    forms = [(t, t) for t in vocab.terms] + list(vocab.spellings)
    return forms + [(p, c) for s, c in forms for p in sorted(plural_forms(s))]


def keep_token(token: str) -> bool:
    from .text import is_date_like, is_number

    return (not is_number(token) and not is_date_like(token) and any(c.isalpha() for c in token)
            and sum(c.isdigit() for c in token) < 3)


def sentences(text: str) -> list[str]:
    """A report's sentences: line breaks, and ``. ! ?`` followed by white space."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s]


def sentence_tokens(sentence: str, phrases: dict[tuple[str, ...], str] | None = None,
                    longest: int = 0) -> list[str]:
    """The tokens of one sentence, vocabulary phrases joined (see the module doc)."""
    from .text import tokenize, without_marks

    raw = []
    for token in tokenize(without_marks(sentence)):
        if keep_token(token):  # "se:4", "lungs.clear" → se, 4 / lungs, clear (a number or date goes whole)
            raw.extend(p for p in (part.strip("'-") for part in _PARTS.split(token)) if p)
    if not phrases:
        return [t for t in raw if keep_token(t)]
    longest = longest or max(len(p) for p in phrases)
    out, i = [], 0
    while i < len(raw):
        for n in range(min(longest, len(raw) - i), 0, -1):
            hit = phrases.get(tuple(raw[i:i + n]))
            if hit is not None:
                out.append(hit)
                i += n
                break
        else:
            if keep_token(raw[i]):
                out.append(raw[i])
            i += 1
    return out


def corpus(texts: Iterable[str], phrases: dict[tuple[str, ...], str] | None = None) -> list[list[str]]:
    """Token lists, one per sentence of every text (empty sentences left out)."""
    longest = max((len(p) for p in phrases), default=0) if phrases else 0
    out = []
    for text in texts:
        for s in sentences(text):
            tokens = sentence_tokens(s, phrases, longest)
            if tokens:
                out.append(tokens)
    return out


# -- the vectors file -----------------------------------------------------------------
@dataclass
class Vectors:
    words: list[str]
    matrix: np.ndarray  # float32 [n, dim]
    checksum: str  # SHA-256 of the file
    path: str = ""

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def lookup(self, tokens: list[str]) -> np.ndarray:
        at = self.index()
        return self.matrix[[at[t] for t in tokens]]


def write_vectors(path: str, words: list[str], matrix: np.ndarray) -> None:
    """word2vec text format, atomically (see the module doc)."""
    from ..files.stores import atomic_path

    matrix = np.asarray(matrix, dtype=np.float32)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(f"{len(words)} {matrix.shape[1]}\n")
            for word, row in zip(words, matrix):
                fh.write(word + " " + " ".join(f"{v:.6g}" for v in row) + "\n")


def read_vectors(path: str) -> Vectors:
    """The vectors file (word2vec text format); a bad one is an :class:`InputError` naming it."""
    from ..files.stores import file_checksum
    from ..files.tables import read_text

    text = read_text(path, "vectors file")
    lines = text.splitlines()
    try:
        count, dim = (int(v) for v in lines[0].split())
    except (IndexError, ValueError):
        raise InputError(f"{path}: not a word2vec text vectors file (the first line must be 'COUNT DIM')") from None
    body = lines[1:]
    if count < 1 or len(body) != count:
        raise InputError(f"{path}: the header says {count} words, the file has {len(body)}")
    words, rows = [], np.empty((count, dim), dtype=np.float32)
    for i, line in enumerate(body):
        parts = line.rstrip().split(" ")
        if len(parts) != dim + 1:
            raise InputError(f"{path}: line {i + 2}: {len(parts) - 1} values, the header says {dim}")
        try:
            values = np.array([float(v) for v in parts[1:]], dtype=np.float64)
        except ValueError:
            raise InputError(f"{path}: line {i + 2}: a value that is not a number") from None
        if not np.isfinite(values).all() or (dim and np.abs(values).max() > np.finfo(np.float32).max):
            raise InputError(f"{path}: line {i + 2}: a value that is not finite or beyond float32's range "
                             f"(±{np.finfo(np.float32).max:.3g})")
        rows[i] = values  # in float32's range: no overflow
        words.append(parts[0])
    if not np.isfinite(rows).all():
        raise InputError(f"{path}: non-finite values")
    return Vectors(words, rows, file_checksum(path), str(path))


# -- scaling and targets --------------------------------------------------------------
@dataclass
class Scaling:
    """Per-dimension min-max scaling of word vectors into [0, 1] (see the module doc)."""

    lo: np.ndarray
    hi: np.ndarray
    kind: str = "minmax-per-dimension"

    @classmethod
    def fit(cls, matrix: np.ndarray) -> "Scaling":
        return cls(matrix.min(axis=0).astype(np.float32), matrix.max(axis=0).astype(np.float32))

    def span(self) -> np.ndarray:
        return np.maximum(self.hi - self.lo, 1e-12)

    def scale(self, v: np.ndarray) -> np.ndarray:
        return ((v - self.lo) / self.span()).astype(np.float32)

    def unscale(self, s: np.ndarray) -> np.ndarray:
        return (self.lo + s * self.span()).astype(np.float32)

    def state(self) -> dict:
        return {"kind": self.kind, "lo": [float(x) for x in self.lo], "hi": [float(x) for x in self.hi]}

    @classmethod
    def from_state(cls, state: dict) -> "Scaling":
        return cls(np.asarray(state["lo"], np.float32), np.asarray(state["hi"], np.float32), state["kind"])


def bigrams(terms: list[str]) -> list[tuple[str, str]]:
    """Every pair (a, b) of distinct terms with a before b; one term pairs with itself."""
    terms = list(dict.fromkeys(terms))
    if len(terms) == 1:
        return [(terms[0], terms[0])]
    return [(a, b) for i, a in enumerate(terms) for b in terms[i + 1:]]


def image_terms(text: str, vocab) -> list[str]:
    """The affirmed vocabulary terms of a key image's text, as tokens, in order of first mention."""
    from .mentions import affirmed_terms

    return list(dict.fromkeys(term_token(t) for t in affirmed_terms(text, vocab)))


def image_bigrams(text: str, vocab) -> list[tuple[str, str]]:
    """The bi-grams of a key image's text (see the module doc); none without an affirmed term."""
    terms = image_terms(text, vocab)
    return bigrams(terms) if terms else []


@dataclass
class WordsTarget:
    """A words-target file: parallel lists, one entry per bi-gram row."""

    ids: list[str]
    term_a: list[str]
    term_b: list[str]
    path: str = ""

    def terms(self) -> list[str]:
        return sorted(set(self.term_a) | set(self.term_b))


def write_words_target(path: str, rows: list[tuple[str, str, str]]) -> None:
    from ..files.tables import write_csv

    write_csv(path, WORDS_TARGET_COLUMNS, rows)


def read_words_target(path: str, vectors: Vectors | None = None) -> WordsTarget:
    """Read a words-target file; with ``vectors``, every term must be one of its tokens."""
    from ..files.tables import csv_rows

    ids, a, b = [], [], []
    known = set(vectors.words) if vectors is not None else None
    for line_no, row in csv_rows(path, "words-target CSV", WORDS_TARGET_COLUMNS):
        ident, ta, tb = row["id"].strip(), row["term_a"].strip(), row["term_b"].strip()
        if not ident or not ta or not tb:
            raise InputError(f"{path}: line {line_no}: empty id or term")
        if known is not None:
            for t in (ta, tb):
                if t not in known:
                    raise InputError(f"{path}: line {line_no}: term {t!r} has no vector in {vectors.path}")
        ids.append(ident)
        a.append(ta)
        b.append(tb)
    if not ids:
        raise InputError(f"{path}: no bi-grams in the words-target file (only a header)")
    return WordsTarget(ids, a, b, str(path))


def target_matrix(target: WordsTarget, vectors: Vectors, scaling: Scaling) -> np.ndarray:
    """float32 [rows, 2·dim]: each bi-gram's two scaled vectors, concatenated."""
    return np.concatenate([scaling.scale(vectors.lookup(target.term_a)),
                           scaling.scale(vectors.lookup(target.term_b))], axis=1)


# -- predictions → words --------------------------------------------------------------
#: the term-prior weights finetune tries on its validation split (the first best is kept)
PRIOR_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3)


def term_prior(image_terms: Iterable[list[str]], terms: list[str]) -> list[float]:
    """log of each term's share among the images (add-one smoothed over ``terms``)."""
    from collections import Counter

    images = [set(t) for t in image_terms if t]
    counts = Counter(t for found in images for t in found)
    return [float(np.log((counts[t] + 1) / (len(images) + len(terms)))) for t in terms]


def term_scores(outputs: np.ndarray, vectors: Vectors, scaling: Scaling, terms: list[str]) -> tuple[list[str], np.ndarray]:
    """``(candidates, scores [n, candidates])``: each term's best cosine to either predicted half of the head's
    sigmoid outputs [n, 2·dim] (unscaled); terms without a vector are left out. Halves and terms are first
    centred on the candidates' mean vector: word2vec vectors share a common direction, and without it the
    cosine favours the terms nearest that direction (docs/measurements.md has the toy PACS's figures)."""
    from ..numerics.features import l2_normalize

    at = vectors.index()
    cand = [c for c in terms if c in at]
    if not cand:
        return cand, np.zeros((len(outputs), 0), np.float32)
    matrix = vectors.matrix[[at[c] for c in cand]]
    centre = matrix.mean(axis=0) if len(cand) > 1 else np.zeros(matrix.shape[1], np.float32)
    unit = l2_normalize(matrix - centre).T
    dim = vectors.dim
    halves = [l2_normalize(scaling.unscale(outputs[:, k * dim:(k + 1) * dim]) - centre) @ unit for k in (0, 1)]
    return cand, np.maximum(*halves)


def describe(outputs: np.ndarray, vectors: Vectors, scaling: Scaling, terms: list[str], top: int,
             prior: dict[str, float] | None = None, prior_weight: float = 0.0) -> list[list[tuple[str, float]]]:
    """Per image, its ``top`` words, best first, with scores (see the module doc, Decoding): a term's best
    cosine to either predicted half, plus ``prior_weight`` x its log prior (``prior``: term → log share)."""
    cand, scores = term_scores(outputs, vectors, scaling, terms)
    if prior_weight and prior:
        floor = min(prior.values())
        scores = scores + prior_weight * np.array([prior.get(c, floor) for c in cand], np.float32)
    name_rank = np.argsort(np.argsort(np.array(cand, dtype=object)))  # ties: by term
    out = []
    for row in scores:
        best = np.lexsort((name_rank, -row))[:top]
        out.append([(cand[j], float(row[j])) for j in best])
    return out


def predict(model, images: str, rows: np.ndarray, preprocess, batch_size: int, workers: int, device: str,
            amp: bool = False, bar: bool = True) -> np.ndarray:
    """The model's sigmoid outputs [len(rows), units] for store ``rows`` (any order; returned in that order),
    through the one inference loop (:mod:`ldpo.common.images.inference`)."""
    import torch

    from ..images import imagedata
    from ..images.inference import infer

    rows = np.asarray(rows, dtype=np.int64)
    order = np.arange(len(rows))
    items = imagedata.subset_items(rows, order, imagedata.read_rows(images, batch_size), imagedata.chunk_rows(images))
    out: np.ndarray | None = None
    model.eval()
    for _, where, logits in infer(model, images, items, preprocess, batch=batch_size, workers=workers, device=device,
                                  amp=amp, desc="predict", show=bar):
        y = torch.sigmoid(logits.float()).cpu().numpy()
        if out is None:
            out = np.empty((len(rows), y.shape[1]), dtype=np.float32)
        out[where.cpu().numpy()] = y
    return out if out is not None else np.zeros((0, 0), np.float32)


def recall_at(predicted: list[list[str]], truth: list[list[str]], k: int = 5) -> float:
    """Mean over images with a true term of the share of its true terms among its first ``k`` predicted words."""
    scores = [len(set(p[:k]) & set(t)) / len(set(t)) for p, t in zip(predicted, truth) if t]
    return float(np.mean(scores)) if scores else float("nan")
