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

File kinds:

* reports (:func:`read_reports`): a CSV with ``report_id`` and ``text`` columns (and
  ``accession`` or ``study_uid`` to link a report to its DICOM study), or a folder of
  ``.txt`` files, searched recursively, report id = accession = the file's stem.
  ``extract-keyimages`` reads raw reports this way; it is the only stage that does.
  Every other stage reads :func:`report_texts`: each text passed through
  :func:`ldpo.common.nlp.phi.scrub_text` (patterns: dates, phone numbers, MRN- and
  accession-like ids, titled and labelled names, UIDs), and the result says whether the
  file is ``extract-keyimages``' scrubbed ``reports.csv`` (its ``scrubbed`` column holds
  :data:`ldpo.common.nlp.phi.SCRUBBED_MARK` on every row), whose text was also scrubbed with
  everything the DICOM headers say about each patient;
* manifests (:func:`read_manifest`): ``id,…,report_id,sentence,context`` from
  ``extract-keyimages``; ``sentence`` and ``context`` are passed through the same pattern
  scrubber on reading;
* labels: :mod:`ldpo.common.files.labels` (which reads and writes through this module).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
import sys
from dataclasses import dataclass
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


# -- reports --------------------------------------------------------------------------


@dataclass
class Report:
    report_id: str
    text: str
    accession: str = ""
    study_uid: str = ""
    scrubbed: bool = False  # the row carries extract-keyimages' scrubbed mark


def read_reports(path: str | os.PathLike) -> list[Report]:
    """Reports from a CSV (``report_id``, ``text`` [, ``accession``, ``study_uid``, ``scrubbed``]) or a folder of
    ``.txt``, as written (raw text: only ``extract-keyimages`` reads this; the other stages read
    :func:`report_texts`)."""
    from ..nlp.phi import SCRUBBED_COLUMN, SCRUBBED_MARK

    path = Path(path)
    if path.is_dir():
        return _report_folder(path)
    reports: list[Report] = []
    seen: set[str] = set()
    for line_no, row in csv_rows(path, "reports CSV", ["report_id", "text"]):
        rid = row["report_id"].strip()
        if not rid:
            raise InputError(f"{path}: line {line_no}: empty report_id")
        if rid in seen:
            raise InputError(f"{path}: line {line_no}: duplicate report_id {rid!r}")
        seen.add(rid)
        reports.append(Report(rid, row["text"], row.get("accession", "").strip(), row.get("study_uid", "").strip(),
                              row.get(SCRUBBED_COLUMN, "").strip() == SCRUBBED_MARK))
    if not reports:
        raise InputError(f"{path}: no reports in the file (only a header)")
    return reports


def _report_folder(folder: Path) -> list[Report]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".txt" and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise InputError(f"{folder}: no .txt reports in the folder")
    reports: list[Report] = []
    where: dict[str, Path] = {}
    for f in files:
        if f.stem in where:
            raise InputError(f"{f}: duplicate report id {f.stem!r} (also {where[f.stem]})")
        where[f.stem] = f
        reports.append(Report(f.stem, read_text(f, "report"), accession=f.stem))
    return reports


class ReportTexts(dict):
    """``{report_id: scrubbed text}``; ``scrubbed`` is true when every report came from ``extract-keyimages``'
    ``reports.csv`` (scrubbed with its patients' DICOM headers), false when the text was scrubbed by pattern only."""

    scrubbed: bool = False


def report_texts(path: str | os.PathLike) -> ReportTexts:
    """``{report_id: text}`` in file order (see :func:`read_reports`), every text passed through the pattern
    scrubber (:func:`ldpo.common.nlp.phi.scrub_text`): no stage after ``extract-keyimages`` sees raw report text."""
    from ..nlp.phi import scrub_text

    reports = read_reports(path)
    texts = ReportTexts((r.report_id, scrub_text(r.text)) for r in reports)
    texts.scrubbed = all(r.scrubbed for r in reports)
    return texts


# -- manifests ------------------------------------------------------------------------


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
    """Read a manifest CSV; ``id`` and ``report_id`` are required, and the ``need`` columns. The ``sentence`` and
    ``context`` columns (report text) come through the pattern scrubber, as :func:`report_texts`' do."""
    from ..nlp.phi import scrub_text

    path = Path(path)
    ids: list[str] = []
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for line_no, row in csv_rows(path, "manifest CSV", ["id", "report_id", *need]):
        ident = row["id"].strip()
        if not ident:
            raise InputError(f"{path}: line {line_no}: empty id")
        if ident in seen:
            raise InputError(f"{path}: line {line_no}: duplicate id {ident!r}")
        seen.add(ident)
        row["report_id"] = row["report_id"].strip()
        for column in ("sentence", "context"):
            if row.get(column):
                row[column] = scrub_text(row[column])
        ids.append(ident)
        rows.append(row)
    if not ids:
        raise InputError(f"{path}: no rows in the manifest")
    return Manifest(ids, rows, str(path))


def missing_reports(manifest: Manifest, reports: dict[str, str]) -> list[str]:
    """Manifest ids whose ``report_id`` is empty or not among ``reports``."""
    return [i for i, rid in zip(manifest.ids, manifest.column("report_id")) if rid not in reports]
