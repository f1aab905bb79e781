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

The pipeline is built once per vocabulary (cached) and texts are processed with ``nlp.pipe``.
Text passed here should already be scrubbed of patient identifiers (:mod:`ldpo.common.phi`);
this module adds nothing but vocabulary terms.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

from ldpo.common.errors import InputError

__all__ = ["STATUSES", "Mention", "Vocabulary", "affirmed_terms", "affirmed_text", "affirmed_texts",
           "find_mentions", "find_mentions_many", "load_vocabulary", "parse_vocabulary", "require_coverage"]

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
    "with interval", "whereas", "while", "though there is", "since", "as well as new",
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
        "not significantly changed", "no longer", "not certain whether", "not certain if",
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
        "not suggesting", "nor suggestive of", "without suspicious", "no findings to suggest",
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
        "cannot be ruled out", "can not be ruled out", "not ruled out", "not been ruled out",
        "not entirely excluded", "not completely excluded", "is possible", "are possible", "is suspected",
        "are suspected", "is questioned", "is likely", "are likely", "is favored", "versus", "vs",
        "vs.", "is not excluded", "not be excluded", "is questionable", "is uncertain",
        "is a consideration", "is considered", "could be considered", "difficult to exclude",
        "would be difficult to exclude", "?", "or not", "not definitely excluded",
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


def _plural_forms(spelling: str) -> set[str]:
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
        for form in sorted(_plural_forms(spelling)):
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


def _resolve(nlp, doc) -> list[str]:
    """Each entity's status; a mention both negated and uncertain takes the nearer cue's status."""
    out = []
    for e in doc.ents:
        status = _status(e)
        if status == "uncertain" and e._.get(_EXT["negated"]):
            neg = _nearest_cue(nlp.get_pipe(_EXT["negated"]), doc, e)
            unc = _nearest_cue(nlp.get_pipe(_EXT["uncertain"]), doc, e)
            status = "negated" if neg < unc else "uncertain"
        out.append(status)
    return out


def _doc_mentions(nlp, doc) -> list[Mention]:
    return [Mention(e.ent_id_, e.text, e.start_char, e.end_char, status)
            for e, status in zip(doc.ents, _resolve(nlp, doc))]


def _docs(texts: Sequence[str], vocab: Vocabulary, batch_size: int = 256):
    return _pipeline(vocab).pipe((t or "" for t in texts), batch_size=batch_size)


def find_mentions(text: str, vocab: Vocabulary) -> list[Mention]:
    """Every vocabulary mention in ``text``, in order, with its status."""
    return find_mentions_many([text], vocab)[0]


def find_mentions_many(texts: Sequence[str], vocab: Vocabulary, batch_size: int = 256) -> list[list[Mention]]:
    """:func:`find_mentions` for many texts (one ``nlp.pipe`` pass)."""
    nlp = _pipeline(vocab)
    return [_doc_mentions(nlp, doc) for doc in _docs(texts, vocab, batch_size)]


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


def _drop(nlp, doc, drop: frozenset[str]) -> str:
    statuses = list(zip(doc.ents, _resolve(nlp, doc)))
    dropped = [(e, s) for e, s in statuses if s in drop]
    if not dropped:
        return doc.text
    gone = set()
    for lo, hi in _cue_scopes(nlp, doc, dropped) + [(e.start, e.end) for e, _ in dropped]:
        gone.update(range(lo, hi))
    gone -= {i for e, s in statuses if s not in drop for i in range(e.start, e.end)}
    return "".join(t.whitespace_ if t.i in gone else t.text_with_ws for t in doc).strip()


def affirmed_text(text: str, vocab: Vocabulary, drop: Iterable[str] = DROPPED) -> str:
    """``text`` without its negated and uncertain mentions and their scopes (the cue to the clause end)."""
    return affirmed_texts([text], vocab, drop)[0]


def affirmed_texts(texts: Sequence[str], vocab: Vocabulary, drop: Iterable[str] = DROPPED,
                   batch_size: int = 256) -> list[str]:
    """:func:`affirmed_text` for many texts (one ``nlp.pipe`` pass)."""
    drop = frozenset(drop)
    nlp = _pipeline(vocab)
    return [_drop(nlp, doc, drop) for doc in _docs(texts, vocab, batch_size)]


def require_coverage(mentions: Iterable[Sequence[Mention]], vocab: Vocabulary, reports: str) -> int:
    """The number of mentions; :class:`InputError` if no term of ``vocab`` occurs in any report."""
    n = sum(len(m) for m in mentions)
    if n == 0:
        raise InputError(f"{vocab.source}: none of its {len(vocab)} terms occurs in any report of {reports}")
    return n
