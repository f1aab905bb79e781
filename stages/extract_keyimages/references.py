"""Key-image references in report text, in the forms radiologists write them.

Recognised (case-insensitive, several per sentence)::

    (series 1001, image 32)      series 3 image 45        Se 3 Im 45      Se:4 Im:101
    image 12 of series 4         (image 45, series 3)     ser. 2 img. 9   series #6, image #20
    images 1013-78  (→ 1013…1078)                          images 12 through 15 of series 8
    images 30, 32 and 35         series 5, images 10-14   Se 3 Im 45, Im 47 (47 inherits series 3)

A number followed by a unit (``image 12, 3 mm nodule``) is not an image number. A
reference without a series inherits the series of an earlier reference in the same
sentence; otherwise its series is ``None`` and the caller resolves it (the study's
only series, or an ambiguous reference).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_RANGE = 2000  # a longer "range" is a typo or not a reference

_NUM = r"\d{1,6}"
_NOT_A_MEASURE = r"(?!\s*(?:mm|cm|ml|cc|hu|%|x\b|years?\b|yo\b|[.,]\d))"
_RANGE_SEP = r"\s*(?:-|–|—|\bto\b|\bthrough\b|\bthru\b)\s*"
_ITEM = rf"{_NUM}(?:{_RANGE_SEP}{_NUM})?{_NOT_A_MEASURE}"
_LIST_SEP = r"\s*(?:,\s*(?:and\b|&)?|\band\b|&)\s*"
_NUMLIST = rf"{_ITEM}(?:{_LIST_SEP}{_ITEM})*"
_MARK = r"\s*(?:#|\bno\.|\bnumber\b|\bnr\.?|:)?\s*"
_SERIES_WORD = r"\b(?:series|ser|se)(?![a-z])\.?"
_IMAGE_WORD = r"\b(?:images|image|imgs|img|ima|im)(?![a-z])\.?"


def _series(name: str) -> str:
    return rf"{_SERIES_WORD}{_MARK}(?P<{name}>{_NUM})(?!\d)"


def _images(name: str) -> str:
    return rf"{_IMAGE_WORD}{_MARK}(?P<{name}>{_NUMLIST})"


_SERIES_FIRST = rf"{_series('s1')}\s*(?:[,;:/]|\band\b)?\s*(?:(?:on|at)\s+)?{_images('i1')}"
_IMAGE_FIRST = (rf"{_images('i2')}\s*(?:,\s*)?(?:(?:of|in|on|from)\s+(?:the\s+)?|[;/]\s*)?{_series('s2')}"
                rf"(?!\s*[,;:/]?\s*{_IMAGE_WORD}\s*{_MARK}\d)")
_IMAGE_ALONE = _images("i3")
PATTERN = re.compile(rf"(?:{_SERIES_FIRST})|(?:{_IMAGE_FIRST})|(?:{_IMAGE_ALONE})", re.IGNORECASE)


@dataclass(frozen=True)
class Reference:
    series: int | None  # SeriesNumber, or None when the text names no series
    images: tuple[int, ...]  # InstanceNumbers, in the order written
    text: str  # the words that made this reference


def expand(numbers: str) -> tuple[int, ...]:
    """``"30, 32 and 35"`` → (30, 32, 35); ``"1013-78"`` → 1013…1078; ``"10 to 14"`` → 10…14."""
    out: list[int] = []
    for item in re.finditer(rf"({_NUM})(?:{_RANGE_SEP}({_NUM}))?", numbers):
        first, last = item.group(1), item.group(2)
        if last is None:
            out.append(int(first))
            continue
        lo, hi = int(first), int(last)
        if hi < lo and len(last) < len(first):  # abbreviated end: 1013-78 → 1078
            hi = int(first[: len(first) - len(last)] + last)
        if lo <= hi <= lo + MAX_RANGE:
            out.extend(range(lo, hi + 1))
        else:
            out.extend([lo, int(last)])
    return tuple(dict.fromkeys(out))


def parse_references(sentence: str) -> list[Reference]:
    """Every key-image reference in one sentence, left to right."""
    refs: list[Reference] = []
    current_series: int | None = None
    for m in PATTERN.finditer(sentence):
        series = m.group("s1") or m.group("s2")
        images = m.group("i1") or m.group("i2") or m.group("i3")
        if series is not None:
            current_series = int(series)
        refs.append(Reference(current_series, expand(images), m.group(0).strip()))
    return refs


_ABBREVIATIONS = {"se", "ser", "im", "img", "ima", "no", "nr", "dr", "mr", "mrs", "ms", "vs", "fig", "approx",
                  "e.g", "i.e", "cf", "st", "jr", "sr", "ca", "resp"}
_BOUNDARY = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9(\[\"'])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a report: lines, then ``. ! ?`` before a capital or digit (not after abbreviations)."""
    sentences: list[str] = []
    for line in re.split(r"\s*\n\s*", text.strip()):
        line = re.sub(r"\s+", " ", line).strip()
        start = 0
        for m in _BOUNDARY.finditer(line):
            word = re.search(r"([A-Za-z.]*)[.!?]$", line[start:m.start()])
            if word and (word.group(1).lower().rstrip(".") in _ABBREVIATIONS or len(word.group(1)) == 1):
                continue
            sentences.append(line[start:m.start()].strip())
            start = m.end()
        if line[start:].strip():
            sentences.append(line[start:].strip())
    return [s for s in sentences if s]


@dataclass(frozen=True)
class Mention:
    """A sentence that references key images, with its neighbours for context."""

    index: int  # sentence number in the report
    sentence: str
    context: str
    references: tuple[Reference, ...]


def mentions(text: str) -> list[Mention]:
    """The referencing sentences of a report, in order."""
    sentences = split_sentences(text)
    found = []
    for i, sentence in enumerate(sentences):
        refs = parse_references(sentence)
        if refs:
            context = " ".join(sentences[max(0, i - 1): i + 2])
            found.append(Mention(i, sentence, context, tuple(refs)))
    return found
