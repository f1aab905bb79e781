"""Report text shared by ``topic-label`` and ``keywords``: reading and cleaning words.

Reading reports and manifests is :mod:`ldpo.common.nlp.reports` (one reader per file kind,
one encoding rule); :func:`read_reports` here is its ``{report_id: text}`` form
(:func:`ldpo.common.nlp.reports.report_texts`: every text scrubbed of patient identifiers by
:mod:`ldpo.common.nlp.phi`, with ``.scrubbed`` telling whether the file is
``extract-keyimages``' scrubbed ``reports.csv``), and :func:`read_manifest` /
:class:`Manifest` are re-exported for the text stages.

Cleaning (:class:`Cleaner`): lower-case regex tokens; numbers, measurements
(``5mm``, ``3.2cm``, ``2nd``, ``1013-78``), dates and times (``2014-03-12``,
``12/03/2014``, ``10:30``, month and weekday names) and tokens shorter than
``min_length`` dropped; the scrubber's placeholders (``[removed]``, ``[uid]``), the
de-identification marks of other tools (:data:`DEID_MARKS`: ``XXXX``, ``x-xxxx``,
``[** … **]``, ``___``) and
tokens with 3 or more digits (``acc999``, ``mrn123456``: identifiers, never words a
category is known by) dropped; stop words from gensim and scikit-learn plus the words every
key-image reference uses (``series``, ``image``, …) dropped; optional Porter stemming
(nltk's ``PorterStemmer``, which needs no downloaded corpora). A cleaner remembers
which surface word each stem came from, so stemmed keywords can be shown as words.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from .phi import PLACEHOLDER
from .reports import Manifest, missing_reports, read_manifest, report_texts

__all__ = ["Cleaner", "Manifest", "is_date_like", "is_number", "missing_reports", "read_manifest", "read_reports",
           "stop_words", "tokenize", "warn_raw_reports", "without_marks"]

#: words in nearly every report that references key images: noise for topics and keywords
REFERENCE_WORDS = frozenset({
    "series", "image", "images", "img", "imgs", "slice", "slices", "frame", "frames", "key",
})

MONTHS = frozenset({
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec",
})
WEEKDAYS = frozenset({
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
    "mon", "tue", "tues", "wed", "thu", "thur", "thurs", "fri", "sat", "sun",
})

#: de-identification marks that real de-identified reports carry where a name, date or id was: runs of X
#: (``XXXX``, ``x-xxxx``, ``XX/XX/XXXX``: only x's and separators, two x's or more), MIMIC-III's
#: ``[** … **]`` brackets (whatever is inside), and runs of two or more underscores (MIMIC-IV's ``___``)
DEID_MARKS = re.compile(r"\[\*\*.*?\*\*\]"
                        r"|(?<![^\W_])(?:[xX]{2,}|[xX](?=[\-/.:][xX]))(?:[\-/.:][xX]+)*(?![^\W_])"
                        r"|_{2,}", re.DOTALL)


def without_marks(text: str) -> str:
    """``text`` with the scrubber's placeholders (``[removed]``, ``[uid]``) and :data:`DEID_MARKS` made spaces:
    marks are not words."""
    return DEID_MARKS.sub(" ", PLACEHOLDER.sub(" ", text))


# A raw token: letters/digits, possibly joined by - ' . / : (so 12/03/2014 and 3.2cm stay whole).
_TOKEN = re.compile(r"[a-z0-9]+(?:['\-./:][a-z0-9]+)*")
# Numbers, ranges and measurements: 12, 3.2, 1,000, 1013-78, 5mm, 3.2cm, 2nd, 4x, 10-12mm.
_NUMBER = re.compile(r"^[+-]?\d+(?:[.,]\d+)*(?:-\d+(?:[.,]\d+)*)*[a-z]{0,3}$")
# Dates and times: 2014-03-12, 12/03/2014, 3.12.14, 10:30, 10:30:15, 10:30pm.
_DATE = re.compile(r"^(?:\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}|\d{1,2}:\d{2}(?::\d{2})?(?:am|pm)?)$")
_SPLIT = re.compile(r"[./:]")


def stop_words() -> frozenset[str]:
    """gensim's and scikit-learn's English stop words, plus :data:`REFERENCE_WORDS`."""
    from gensim.parsing.preprocessing import STOPWORDS
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(STOPWORDS) | frozenset(ENGLISH_STOP_WORDS) | REFERENCE_WORDS


def is_number(token: str) -> bool:
    """A number, range or measurement (``12``, ``3.2``, ``1013-78``, ``5mm``, ``2nd``)."""
    return bool(_NUMBER.match(token))


def is_date_like(token: str) -> bool:
    """A numeric date or time, or a month or weekday name."""
    return bool(_DATE.match(token)) or token in MONTHS or token in WEEKDAYS


def tokenize(text: str) -> list[str]:
    """Lower-case raw tokens, nothing removed yet (``"Se 3, 12/03/2014"`` → ``se 3 12/03/2014``)."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return _TOKEN.findall(text)


@dataclass
class Cleaner:
    """Turns text into the words the text stages count: ``Cleaner(stem=True).words(text)``."""

    stem: bool = False
    min_length: int = 3
    extra_stop: frozenset[str] = frozenset()
    surface: dict[str, Counter] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.stop = stop_words() | frozenset(w.lower() for w in self.extra_stop)
        self._stemmer = None
        self._stems: dict[str, str] = {}
        if self.stem:
            from nltk.stem import PorterStemmer

            self._stemmer = PorterStemmer()

    def keep(self, word: str) -> bool:
        return (len(word) >= self.min_length and word not in self.stop
                and not is_number(word) and not is_date_like(word) and any(c.isalpha() for c in word)
                and sum(c.isdigit() for c in word) < 3)

    def words(self, text: str) -> list[str]:
        """The cleaned (and, with ``stem``, stemmed) words of ``text`` in order."""
        out = []
        for raw in tokenize(without_marks(text)):
            if is_number(raw) or is_date_like(raw):
                continue
            for part in _SPLIT.split(raw):  # "lungs.clear" → lungs, clear
                part = part.strip("'-")
                if part.endswith("'s"):
                    part = part[:-2]
                part = part.replace("'", "")
                if self.keep(part):
                    out.append(self._stem(part))
        return out

    def _stem(self, word: str) -> str:
        if self._stemmer is None:
            return word
        stem = self._stems.get(word)
        if stem is None:
            stem = self._stems[word] = self._stemmer.stem(word)
        self.surface.setdefault(stem, Counter())[word] += 1
        return stem

    def display(self, word: str) -> str:
        """The most frequent surface word behind a stem (the word itself without stemming)."""
        forms = self.surface.get(word)
        if not forms:
            return word
        return min(forms.items(), key=lambda kv: (-kv[1], kv[0]))[0]


# -- reading: one reader per file kind, in ldpo.common.files.tables ------------------------

#: ``{report_id: text}`` (the same reader as every other stage's, see :mod:`ldpo.common.files.tables`)
read_reports = report_texts


def warn_raw_reports(path: str, reports) -> None:
    """The warning every text stage prints after a run on reports that are not ``extract-keyimages``' scrubbed
    ``reports.csv`` (``reports`` as :func:`read_reports` returned them)."""
    import logging

    from .phi import RAW_REPORTS

    if not getattr(reports, "scrubbed", False):
        logging.getLogger("ldpo").warning("%s: %s", path, RAW_REPORTS)
