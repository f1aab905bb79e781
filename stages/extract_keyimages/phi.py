"""No protected health information leaves ``extract-keyimages``: pseudonyms and scrubbing.

* :class:`Pseudonyms`: salted keyed hashes for ids, studies, patients and rejected files.
* :func:`scrubber`: a function that removes from report text what the DICOM headers of
  the report's study say about the patient: every part of PatientName (family, given,
  middle, prefix, suffix, each alone), PatientID, OtherPatientIDs, AccessionNumber, the
  birth date written in every common form (``19230417``, ``1923-04-17``, ``17-04-1923``,
  ``17/04/1923``, ``04/17/1923``, ``17.04.1923``, ``17/4/23``, ``April 17, 1923``,
  ``17 April 1923``, ``Apr 17 1923``, ``17th of April 1923`` …), any title followed by a
  name (``Mrs. Doe``, ``Dr Smith``, ``MR. DOE``), and any UID-like string.
"""

from __future__ import annotations

import hashlib
import hmac
import re

UID_LIKE = re.compile(r"\b\d+(?:\.\d+){3,}\b")

#: a title and the word after it: "Mrs. Doe", "Dr Smith", "MR. DOE" (all-caps titles only with a dot,
#: so "MR images" and "MS lesions" stay)
TITLE_NAME = re.compile(r"\b(?:(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\b\.?|(?:MR|MRS|MS|MISS|MX|DR|PROF)\.)\s*"
                        r"[A-Z][A-Za-z'\-]+")

MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
_SEP = r"[\s,./\-]+"

REMOVED = "[removed]"


class Pseudonyms:
    """Salted keyed hashes: the same input and salt give the same pseudonym, nothing reverses it."""

    def __init__(self, salt: str):
        self.key = salt.encode("utf-8")

    def __call__(self, kind: str, *parts: object, length: int = 12) -> str:
        message = "\x1f".join([kind, *(str(p) for p in parts)]).encode("utf-8")
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()[:length]


def name_parts(value: str) -> list[str]:
    """The parts of a DICOM person name (``Doe^Jane^Q^Mrs``, ``Doe, Jane``), 2 letters or longer."""
    return [p for p in re.split(r"[\^=\s,]+", value) if len(p) >= 2]


def date_pattern(value: str) -> str:
    """A regex for a DICOM date (YYYYMMDD) in the common written forms; the literal text otherwise."""
    found = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", value.strip())
    if not found or not 1 <= int(found.group(2)) <= 12:
        return re.escape(value.strip())
    y, m, d = found.groups()
    year = rf"(?:{y}|'?{y[2:]})"
    month, day = rf"0?{int(m)}", rf"0?{int(d)}(?:st|nd|rd|th)?"
    name = MONTHS[int(m) - 1]
    sept = r"|sept\.?" if name == "september" else ""
    month_name = rf"(?:{name}|{name[:3]}\.?{sept})"
    forms = [
        f"{y}{m}{d}", f"{d}{m}{y}", f"{m}{d}{y}",
        f"{y}{_SEP}{month}{_SEP}{day}",
        f"{day}{_SEP}{month}{_SEP}{year}",
        f"{month}{_SEP}{day}{_SEP}{year}",
        f"{month_name}{_SEP}{day}{_SEP}{year}",
        rf"{day}{_SEP}(?:of\s+)?{month_name}{_SEP}{year}",
    ]
    return "|".join(f"(?:{f})" for f in forms)


def scrubber(names: list[str] = (), ids: list[str] = (), dates: list[str] = ()):
    """A function that removes names, ids, birth dates, titled names and UID-like strings from text."""
    literal = sorted({w for w in [*names, *ids] if w and len(w) >= 2}, key=len, reverse=True)
    alternatives = [re.escape(w) for w in literal] + [date_pattern(d) for d in sorted(set(dates)) if d.strip()]
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE) if alternatives else None

    def scrub(text: str) -> str:
        text = UID_LIKE.sub("[uid]", text)
        if pattern is not None:
            text = pattern.sub(REMOVED, text)
        return TITLE_NAME.sub(REMOVED, text)

    return scrub
