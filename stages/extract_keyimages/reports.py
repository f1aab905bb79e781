"""Reports in, pseudonyms and scrubbing out.

Reports are a CSV (header with ``text``, an id column ``report_id``, and ``accession``
or ``study_uid`` to link a report to its DICOM study) or a folder of ``.txt`` files
(report_id = accession = the file's stem).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ldpo.common.errors import InputError


@dataclass
class Report:
    report_id: str
    text: str
    accession: str = ""
    study_uid: str = ""


def read_reports(path: str | Path) -> list[Report]:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such reports file or folder")
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise InputError(f"{path}: folder holds no .txt reports")
        return [Report(f.stem, f.read_text(encoding="utf-8", errors="replace"), accession=f.stem) for f in files]
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "text" not in columns:
            raise InputError(f"{path}: reports CSV needs a 'text' column (it has {', '.join(columns) or 'none'})")
        id_column = next((c for c in ("report_id", "id") if c in columns), None)
        if id_column is None:
            raise InputError(f"{path}: reports CSV needs a 'report_id' column")
        reports, seen = [], set()
        for row in reader:
            row = {(k or "").strip(): (v or "") for k, v in row.items()}
            rid = row[id_column].strip()
            if not rid or rid in seen:
                raise InputError(f"{path}: line {reader.line_num}: {'empty' if not rid else 'duplicate'} report_id {rid!r}")
            seen.add(rid)
            reports.append(Report(rid, row["text"], row.get("accession", "").strip(), row.get("study_uid", "").strip()))
    return reports


class Pseudonyms:
    """Salted keyed hashes: the same input and salt give the same pseudonym, nothing reverses it."""

    def __init__(self, salt: str):
        self.key = salt.encode("utf-8")

    def __call__(self, kind: str, *parts: object, length: int = 12) -> str:
        message = "\x1f".join([kind, *(str(p) for p in parts)]).encode("utf-8")
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()[:length]


UID_LIKE = re.compile(r"\b\d+(?:\.\d+){3,}\b")


def _date_forms(value: str) -> list[str]:
    if not re.fullmatch(r"\d{8}", value):
        return [value]
    y, m, d = value[:4], value[4:6], value[6:]
    return [value, f"{y}-{m}-{d}", f"{m}/{d}/{y}", f"{d}/{m}/{y}", f"{d}.{m}.{y}", f"{y}/{m}/{d}"]


def scrubber(phi: list[str]):
    """A function that removes the given names/birth dates and any UID-like string from text."""
    words = sorted({form for item in phi for form in _date_forms(item)}, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w])(?:" + "|".join(re.escape(w) for w in words) + r")(?![\w])", re.IGNORECASE) \
        if words else None

    def scrub(text: str) -> str:
        text = UID_LIKE.sub("[uid]", text)
        return pattern.sub("[removed]", text) if pattern else text

    return scrub
