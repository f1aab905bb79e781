"""The reports and key-image manifests that the text stages read, each text scrubbed on reading.

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
  scrubber on reading.

Both are CSV files read by :mod:`ldpo.common.files.tables`' rules (encoding, quoting, formulas);
they live here, beside the scrubber, because every text read must pass through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..files.tables import csv_rows, read_text
from .phi import SCRUBBED_COLUMN, SCRUBBED_MARK, scrub_text


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
