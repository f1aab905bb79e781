"""Finding and disease mentions in report text, each marked affirmed, negated, uncertain or historical.

The stage-2 report NLP of the method (Shin et al.; the GTC'17 talk): before keywords, topics or
word targets are mined from reports, mentions of findings that are negated ("no pleural
effusion", "clear of focal airspace disease") or uncertain ("cannot exclude pneumonia",
"may represent atelectasis") are ruled out.

* :func:`load_vocabulary` reads the term list (:class:`Vocabulary`); ``None`` is the project's
  default list of common radiology findings (``common/data/findings.txt``). File format: UTF-8,
  one term per line, synonyms on the same line separated by ``|`` or ``,`` (the first spelling is
  the canonical term), ``#`` starts a comment line, blank lines ignored. Multi-word terms are fine.
* :func:`find_mentions` / :func:`find_mentions_many` return :class:`Mention` s: the canonical
  term, the text as written, its character offsets and its status.
* :func:`affirmed_terms` and :func:`affirmed_text` (:func:`affirmed_texts` for many) are what the
  bag-of-words consumers (``keywords``, ``topic-label``, ``hierarchy``) use: the text with every
  negated or uncertain mention *and its scope* (from the cue to the end of its clause, or from
  the start of the clause to a following cue) removed.

Engine: negspacy's NegEx (a maintained spaCy component, no model download) over a blank English
spaCy pipeline (tokenizer + sentencizer), with the vocabulary as an ``entity_ruler`` of phrase
patterns matched on lower-case tokens (so case-insensitive; simple plurals are added). Three
NegEx passes with the cue lists below: negation, uncertainty, history. A mention is
*uncertain* if an uncertainty cue covers it (this includes double negations such as "cannot
exclude" and "not ruled out", which are pseudo-cues, never negations), else *negated* if a
negation cue covers it, else *historical* if a history cue covers it, else *affirmed*. A cue
covers the mentions after it (preceding cues) or before it (following cues) up to the end of
its clause: a sentence, or a part of one cut at a termination word ("but", "however", ";",
"there is" …). medspaCy's ConText (the field's standard) was the first choice: its 1.3.1 release
requires spaCy < 3.8 on Python < 3.12, i.e. thinc 8.2 and numpy < 2, which ldpo cannot take.

The pipeline is built once per vocabulary (cached) and texts are processed with ``nlp.pipe``; a text
longer than :data:`PIECE_CHARS` goes through it in pieces of whole sentences (NegEx's time is
quadratic in a text's length, its scopes end at sentence ends; see :func:`_pieces`).
Text passed here should already be scrubbed of patient identifiers (:mod:`ldpo.common.nlp.phi`);
this module adds nothing but vocabulary terms.

Why one module of this size (about 530 lines): the vocabulary, the NegEx pipeline built from it
and the reading of its verdicts are one rule for what a report affirms; every text stage uses it
whole.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError

__all__ = ["STATUSES", "Mention", "Vocabulary", "affirmed_terms", "affirmed_text", "affirmed_texts",
           "find_mentions", "find_mentions_many", "keep_mentions", "keep_mentions_list", "load_vocabulary",
           "parse_vocabulary", "require_coverage"]

#: every status a mention can have
STATUSES = ("affirmed", "negated", "uncertain", "historical")
#: the statuses the text consumers drop by default (``--mentions affirmed``)
DROPPED = frozenset({"negated", "uncertain"})

DEFAULT_VOCABULARY = "findings.txt"
_SEPARATORS = re.compile(r"[|,]")

# -- cue lists (NegEx termsets). Written for radiology reports; see the module doc. ----------

_TERMINATION = [
    "but", "however", "although", "though", "except", "aside from", "apart from", "yet",
    "nevertheless", "still", "which", "otherwise", ";", "there is", "there are", "there has been",
    "with interval", "whereas", "while", "though there is", "since", "as well as new", "now",
    "currently",
]

_NEGATION = {
    "pseudo_negations": [
        # double negations and comparisons: never negate
        "cannot exclude", "can not exclude", "can't exclude", "cannot be excluded", "can not be excluded",
        "not be excluded", "not excluded", "cannot rule out", "can not rule out", "can't rule out",
        "cannot be ruled out", "not ruled out", "not been ruled out", "not be ruled out",
        "not entirely excluded", "not completely excluded", "not rule out", "difficult to exclude",
        "no change", "no significant change", "no interval change", "no significant interval change",
        "no definite change", "no increase", "no substantial change", "not changed", "no further",
        "without change", "without interval change", "not only", "gram negative", "not necessarily",
        "not significantly changed", "not certain whether", "not certain if",
        "is not excluded", "are not excluded", "is not ruled out", "are not ruled out", "has not been ruled out",
        "have not been ruled out", "is not entirely excluded", "was not excluded", "were not excluded",
        "was not ruled out", "is not definitely excluded", "not definitely excluded",
    ],
    "preceding_negations": [
        "no", "not", "without", "absence of", "absent", "negative for", "free of", "clear of",
        "no evidence of", "no sign of", "no signs of", "without evidence of", "without signs of",
        "no findings of", "no findings to suggest", "no radiographic evidence of", "no ct evidence of",
        "rather than", "resolution of", "resolved", "interval resolution of", "never", "cannot see",
        "fails to reveal", "fails to demonstrate", "no suspicious", "there is no", "there are no",
        "neither", "nor", "ruled out", "negative", "none", "nothing to suggest",
        "no new", "no acute", "no residual", "removal of", "unremarkable for",
    ],
    "following_negations": [
        "is absent", "are absent", "absent", "is not seen", "are not seen", "not seen", "not identified",
        "not visualized", "not demonstrated", "not present", "is not present", "are not present",
        "was not", "were not", "is not", "are not", "unlikely", "is unlikely", "has resolved",
        "have resolved", "resolved", "is excluded", "is ruled out", "has been ruled out",
        "not appreciated", "not detected", "no longer seen", "no longer present", "no longer visualized",
        "not evident", "is gone", "has cleared",
    ],
    "termination": _TERMINATION,
}

_UNCERTAINTY = {
    "pseudo_negations": [
        # hedge words that, after a negation, do not make a finding uncertain
        "not suspicious for", "not concerning for", "no suspicious", "not suggestive of",
        "not suggesting", "nor suggestive of", "to suggest", "without suspicious", "no findings to suggest",
        "nothing to suggest", "no evidence to suggest", "no possible", "not likely",
        "likely unchanged", "possibly unchanged", "possibly related to", "probably related to",
    ],
    "preceding_negations": [
        "possible", "possibly", "probable", "probably", "likely", "questionable", "question of",
        "questioned", "suspicious for", "suspicious of", "suspicion of", "suspected", "suspect",
        "suspected of", "concern for", "concerning for", "worrisome for", "worrisome", "may represent",
        "may reflect", "may indicate", "may be", "might be", "might represent", "could represent",
        "could reflect", "could be", "can represent", "cannot exclude", "can not exclude", "can't exclude",
        "cannot rule out", "can not rule out", "can't rule out", "rule out", "r/o", "to exclude",
        "evaluate for", "evaluation for", "assess for", "versus", "vs", "vs.", "or less likely",
        "suggesting", "suggestive of", "suggests", "suggest", "raising the possibility of",
        "possibility of", "differential includes", "differential diagnosis includes",
        "differential considerations include", "equivocal", "equivocal for", "presumed", "presumably",
        "cannot be excluded", "favor", "favored", "may have",
        "not excluded", "uncertain", "difficult to exclude", "compatible with early",
        "? of", "query",
    ],
    "following_negations": [
        "cannot be excluded", "can not be excluded", "can't be excluded", "not excluded", "is not excluded",
        "cannot be entirely excluded", "can not be entirely excluded", "cannot be completely excluded",
        "cannot be definitely excluded",
        "cannot be ruled out", "can not be ruled out", "not ruled out", "not been ruled out",
        "not entirely excluded", "not completely excluded", "is possible", "are possible", "is suspected",
        "are suspected", "is questioned", "is likely", "are likely", "is favored", "is not excluded", "not be excluded", "is questionable", "is uncertain",
        "is a consideration", "is considered", "could be considered", "difficult to exclude",
        "would be difficult to exclude", "?", "or not", "not definitely excluded",
        # "versus"/"vs" after a mention are _ALTERNATIVE (the mention just before only), not here
    ],
    "termination": _TERMINATION,
}

_HISTORY = {
    "pseudo_negations": ["compared to prior", "compared with prior", "prior study", "prior exam",
                         "prior examination", "since prior", "from prior", "the prior", "previous study",
                         "previous exam", "previous examination", "the previous"],
    "preceding_negations": ["history of", "h/o", "hx of", "status post", "s/p", "prior history of",
                            "remote history of", "previous", "previously treated", "known history of",
                            "past medical history of"],
    "following_negations": ["in the past", "years ago", "previously treated", "post treatment"],
    "termination": _TERMINATION,
}

# -- the vocabulary --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    """The finding/disease terms: canonical ``terms`` (file order) and every spelling's canonical term."""

    terms: tuple[str, ...]
    spellings: tuple[tuple[str, str], ...]  # (lower-case spelling, canonical term), file order
    source: str = "the default vocabulary"

    def canonical(self, spelling: str) -> str | None:
        return dict(self.spellings).get(spelling.lower())

    def __len__(self) -> int:
        return len(self.terms)


def parse_vocabulary(lines: Iterable[str], source: str = "vocabulary") -> Vocabulary:
    """A :class:`Vocabulary` from lines in the file format (see the module doc)."""
    terms: list[str] = []
    spellings: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        names = [" ".join(n.split()) for n in _SEPARATORS.split(line)]
        names = [n for n in names if n]
        if not names:
            continue
        canonical = names[0].lower()
        if canonical in spellings:  # a spelling already given to another term: the first one keeps it
            continue
        terms.append(canonical)
        for name in names:
            spellings.setdefault(name.lower(), canonical)
    if not terms:
        raise InputError(f"{source}: the vocabulary has no terms (one term per line; synonyms separated by |)")
    return Vocabulary(tuple(terms), tuple(spellings.items()), source)


def load_vocabulary(path: str | None = None) -> Vocabulary:
    """The vocabulary in ``path`` (UTF-8 text), or the project's default list if ``path`` is None."""
    if path is None:
        text = resources.files("ldpo.common").joinpath("data", DEFAULT_VOCABULARY).read_text(encoding="utf-8")
        return parse_vocabulary(text.splitlines(), "the default vocabulary")
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such vocabulary file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: the vocabulary is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read the vocabulary ({err.strerror})") from None
    return parse_vocabulary(text.splitlines(), str(path))


def plural_forms(spelling: str) -> set[str]:
    """The spelling and simple plural/singular forms of its last word (cyst/cysts, opacity/opacities)."""
    head, _, last = spelling.rpartition(" ")
    forms = {last, last + "s", last + "es"}
    if last.endswith("y"):
        forms.add(last[:-1] + "ies")
    if last.endswith("is"):
        forms.add(last[:-2] + "es")  # metastasis → metastases
    if last.endswith("us"):
        forms.add(last[:-2] + "i")  # embolus → emboli
    if last.endswith("s") and len(last) > 3 and not last.endswith(("ss", "is", "us")):
        forms.add(last[:-1])
    return {f"{head} {f}".strip() for f in forms}


# -- the pipeline ----------------------------------------------------------------------------------

_EXT = {"negated": "ldpo_negated", "uncertain": "ldpo_uncertain", "historical": "ldpo_historical"}


@functools.lru_cache(maxsize=4)
def _pipeline(vocab: Vocabulary):
    import spacy
    import negspacy.negation  # noqa: F401  (registers the "negex" factory)

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER"})
    patterns, seen = [], set()
    for spelling, canonical in vocab.spellings:
        for form in sorted(plural_forms(spelling)):
            if form not in seen:
                seen.add(form)
                patterns.append({"label": "FINDING", "pattern": form, "id": canonical})
    ruler.add_patterns(patterns)
    for status, termset in (("negated", _NEGATION), ("uncertain", _UNCERTAINTY), ("historical", _HISTORY)):
        nlp.add_pipe("negex", name=_EXT[status], config={"neg_termset": termset, "extension_name": _EXT[status]})
    return nlp


@dataclass(frozen=True)
class Mention:
    """One mention: ``term`` (canonical), ``text`` as written, ``start``/``end`` character offsets, ``status``."""

    term: str
    text: str
    start: int
    end: int
    status: str


def _status(span) -> str:
    """The status from the three NegEx flags (before :func:`_resolve` settles negated-and-uncertain)."""
    if span._.get(_EXT["uncertain"]):
        return "uncertain"
    if span._.get(_EXT["negated"]):
        return "negated"
    if span._.get(_EXT["historical"]):
        return "historical"
    return "affirmed"


def _nearest_cue(negex, doc, span) -> int:
    """Token distance from ``span`` to the nearest cue of ``negex`` in its clause that covers it."""
    preceding, following, terminating = negex.process_negations(doc)
    for lo, hi in negex.termination_boundaries(doc, terminating):
        if lo <= span.start < hi:
            before = [span.start - e for _, s, e in preceding if lo <= s < span.start]
            after = [s - span.end for _, s, e in following if span.end <= s < hi]
            return min(before + after, default=len(doc))
    return len(doc)


#: "A versus B": A is uncertain too (only the mention right before the word)
_ALTERNATIVE = frozenset({"versus", "vs", "vs."})


def _before_alternative(doc, span) -> bool:
    nxt = doc[span.end:span.end + 2]
    return any(t.lower_ in _ALTERNATIVE for t in nxt)


def _resolve(nlp, doc) -> list[str]:
    """Each entity's status; a mention both negated and uncertain takes the nearer cue's status."""
    out = []
    for e in doc.ents:
        status = _status(e)
        if status == "affirmed" and _before_alternative(doc, e):
            status = "uncertain"
        if status == "uncertain" and e._.get(_EXT["negated"]):
            neg = _nearest_cue(nlp.get_pipe(_EXT["negated"]), doc, e)
            unc = _nearest_cue(nlp.get_pipe(_EXT["uncertain"]), doc, e)
            status = "negated" if neg < unc else "uncertain"
        out.append(status)
    return out


def _doc_mentions(nlp, pieces) -> list[Mention]:
    return [Mention(e.ent_id_, e.text, offset + e.start_char, offset + e.end_char, status)
            for offset, doc in pieces for e, status in zip(doc.ents, _resolve(nlp, doc))]


#: a text longer than this many characters goes through NegEx in pieces of about this size, cut at sentence
#: ends (see :func:`_pieces`)
PIECE_CHARS = 4000


@functools.lru_cache(maxsize=1)
def _splitter():
    """The tokenizer and sentencizer of :func:`_pipeline` alone (to cut long texts at its sentence ends)."""
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


def _pieces(text: str, size: int | None = None) -> list[tuple[int, str]]:
    """``(offset, piece)`` that make up ``text``: the text itself when it has ``size`` characters or fewer, else
    runs of whole sentences of about ``size`` characters (a longer sentence is cut between tokens).

    Why: negspacy's NegEx reads ``doc.ents`` once per clause, i.e. time in clauses × tokens, quadratic in the
    length of a text (a 200 KB report took a minute); its scopes never cross a sentence end, so pieces of
    whole sentences give the statuses of the whole text, in time linear in its length."""
    size = size or PIECE_CHARS
    if len(text) <= size:
        return [(0, text)]
    cuts = []
    for sent in _splitter()(text).sents:
        cuts.append(sent.start_char)
        if sent.end_char - sent.start_char > size:  # a sentence longer than a piece: any token may start one
            cuts.extend(t.idx for t in sent[1:])
    pieces, begin, last = [], 0, 0
    for cut in cuts[1:] + [len(text)]:
        if cut - begin > size and last > begin:
            pieces.append((begin, text[begin:last]))
            begin = last
        last = cut
    pieces.append((begin, text[begin:]))
    return pieces


def _docs(texts: Sequence[str], vocab: Vocabulary, batch_size: int = 256):
    """Per text, its ``[(offset, doc), …]`` of :func:`_pieces` (one ``nlp.pipe`` pass over all pieces)."""
    pieces = [_pieces(t or "") for t in texts]
    docs = iter(_pipeline(vocab).pipe((p for ps in pieces for _, p in ps), batch_size=batch_size))
    for ps in pieces:
        yield [(offset, next(docs)) for offset, _ in ps]


def find_mentions(text: str, vocab: Vocabulary) -> list[Mention]:
    """Every vocabulary mention in ``text``, in order, with its status."""
    return find_mentions_many([text], vocab)[0]


def find_mentions_many(texts: Sequence[str], vocab: Vocabulary, batch_size: int = 256) -> list[list[Mention]]:
    """:func:`find_mentions` for many texts (one ``nlp.pipe`` pass)."""
    nlp = _pipeline(vocab)
    return [_doc_mentions(nlp, pieces) for pieces in _docs(texts, vocab, batch_size)]


def affirmed_terms(text: str, vocab: Vocabulary) -> list[str]:
    """The canonical terms of the affirmed mentions in ``text``, in order, without repeats."""
    return list(dict.fromkeys(m.term for m in find_mentions(text, vocab) if m.status == "affirmed"))


def _cue_scopes(nlp, doc, dropped) -> list[tuple[int, int]]:
    """Token ranges to drop: for each dropped mention, its scope from the cue that covers it."""
    scopes = []
    for status in ("negated", "uncertain"):
        negex = nlp.get_pipe(_EXT[status])
        preceding, following, terminating = negex.process_negations(doc)
        for lo, hi in negex.termination_boundaries(doc, terminating):
            ents = [e for e, s in dropped if lo <= e.start and e.end <= hi and s == status]
            if not ents:
                continue
            first, last = min(e.start for e in ents), max(e.end for e in ents)
            pre = [s for _, s, _ in preceding if lo <= s < first]
            fol = [e for _, s, e in following if last <= s < hi]
            if pre:
                scopes.append((min(pre), hi))
            if fol:
                scopes.append((lo, max(fol)))
    return scopes


def _drop(nlp, pieces, drop: frozenset[str]) -> str:
    return "".join(_drop_piece(nlp, doc, drop) for _, doc in pieces).strip()


def _drop_piece(nlp, doc, drop: frozenset[str]) -> str:
    statuses = list(zip(doc.ents, _resolve(nlp, doc)))
    dropped = [(e, s) for e, s in statuses if s in drop]
    if not dropped:
        return doc.text
    gone = set()
    for lo, hi in _cue_scopes(nlp, doc, dropped) + [(e.start, e.end) for e, _ in dropped]:
        gone.update(range(lo, hi))
    gone -= {i for e, s in statuses if s not in drop for i in range(e.start, e.end)}
    return "".join(t.whitespace_ if t.i in gone else t.text_with_ws for t in doc)


def affirmed_text(text: str, vocab: Vocabulary, drop: Iterable[str] = DROPPED) -> str:
    """``text`` without its negated and uncertain mentions and their scopes (the cue to the clause end)."""
    return affirmed_texts([text], vocab, drop)[0]


def affirmed_texts(texts: Sequence[str], vocab: Vocabulary, drop: Iterable[str] = DROPPED,
                   batch_size: int = 256) -> list[str]:
    """:func:`affirmed_text` for many texts (one ``nlp.pipe`` pass)."""
    drop = frozenset(drop)
    nlp = _pipeline(vocab)
    return [_drop(nlp, pieces, drop) for pieces in _docs(texts, vocab, batch_size)]


def require_coverage(mentions: Iterable[Sequence[Mention]], vocab: Vocabulary, reports: str) -> int:
    """The number of mentions; :class:`InputError` if no term of ``vocab`` occurs in any report."""
    n = sum(len(m) for m in mentions)
    if n == 0:
        raise InputError(f"{vocab.source}: none of its {len(vocab)} terms occurs in any report of {reports}")
    return n



# -- for the text stages (keywords, topic-label, hierarchy) ---------------------------------------

#: the choices of the stages' ``--mentions`` option
MENTION_MODES = ("affirmed", "all")
MENTIONS_HELP = ("which finding mentions the words come from: affirmed (negated and uncertain mentions, "
                 "with their scope, are removed first: 'no pneumothorax' counts no word) or all")
VOCABULARY_HELP = ("finding/disease terms, one per line, synonyms separated by | (default: ldpo's list of "
                   "common radiology findings)")


def _mine(texts: Sequence[str], vocab: Vocabulary, drop: frozenset[str]) -> tuple[list[list[Mention]], list[str]]:
    nlp = _pipeline(vocab)
    mentions, kept = [], []
    for pieces in _docs(texts, vocab):
        mentions.append(_doc_mentions(nlp, pieces))
        kept.append(_drop(nlp, pieces, drop))
    return mentions, kept


def keep_mentions(texts: dict, mode: str, vocabulary: str | None, source: str) -> dict:
    """``texts`` (``{id: text}``) as the text stages count them under ``--mentions mode``.

    ``all``: unchanged. ``affirmed``: every text without its negated and uncertain mentions and
    their scopes (:func:`affirmed_text`); a copy of the same mapping type and attributes (so
    :class:`ldpo.common.nlp.reports.ReportTexts` keeps ``scrubbed``). :class:`InputError` if no term of
    a given ``vocabulary`` file occurs in any text of ``source`` (with the default list: a warning)."""
    if mode not in MENTION_MODES:
        raise InputError(f"--mentions {mode}: expected one of {', '.join(MENTION_MODES)}")
    if mode == "all":
        return texts
    vocab = load_vocabulary(vocabulary or None)
    keys = list(texts)
    mentions, kept = _mine([texts[k] for k in keys], vocab, DROPPED)
    if vocabulary:
        require_coverage(mentions, vocab, source)
    log = logging.getLogger("ldpo")
    if not vocabulary and not any(mentions):
        log.debug("%s: no term of the default vocabulary occurs in any text; nothing is removed", source)
    counts = {s: sum(m.status == s for ms in mentions for m in ms) for s in STATUSES}
    (log.info if counts["negated"] + counts["uncertain"] else log.debug)(
        "mentions in %d text(s) of %s: %s (negated and uncertain ones removed)", len(keys), source,
        ", ".join(f"{n} {s}" for s, n in counts.items()))
    out = type(texts)()
    out.update(zip(keys, kept))
    if hasattr(texts, "__dict__"):
        out.__dict__.update(texts.__dict__)
    return out


def keep_mentions_list(texts: Sequence[str], mode: str, vocabulary: str | None, source: str) -> list[str]:
    """:func:`keep_mentions` for a list of texts."""
    kept = keep_mentions(dict(enumerate(texts)), mode, vocabulary, source)
    return [kept[i] for i in range(len(texts))]


# -- evaluation on a labelled sentence set -------------------------------------------------------


def read_assertion_set(path: str, part: str | None = None) -> list[tuple[str, str, str]]:
    """``(sentence, term, status)`` rows of a TSV with a ``sentence<TAB>term<TAB>status[<TAB>part]`` header.

    ``part`` keeps only the rows of that part (4th column) when given."""
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:3] != ["sentence", "term", "status"]:
            raise InputError(f"{path}: expected the header sentence<TAB>term<TAB>status")
        for n, line in enumerate(f, 2):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) not in (3, 4) or parts[2] not in STATUSES:
                raise InputError(f"{path}: line {n}: expected sentence<TAB>term<TAB>status (one of {STATUSES})")
            if part is None or (len(parts) == 4 and parts[3] == part):
                rows.append((parts[0], parts[1].lower(), parts[2]))
    return rows


def predict_statuses(rows: Sequence[tuple[str, str, str]], vocab: Vocabulary) -> list[str]:
    """For each row, the status found for its term in its sentence ("missed" if no mention of it)."""
    sentences = list(dict.fromkeys(r[0] for r in rows))
    found = dict(zip(sentences, find_mentions_many(sentences, vocab)))
    return [next((m.status for m in found[s] if m.term == term), "missed") for s, term, _ in rows]


def assertion_scores(rows: Sequence[tuple[str, str, str]], predicted: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per gold status (a missed mention counts against recall)."""
    out = {}
    for status in STATUSES:
        tp = sum(g == status and p == status for (_, _, g), p in zip(rows, predicted))
        fp = sum(g != status and p == status for (_, _, g), p in zip(rows, predicted))
        fn = sum(g == status and p != status for (_, _, g), p in zip(rows, predicted))
        support = tp + fn
        if support == 0:
            continue
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / support
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[status] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return out
