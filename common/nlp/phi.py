"""Patient identifiers out of report text: the one scrubber every stage uses.

Report text enters ldpo once, through :func:`scrubber`: ``extract-keyimages`` scrubs
each report with everything the DICOM headers of its patient's studies say, and writes
the result as ``OUT/reports.csv`` (``report_id,text,scrubbed``; every row's
:data:`SCRUBBED_COLUMN` holds :data:`SCRUBBED_MARK`). The text stages read reports
through :func:`ldpo.common.nlp.reports.report_texts`, which passes every text through
:func:`scrub_text` again (the pattern layer, idempotent) and tells whether the file
carried the mark: a file without it (a raw PACS export, a folder of ``.txt``) is
scrubbed by pattern only, which cannot find a name written without a title.

Two layers:

1. **What the headers say** (:func:`scrubber` with ``names``, ``ids``, ``dates``,
   ``phrases``, ``known_ids``): every identifying attribute of the DICOM basic
   de-identification profile (PS3.15 Annex E) that the patient's studies carry. Person
   names are removed part by part wherever they stand (``John Smith``, ``Smith, John``,
   ``SMITH^JOHN``, each part alone), identifiers also inside longer tokens
   (``MRN4829170``), dates in every common written form (``20230417``, ``04/17/2023``,
   ``4/17/23``, ``2023-04-17``, ``April 17, 2023``, ``17 Apr 2023``, ``17th of April
   1923`` …), institution names and addresses as phrases (and without their generic
   tail: ``Saint Elsewhere`` of ``Saint Elsewhere Hospital``); ``known_ids`` are the
   accession numbers and patient IDs of the whole archive, removed as whole tokens
   from every report (another study's accession in the text); ``archive_names``
   (:class:`ArchiveNames`) are the person-name parts of the whole archive, removed from
   every report (another patient, staff of other studies), a part that is also an
   ordinary word only beside another name.
2. **Patterns** (:func:`scrub_text`, for any text): UID-like strings; DICOM person-name
   syntax (``DOE^JANE``); e-mail addresses; labelled identifiers (``MRN: 123456``,
   ``MRN123456``, ``accession ACC999``, ``Acc #``, ``patient ID``, ``SSN`` …); phone
   numbers; every date with a day (numeric, ``YYYYMMDD``, with a month name) and month
   + year; id-like tokens (letters + 5 or more digits, or 7 or more digits);
   institution names (capitalized words + ``Hospital``, ``Medical Center``,
   ``Clinic`` …); names after a label (``Patient:``, ``Referring physician:``,
   ``Signed by``, ``Dictated by``, ``discussed with`` …); a title with the name after
   it, and the title itself (``Mrs. Doe``, ``Dr J. Smith``, ``MR. DOE``; all-caps
   titles only with a dot, so ``MR images`` and ``MS lesions`` stay).

What is removed becomes :data:`REMOVED` (UIDs :data:`UID_MARK`); the text stages drop
these placeholders before counting words (:class:`ldpo.common.nlp.text.Cleaner`).

Why our own code and not a library: presidio (and medspacy, philter) find names with
spaCy or NLTK models that are downloaded at run time, which ldpo's machines (and many
hospital networks) cannot do; scrubadub's offline detectors know no MRN, accession or
DICOM date and would add a dependency for e-mail and phone patterns. None of them uses
what the DICOM headers say, which is the strongest signal there is (a referring
physician named without a title is found only that way).
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

REMOVED = "[removed]"
UID_MARK = "[uid]"
#: the placeholders the scrubber leaves (the text stages drop them before counting words)
PLACEHOLDER = re.compile(r"\[(?:removed|uid)\]")

#: extract-keyimages' reports.csv: this column holds SCRUBBED_MARK on every row
SCRUBBED_COLUMN = "scrubbed"
SCRUBBED_MARK = "ldpo-phi-1"
#: what a text stage says after a run on reports without that mark
RAW_REPORTS = ("not extract-keyimages' scrubbed reports.csv: its text was scrubbed here by pattern only (dates, "
               "phone numbers, MRN- and accession-like ids, titled and labelled names); a name written without a "
               "title may remain in the outputs: give extract-keyimages' OUT/reports.csv instead")
#: what a text stage adds when the manifest's report ids are not among raw reports' ids
RAW_REPORTS_HINT = "; extract-keyimages' manifest names the reports of its OUT/reports.csv"

UID_LIKE = re.compile(r"\b\d+(?:\.\d+){3,}\b")

MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
_SEP = r"[\s,./\-]+"

#: parts of a person name that are titles or degrees, not names (never removed as names:
#: "MR" would take "MR images" with it)
NOT_NAME_PARTS = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "md", "phd", "do", "jr", "sr", "ii",
                            "iii", "iv", "rn", "np", "pa", "mbbs", "frcr", "sir", "dame"})

# -- patterns ---------------------------------------------------------------------------------

#: capitalized words that start sentences, never taken as a name after a title or label
_NOT_NAMES = ("The|A|An|No|Not|There|This|These|That|Those|In|On|At|Of|And|Or|With|Without|For|To|From|By|Is|Was|"
              "Were|Are|Be|He|She|It|They|We|I|His|Her|Their|Findings|Impression|Comparison|Technique|Clinical|"
              "Indication|History|Exam|Examination|Report|Images?|Series|Se|Im|CT|MR|MRI|PET|US|XR|MRN|DOB|ID|Accession|"
              "Date|Phone|Tel|Fax|Age|Sex")
#: a name token: a capitalized word (not one of those, not a label ending in ":"), an initial, or a removed name
_NAME = (rf"(?!(?:{_NOT_NAMES})\b)(?![A-Za-z'\u2019\-]+:)(?:[A-Z][A-Za-z'\u2019\-]+|[A-Z]\.(?=[ \t])|\[removed\])")
_NAMES = rf"{_NAME}(?:(?:[ \t]+|,[ \t]*|\^){_NAME}){{0,3}}"

#: a title and the name after it ("Mrs. Doe", "Dr J. Smith", "MR. DOE"), or the title before a removed name
_TITLE = r"(?:\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Doctor|Professor)\b\.?|\b(?:MR|MRS|MS|MISS|MX|DR|PROF)\.)"
TITLE_NAME = re.compile(rf"{_TITLE}[ \t]*{_NAME}(?:[ \t]+{_NAME}){{0,2}}")

#: a label that names a person, then the name: the label stays, the name goes
_LABEL_COLON = (r"patient(?:'s)?[ \t]+name|name[ \t]+of[ \t]+patient|patient|referring(?:[ \t]+(?:physician|doctor|"
                r"provider|clinician))?|ordering(?:[ \t]+(?:physician|provider|clinician))?|attending(?:[ \t]+"
                r"physician)?|requesting(?:[ \t]+physician)?|radiologist|physician|technologist|cc")
_LABEL_BY = (r"referred[ \t]+by|ordered[ \t]+by|requested[ \t]+by|read[ \t]+by|reported[ \t]+by|dictated[ \t]+by|"
             r"(?:electronically[ \t]+)?signed(?:[ \t]+by)?|transcribed[ \t]+by|verified[ \t]+by|approved[ \t]+by|"
             r"reviewed[ \t]+by|performed[ \t]+by|discussed[ \t]+with|copy[ \t]+to")
LABEL_NAME = re.compile(rf"(?P<label>\b(?i:(?:{_LABEL_COLON})[ \t]*:|(?:{_LABEL_BY})[ \t]*:?))[ \t]*"
                        rf"(?:{_TITLE}[ \t]*)?{_NAMES}")

#: DICOM person-name syntax in text: DOE^JANE, Doe^Jane^^Mrs
PN_SYNTAX = re.compile(r"\b[A-Za-z][A-Za-z'\-]*(?:\^[A-Za-z.'\-]*)+")

EMAIL = re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")

#: a labelled identifier: "MRN: 123456", "MRN123456", "accession ACC999", "Acc #12-34", "patient ID X77",
#: "SSN 123-45-6789"
ID_LABELED = re.compile(
    r"(?P<label>\b(?i:mrn|mr[ \t]*\#|mr[ \t]*no\.|med(?:ical)?[ \t]+rec(?:ord)?s?(?:[ \t]+(?:no|number|\#))?\.?"
    r"|patient[ \t]+(?:id|no|number|\#)\.?|pt\.?[ \t]*(?:id|\#)|pid|acc(?:ession)?(?:[ \t]*(?:no|number|nr|\#))?\.?"
    r"|hosp(?:ital)?[ \t]+(?:no|number|\#)\.?|ssn|social[ \t]+security(?:[ \t]+(?:no|number))?"
    r"|(?:study|order|encounter|visit|account|acct|exam|requisition)[ \t]*(?:id|no|number|\#)\.?|fin|csn|id)"
    r"[ \t]*[:#=]?)[ \t]*(?i:(?:number|no\.?)[ \t]*[:#]?[ \t]*)?[A-Za-z]{0,6}-?\d[\w/\-]*")

_PHONE_LABEL = r"tel|telephone|phone|fax|pager|pgr|beeper|mobile|ext|extension"
PHONE = re.compile(rf"\b(?i:{_PHONE_LABEL})\.?[ \t]*[:#]?[ \t]*\+?[\d(][\d \t().\-]{{2,}}\d"
                   r"|(?<![\w/.\-])(?:\+?1[ \t.\-]?)?(?:\(\d{3}\)[ \t]?|\d{3}[ \t.\-])\d{3}[ \t.\-]\d{4}(?![\w/\-])")

_MON = (r"(?:(?i:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|"
        r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)|May|MAY)")
_DAY = r"(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?"
_YEAR = r"(?:\d{4}|'?\d{2})"
DATES = re.compile(
    r"\b\d{4}[\-/.]\d{1,2}[\-/.]\d{1,2}\b"
    r"|\b\d{1,2}[\-/.]\d{1,2}[\-/.](?:\d{4}|\d{2})\b"
    r"|\b(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b"
    rf"|\b{_MON}\.?[ \t]+{_DAY}(?:,[ \t]*|[ \t]+)(?:of[ \t]+)?{_YEAR}\b"
    rf"|\b{_DAY}[ \t\-/.]+(?:of[ \t]+)?{_MON}\.?(?:,[ \t]*|[ \t\-/.]+){_YEAR}\b"
    rf"|\b{_MON}\.?[ \t\-/,]+(?:of[ \t]+)?(?:18|19|20)\d{{2}}\b"
    rf"|\b{_MON}\.?[ \t]+{_DAY}\b(?![ \t]*(?:mm|cm|ml|%))"
    rf"|\b{_DAY}[ \t]+(?:of[ \t]+)?{_MON}\b")

#: id-like tokens: letters then 5+ digits (A1234567, ACC12345), or 7+ digits (MRNs, phone numbers)
ID_LIKE = re.compile(r"\b(?:[A-Za-z]{1,5}-?\d{5,}[A-Za-z0-9]*|\d{7,})\b")

#: an institution: capitalized words and a generic tail (Saint Elsewhere Hospital, St. Mary's Medical Center)
_CAPWORD = r"[A-Z][A-Za-z'\u2019\-]*\.?"
INSTITUTION = re.compile(
    rf"\b(?:{_CAPWORD}[ \t]+(?:(?:of|the|and|&)[ \t]+)?){{1,4}}"
    r"(?i:hospitals?|medical[ \t]+cent(?:er|re)|clinic|infirmary|health[ \t]*care|health[ \t]+(?:system|cent(?:er|re))"
    r"|imaging[ \t]+cent(?:er|re)|hospice|sanatorium)\b"
    rf"(?:[ \t]+of[ \t]+{_CAPWORD}(?:[ \t]+{_CAPWORD})?)?")
GENERIC_PLACE_WORDS = frozenset({"hospital", "hospitals", "medical", "center", "centre", "clinic", "infirmary",
                                 "health", "healthcare", "system", "imaging", "university", "the", "of", "and"})

#: runs of placeholders written as one
_RUNS = re.compile(r"\[removed\](?:[ \t]+\[removed\])+")


def _labelled(match: re.Match) -> str:
    """A label stays, what it labels goes: "MRN: 123456" → "MRN: [removed]"; a label glued to its value goes
    with it ("MRN123456", "ACC999" → "[removed]")."""
    label = match.group("label")
    if label[-1:].isalnum() and match.group(0)[len(label):][:1].isalnum():
        return REMOVED
    return f"{label.rstrip()} {REMOVED}"


def scrub_text(text: str) -> str:
    """The pattern layer alone (for text whose headers are unknown); idempotent."""
    return _late_patterns(_early_patterns(text))


def _early_patterns(text: str) -> str:
    """What is found by its shape, before the header's words are removed (so ``MRN123456`` goes whole)."""
    text = UID_LIKE.sub(UID_MARK, text)
    text = PN_SYNTAX.sub(REMOVED, text)
    text = EMAIL.sub(REMOVED, text)
    text = ID_LABELED.sub(_labelled, text)
    text = PHONE.sub(REMOVED, text)
    return DATES.sub(REMOVED, text)


def _late_patterns(text: str) -> str:
    """What is found by its context, after the header's words are removed (so "Mrs. [removed]" goes whole)."""
    text = ID_LIKE.sub(REMOVED, text)
    text = INSTITUTION.sub(REMOVED, text)
    text = LABEL_NAME.sub(_labelled, text)
    text = TITLE_NAME.sub(REMOVED, text)
    return _RUNS.sub(REMOVED, text)


# -- what the headers say ---------------------------------------------------------------------


def name_parts(value: str) -> list[str]:
    """The parts of a DICOM person name (``Doe^Jane^Q^Mrs``, ``Doe, Jane``), 2 letters or longer, without titles
    and degrees."""
    parts = [p.strip(".") for p in re.split(r"[\^=\s,]+", value)]
    return [p for p in parts if len(p) >= 2 and p.lower() not in NOT_NAME_PARTS]


def date_pattern(value: str) -> str:
    """A regex for a DICOM date (YYYYMMDD, or the date of a DT) in the common written forms; the literal text
    otherwise."""
    found = re.fullmatch(r"(\d{4})(\d{2})(\d{2})(?:\d{0,6}(?:\.\d{1,6})?(?:[+\-]\d{4})?)?", value.strip())
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


def place_phrases(value: str, parts: bool = True, strip: bool = False) -> list[str]:
    """A place (institution, address, phone number) as phrases to remove: the whole; with ``parts`` its
    comma-separated parts (``Springfield`` of ``12 Main Street, Springfield``); with ``strip`` the name without
    its generic words (``Saint Elsewhere`` of ``Saint Elsewhere Hospital``: institution names only, since a
    department's "Chest Imaging" would take "Chest" from every report)."""
    value = " ".join(value.replace("^", " ").split())
    phrases = {value}
    if parts:
        phrases |= {part.strip() for part in value.split(",")}
    if strip:
        words = value.replace(",", " ").split()
        while words and words[-1].lower() in GENERIC_PLACE_WORDS:
            words.pop()
        while words and words[0].lower() in GENERIC_PLACE_WORDS:
            words.pop(0)
        phrases.add(" ".join(words))
    return [p for p in phrases if len(p) >= 4 and any(c.isalnum() for c in p) and p.lower() not in GENERIC_PLACE_WORDS]


def _usable_id(value: str) -> bool:
    """Ids shorter than 3 characters (or all-digit ids shorter than 4) would take ordinary numbers with them."""
    value = value.strip()
    return len(value) >= 3 and not (value.isdigit() and len(value) < 4)


_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[\-_/.][A-Za-z0-9]+)*")
_PART = re.compile(r"[A-Za-z0-9]+")


#: a run of letters: how :class:`ArchiveNames` cuts text (``O'Brien`` → ``O``, ``Brien``)
_LETTERS = re.compile(r"[^\W\d_]+")
_DIGIT = re.compile(r"\d")
#: what may stand between two parts of one written name: spaces, a comma or a caret (not a full stop: "chest
#: wall. John …" is two sentences)
_NAME_GAP = re.compile(r"[ \t]*[,^]?[ \t]*")


class ArchiveNames:
    """Every person-name part the headers of a whole archive carry, removed from any text in one pass.

    A report may name another patient ("images of Jane Roe filed in error") or staff who appear only in other
    studies' headers; the per-patient layer of :func:`scrubber` does not know them. Built once per archive (a set
    of the parts' lower-case letter runs: ``smith-jones`` → ``smith``, ``jones``), applied with one compiled
    letter-run matcher and a set look-up per word: time linear in the text, memory one string per distinct part,
    whatever the number of names (133,000 random names standing for a 200,000-study archive: 61,000 distinct parts,
    10 MiB to build, about 1 ms per 1.5 KB report).

    A part that is also an ordinary word of reports (``ordinary``: ``Wall``, ``Small``, ``White``, ``May`` …) is
    removed only beside another name part or a removed name (``John Wall``, ``Wall, John``, ``WALL^JOHN``; a
    title before it is the pattern layer's): removed everywhere it would take "chest wall" and "small bowel" from
    every report of the archive. The report's own patient's and staff's parts are removed everywhere by the
    per-patient layer, ordinary or not."""

    def __init__(self, persons: Iterable[str] = (), ordinary: Iterable[str] = ()):
        """``persons``: person names, their parts joined by ``^`` (``doe^jane``); ``ordinary``: ordinary words."""
        ordinary = {w.lower() for w in ordinary}
        found, pairs = set(), set()
        for person in persons:  # text is read as letter runs: a part is its letter runs (none if it has digits)
            parts = [p for part in person.lower().split("^") if not _DIGIT.search(part)
                     for p in _LETTERS.findall(part) if len(p) >= 2]
            found.update(parts)
            soft = ordinary.intersection(parts)
            if len(soft) > 1:
                pairs.update((a, b) for a in soft for b in soft if a != b)
        self.sure = frozenset(p for p in found if p not in ordinary)
        self.soft = frozenset(p for p in found if p in ordinary)
        self.pairs = frozenset(pairs)  # ordinary words that are parts of one name: "Small White" is a name

    def __len__(self) -> int:
        return len(self.sure) + len(self.soft)

    def __call__(self, text: str) -> str:
        if not self.sure and not self.soft:
            return text
        words = list(_LETTERS.finditer(text))
        # 2: a name part to remove; 1: a part that is also an ordinary word; 3: a removed name ([removed])
        kinds = []
        for m in words:
            word = m.group(0).lower()
            if word == "removed" and text[m.start() - 1:m.start()] == "[" and text[m.end():m.end() + 1] == "]":
                kinds.append(3)
            else:
                kinds.append(2 if word in self.sure else 1 if word in self.soft else 0)
        spans = [m.span() for i, m in enumerate(words)
                 if kinds[i] == 2 or (kinds[i] == 1 and any(self._beside(text, words, kinds, i, j)
                                                            for j in (i - 1, i + 1)))]
        if not spans:
            return text
        out, last = [], 0
        for start, end in spans:
            out += [text[last:start], REMOVED]
            last = end
        out.append(text[last:])
        return "".join(out)

    def _beside(self, text: str, words: list[re.Match], kinds: list[int], i: int, j: int) -> bool:
        """Whether word ``j`` is written next to the ordinary word ``i`` and makes it a name: a name part, a removed
        name, or an ordinary word that is a part of the same person's name."""
        if not 0 <= j < len(words) or kinds[j] == 0:
            return False
        if kinds[j] == 1 and (words[i].group(0).lower(), words[j].group(0).lower()) not in self.pairs:
            return False
        lo, hi = sorted((i, j))
        gap = text[words[lo].end() + (kinds[lo] == 3):words[hi].start() - (kinds[hi] == 3)]
        return bool(_NAME_GAP.fullmatch(gap))


def ordinary_words() -> frozenset[str]:
    """Words of reports that may also be name parts (:class:`ArchiveNames`): ldpo's list
    (``common/data/report_words.txt``) and every word of its findings vocabulary."""
    from importlib import resources

    from .mentions import load_vocabulary

    text = resources.files("ldpo.common").joinpath("data/report_words.txt").read_text(encoding="utf-8")
    words = {w.lower() for line in text.splitlines() if not line.startswith("#") for w in line.split()}
    for spelling, _ in load_vocabulary(None).spellings:
        words.update(_LETTERS.findall(spelling.lower()))
    return frozenset(words)


def scrubber(names: Iterable[str] = (), ids: Iterable[str] = (), dates: Iterable[str] = (),
             phrases: Iterable[str] = (), known_ids: Iterable[str] = (),
             archive_names: ArchiveNames | None = None) -> Callable[[str], str]:
    """A function that removes from text what the headers say (see the module docstring), then the patterns;
    ``archive_names``: every name part of the archive (:class:`ArchiveNames`), removed from every report."""
    def alternation(items: Iterable[str]) -> str:
        return "|".join(items)

    phrases = sorted({" ".join(p.split()) for p in phrases if p and p.strip()}, key=len, reverse=True)
    phrase_re = [r"\s+".join(re.escape(w) for w in p.split()) for p in phrases]
    ids = sorted({i.strip() for i in ids if i and _usable_id(i)}, key=len, reverse=True)
    inside = [re.escape(i) for i in ids if len(i) >= 5]  # also inside longer tokens: MRN4829170
    whole = [re.escape(i) for i in ids if len(i) < 5]
    names = sorted({n.strip() for n in names if n and len(n.strip()) >= 2}, key=len, reverse=True)
    date_re = [date_pattern(d) for d in sorted({d.strip() for d in dates if d and d.strip()})]

    steps: list[re.Pattern] = []
    if phrase_re:
        steps.append(re.compile(rf"(?<!\w)(?:{alternation(phrase_re)})(?!\w)", re.IGNORECASE))
    if inside:
        steps.append(re.compile(alternation(inside), re.IGNORECASE))
    bounded = whole + date_re + [re.escape(n) for n in names]
    if bounded:
        steps.append(re.compile(rf"(?<![^\W_])(?:{alternation(bounded)})(?![^\W_])", re.IGNORECASE))
    known = {k.strip().lower() for k in known_ids if k and _usable_id(k)}

    def scrub(text: str) -> str:
        text = _early_patterns(text)
        for step in steps:
            text = step.sub(REMOVED, text)
        if archive_names is not None:
            text = archive_names(text)
        if known:
            for token in (_TOKEN, _PART):
                text = token.sub(lambda m: REMOVED if m.group(0).lower() in known else m.group(0), text)
        return _late_patterns(text)

    return scrub
