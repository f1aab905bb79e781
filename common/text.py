"""Report text shared by ``topic-label`` and ``keywords``: reading and cleaning words.

Reading:

* :func:`read_reports` — a CSV whose header has ``report_id`` and ``text`` (other
  columns allowed, e.g. the toy PACS's ``report_id,accession,text``), or a folder of
  ``.txt`` files (report id = file stem). Returns ``{report_id: text}`` in file order.
* :func:`read_manifest` — the key-image manifest written by ``extract-keyimages``
  (``id,study,patient,series,instance,frame,modality,report_id,sentence,context``);
  only ``id`` and ``report_id`` are required here, the others when a stage uses them.

Cleaning (:class:`Cleaner`): lower-case regex tokens; numbers, measurements
(``5mm``, ``3.2cm``, ``2nd``, ``1013-78``), dates and times (``2014-03-12``,
``12/03/2014``, ``10:30``, month and weekday names) and tokens shorter than
``min_length`` dropped; stop words from gensim and scikit-learn plus the words every
key-image reference uses (``series``, ``image``, …) dropped; optional Porter stemming
(nltk's ``PorterStemmer``, which needs no downloaded corpora). A cleaner remembers
which surface word each stem came from, so stemmed keywords can be shown as words.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ldpo.common.errors import InputError

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
                and not is_number(word) and not is_date_like(word) and any(c.isalpha() for c in word))

    def words(self, text: str) -> list[str]:
        """The cleaned (and, with ``stem``, stemmed) words of ``text`` in order."""
        out = []
        for raw in tokenize(text):
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


# -- reading ------------------------------------------------------------------------


def _csv_limit() -> None:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long reports exceed the 128 KiB default


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read {what} ({err.strerror or err})") from None


def _csv_rows(path: Path, what: str, required: list[str]):
    """Yield ``(line_no, row_dict)`` of a CSV, checking the header has ``required`` columns.

    Quoted fields may span lines (reports often do); ``line_no`` is the record's first line.
    """
    _csv_limit()
    text = _read_text(path, what)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header:
            raise InputError(f"{path}: empty {what}")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise InputError(f"{path}: not a {what} (the header needs {', '.join(repr(c) for c in required)}; "
                             f"missing {', '.join(missing)})")
        line_no = reader.line_num + 1
        for row in reader:
            if row and any(c.strip() for c in row):
                if len(row) > len(header):
                    raise InputError(f"{path}: line {line_no}: {len(row)} fields but the header has {len(header)}")
                yield line_no, dict(zip(header, row + [""] * (len(header) - len(row))))
            line_no = reader.line_num + 1
    except csv.Error as err:
        raise InputError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None


def read_reports(path: str | os.PathLike) -> dict[str, str]:
    """``{report_id: text}`` from a CSV (``report_id``, ``text`` columns) or a folder of ``.txt``."""
    path = Path(path)
    if path.is_dir():
        return _read_report_folder(path)
    reports: dict[str, str] = {}
    for line_no, row in _csv_rows(path, "reports CSV", ["report_id", "text"]):
        rid = row["report_id"].strip()
        if not rid:
            raise InputError(f"{path}: line {line_no}: empty report_id")
        if rid in reports:
            raise InputError(f"{path}: line {line_no}: duplicate report_id {rid!r}")
        reports[rid] = row["text"]
    if not reports:
        raise InputError(f"{path}: no reports in the file")
    return reports


def _read_report_folder(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".txt" and p.is_file())
    if not files:
        raise InputError(f"{folder}: no .txt reports in the folder")
    reports: dict[str, str] = {}
    for f in files:
        if f.stem in reports:
            raise InputError(f"{f}: duplicate report id {f.stem!r}")
        reports[f.stem] = _read_text(f, "report")
    return reports


@dataclass
class Manifest:
    """Key-image manifest rows, in file order; ``column(name)`` gives one column."""

    ids: list[str]
    rows: list[dict[str, str]]
    source: str

    def column(self, name: str) -> list[str]:
        return [r.get(name, "") for r in self.rows]

    def index(self) -> dict[str, int]:
        return {ident: i for i, ident in enumerate(self.ids)}


def read_manifest(path: str | os.PathLike, need: tuple[str, ...] = ()) -> Manifest:
    """Read a manifest CSV; ``id`` and ``report_id`` are required, and the ``need`` columns."""
    path = Path(path)
    ids: list[str] = []
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for line_no, row in _csv_rows(path, "manifest CSV", ["id", "report_id", *need]):
        ident = row["id"].strip()
        if not ident:
            raise InputError(f"{path}: line {line_no}: empty id")
        if ident in seen:
            raise InputError(f"{path}: line {line_no}: duplicate id {ident!r}")
        seen.add(ident)
        row["report_id"] = row["report_id"].strip()
        ids.append(ident)
        rows.append(row)
    if not ids:
        raise InputError(f"{path}: no rows in the manifest")
    return Manifest(ids, rows, str(path))


def missing_reports(manifest: Manifest, reports: dict[str, str]) -> list[str]:
    """Manifest ids whose ``report_id`` is empty or not among ``reports``."""
    return [i for i, rid in zip(manifest.ids, manifest.column("report_id")) if rid not in reports]
