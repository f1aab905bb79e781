"""The CSV contracts, read and written in one place with one set of rules.

Every CSV the stages exchange (labels, reports, manifests, rejects, histories, topic
and keyword tables) goes through this module:

* **Encoding**: UTF-8, with or without a byte-order mark. Anything else (Latin-1,
  UTF-16, binary) is an :class:`~ldpo.common.errors.InputError` naming the file and
  telling the user to save it as UTF-8; bytes are never guessed or replaced.
* **Reading**: :func:`csv_rows` checks the header has the required columns, allows
  quoted fields that span lines, skips blank lines, and names the file and line of
  every problem.
* **Writing**: :func:`write_csv` writes a header and rows under a temporary name in
  the same folder and renames it when complete (``-`` = stdout).
* **Formulas** (CSV injection, OWASP): a person opens these files in a spreadsheet, which
  runs a cell starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return as a
  formula. The writer prefixes such a text cell with ``'`` (:func:`csv_cell`), unless it
  is a plain decimal number (``-0.5``, ``+3e2``, ``-inf``), and also prefixes a text cell that
  already starts with ``'`` followed by one of those characters or another ``'``. The
  reader (:func:`read_cell`, applied by :func:`csv_rows`) drops one leading ``'`` exactly
  when the next character is one of those or ``'``. So every text reads back as written
  (``=1+2`` ↔ ``'=1+2``, ``'=x`` ↔ ``''=x``, ``'abc`` ↔ ``'abc``); numbers written from
  ints and floats are never touched. The report page's review.csv download applies the
  same rule in JavaScript.

The reports and manifests that the text stages read go through this module's readers too, from
:mod:`ldpo.common.nlp.reports` (which scrubs their text); labels: :mod:`ldpo.common.files.labels`.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..errors import InputError
from .stores import atomic_path

UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")

#: a cell starting with one of these is a formula to a spreadsheet (OWASP's CSV injection list)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: after a leading ``'``, these mean the ``'`` is the writer's (see :func:`csv_cell`)
_QUOTED = FORMULA_START + ("'",)
#: a plain decimal number (ASCII digits), or how Python writes an infinite or NaN float:
#: never a formula that does anything, written as is
_NUMBER = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|nan)")


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped); ``-`` reads stdin."""
    name = str(path)
    if name == "-":
        return sys.stdin.read()
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{name}: no such {what}") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a folder, not a {what}") from None
    except OSError as err:
        raise InputError(f"{name}: cannot read {what} ({err.strerror or err})") from None
    return decode(raw, name)


def decode(raw: bytes, name: str) -> str:
    """UTF-8 bytes (with or without BOM) → text; any other encoding is an error naming ``name``."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        looks = " (it looks like UTF-16)" if raw[:2] in UTF16_MARKS else ""
        raise InputError(f"{name}: not UTF-8 text{looks} (byte {err.start}): save it as UTF-8") from None


def _csv_limit() -> None:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long reports exceed the 128 KiB default


def csv_rows(path: str | os.PathLike, what: str, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_no, row_dict)`` of a CSV, checking the header has the ``required`` columns.

    Header names are stripped; quoted fields may span lines (``line_no`` is the record's
    first line); blank lines are skipped; a row longer than the header is an error.
    """
    _csv_limit()
    text = read_text(path, what)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header:
            raise InputError(f"{path}: empty {what}")
        header = [read_cell(h).strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise InputError(f"{path}: not a {what} (the header needs {', '.join(repr(c) for c in required)}; "
                             f"missing {', '.join(missing)})")
        line_no = reader.line_num + 1
        for row in reader:
            if row and any(c.strip() for c in row):
                if len(row) > len(header):
                    raise InputError(f"{path}: line {line_no}: {len(row)} fields but the header has {len(header)}")
                cells = [read_cell(c) for c in row]
                yield line_no, dict(zip(header, cells + [""] * (len(header) - len(cells))))
            line_no = reader.line_num + 1
    except csv.Error as err:
        raise InputError(f"{path}: line {reader.line_num}: malformed CSV ({err})") from None


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write ``header`` and ``rows`` as UTF-8 CSV: atomically to ``path``, or to stdout for ``-``."""
    if str(path) == "-":
        _dump(sys.stdout, header, rows)
        sys.stdout.flush()
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            _dump(fh, header, rows)


def side_file(main: str | os.PathLike, tail: str) -> Path:
    """A side file named from the main output: ``side_file("run/labels.csv", "topics.csv")`` →
    ``run/labels.topics.csv``, so two outputs of one command never share a fixed name."""
    main = Path(main)
    stem = main.stem if main.suffix.lower() == ".csv" else main.name
    return main.with_name(f"{stem}.{tail}")


def _dump(fh, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    writer = csv.writer(fh, lineterminator="\n")
    # csv quotes a field holding the line terminator ("\n") but not a bare "\r", which every
    # reader takes for a line end: a row with one is written with every field quoted
    quoted = csv.writer(fh, lineterminator="\n", quoting=csv.QUOTE_ALL)
    for row in itertools.chain([header], rows):
        cells = [csv_cell(c) for c in row]
        (quoted if any(isinstance(c, str) and "\r" in c for c in cells) else writer).writerow(cells)


def csv_cell(value):
    """A cell as written: text that a spreadsheet would run as a formula gets a leading ``'``
    (and so does text already starting with ``'`` + such a character or ``'``, so that
    :func:`read_cell` can undo exactly this); numbers and plain-number text stay as they are."""
    if not isinstance(value, str) or not value:
        return value
    if value[0] in FORMULA_START and not _NUMBER.fullmatch(value):
        return "'" + value
    if len(value) > 1 and value[0] == "'" and value[1] in _QUOTED:
        return "'" + value
    return value


def read_cell(text: str) -> str:
    """A cell as read: the writer's leading ``'`` (:func:`csv_cell`) dropped; anything else as is."""
    if len(text) > 1 and text[0] == "'" and text[1] in _QUOTED:
        return text[1:]
    return text
