"""Helpers the tests (and tests/bench/bench_identifiers.py) share: the environment a test's loop runs in,
CSV rows, the start of a small workspace, a folder tree's fingerprint and a refusal that changes nothing
in it, and the identifiers a DICOM archive's headers carry.

Standard library only at import (numpy, ldpo and pydicom are imported where they are used), and no
pytest: a bench imports this module too (``sys.path`` holding ``tests/``, as pytest's own import of
the tests does).
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import stat
import warnings
from pathlib import Path

# -- the loop's environment -----------------------------------------------------------------------

#: ``cluster --scan-steps`` of the loops the tests run (``CLUSTER_ARGS``). The stage's default, 1000 steps of
#: 256 rows, is sized for archives; on a test's few dozen images it is about 8 s of every cluster call and
#: a third of a small loop. The tests that run a loop for its bookkeeping (resume, refusals, outputs, the
#: tree, the report) take 200; the one that asserts the categories against the truth
#: (test_loop_learns_from_random_init) runs the defaults.
QUICK_CLUSTER = "--scan-steps 200"


def loop_env(**extra: str) -> dict[str, str]:
    """The environment of a test's ``ldpo-loop.sh`` (or ``make``) run: this Python's commands first on PATH,
    the loop quiet, :data:`QUICK_CLUSTER`; ``extra`` on top (``CLUSTER_ARGS=""`` for the stage's defaults)."""
    import sys

    bin_dir = Path(sys.executable).parent
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "LDPO_QUIET": "1",
            "CLUSTER_ARGS": QUICK_CLUSTER, **extra}


# -- CSV rows --------------------------------------------------------------------------------------

def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


# -- a small workspace -----------------------------------------------------------------------------

def toy_workspace(ws: Path, toy_dir: Path, rng) -> list[str]:
    """``ws/images.h5`` (a copy of the toy set's in ``toy_dir``), ``ws/labels.csv`` (its truth) and
    ``ws/feats.h5`` (8 random features an image drawn from the numpy generator ``rng``, which the caller
    may go on drawing from): what the hostile tests' workspaces start from. Returns the images' ids."""
    import numpy as np

    from ldpo.common.files.labels import read_labels, write_labels
    from ldpo.common.files.stores import open_store, write_store

    shutil.copy(toy_dir / "images.h5", ws / "images.h5")
    truth = read_labels(toy_dir / "truth.csv")
    write_labels(ws / "labels.csv", truth.ids, truth.labels)
    with open_store(ws / "images.h5") as store:
        ids = store.ids
    write_store(ws / "feats.h5", ids, {"stage": "test"}, features=rng.normal(size=(len(ids), 8)).astype(np.float32))
    return ids


# -- a folder tree, before and after ---------------------------------------------------------------

_KINDS = {stat.S_IFIFO: "fifo", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
          stat.S_IFSOCK: "socket"}


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (relative to it) with what it is: a regular file its SHA-256, a link
    ``link to TARGET`` (never followed), a folder ``dir``, any other special file its kind, by
    ``lstat`` alone (reading a FIFO would block). Two snapshots are equal only when no file changed,
    none was added or removed, no link points elsewhere and no folder came or went."""
    found = {}
    for path in sorted(root.rglob("*")):  # rglob does not descend into linked folders
        rel = str(path.relative_to(root))
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            found[rel] = f"link to {os.readlink(path)}"
        elif stat.S_ISREG(mode):
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISDIR(mode):
            found[rel] = "dir"
        else:
            found[rel] = _KINDS.get(stat.S_IFMT(mode), f"special {stat.S_IFMT(mode):o}")
    return found


def refused(cli, ws: Path, argv: list, named) -> str:
    """Run ``argv`` with ``cli`` (the conftest fixture) and ``-q``: exit 2; stderr exactly one line
    ``COMMAND: error: …`` that names ``named``, without a traceback or a warning; and nothing under ``ws``
    changed, added or removed (:func:`snapshot` before and after). Returns the line."""
    command = argv[0] if argv[0] != "toy-data" else f"toy-data {argv[1]}"
    before = snapshot(ws)
    r = cli(*argv, "-q")
    assert r.code == 2, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err and "Warning" not in r.err, r.err
    assert lines[0].startswith(f"{command}: error: "), lines[0]
    assert str(named) in lines[0], (str(named), lines[0])
    assert snapshot(ws) == before, "an earlier output changed, or something was written or left behind"
    return lines[0]


# -- a DICOM archive's identifiers -----------------------------------------------------------------

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

#: header attributes whose value is an identifier as it stands
ID_KEYS = ("PatientID", "OtherPatientIDs", "AccessionNumber", "InstitutionName", "InstitutionAddress",
           "PatientAddress", "StationName")
#: person-name attributes (each name in the forms a report writes it)
NAME_KEYS = ("PatientName", "ReferringPhysicianName", "NameOfPhysiciansReadingStudy", "PerformingPhysicianName",
             "OperatorsName")
#: date attributes (each date in the forms a report writes it)
DATE_KEYS = ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


def date_forms(value: str) -> set[str]:
    """A YYYYMMDD date in the forms reports write it."""
    y, m, d = int(value[:4]), int(value[4:6]), int(value[6:8])
    month = MONTHS[m - 1]
    return {value, f"{m:02d}/{d:02d}/{y}", f"{m}/{d}/{y % 100:02d}", f"{y}-{m:02d}-{d:02d}", f"{month} {d}, {y}",
            f"{d} {month[:3]} {y}"}


def person_forms(value: str) -> set[str]:
    """A DICOM person name's parts and the ways a report writes the whole name."""
    parts = [p for p in value.split("^") if p]
    forms = set(parts)
    if len(parts) >= 2:
        last, first = parts[0], parts[1]
        forms |= {value, f"{first} {last}", f"{last}, {first}", f"{last}^{first}"}
    return forms


def header_identifiers(dicom: Path) -> set[str]:
    """Every identifier the DICOM headers under ``dicom`` carry: each person name (its parts and written
    forms), ids, accessions, institutions (and their first two words: Saint Elsewhere), addresses,
    station names, and dates in their written forms. Files pydicom cannot read are passed over."""
    import pydicom

    found: set[str] = set()
    for path in sorted(p for p in dicom.rglob("*") if p.is_file()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the toy archive's broken objects
            continue
        for key in NAME_KEYS:
            if ds.get(key):
                found |= person_forms(str(ds.get(key)))
        for key in ID_KEYS:
            if ds.get(key):
                found.add(str(ds.get(key)))
        for key in DATE_KEYS:
            if ds.get(key):
                found |= date_forms(str(ds.get(key)))
        if ds.get("InstitutionName"):
            found.add(" ".join(str(ds.InstitutionName).split()[:2]))
    return found
