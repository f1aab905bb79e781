"""Labels CSV: a header with at least ``id,label`` (label a non-negative integer, ASCII digits).

Extra columns are kept on read and ignored by the stages. ``-`` is stdin/stdout.
Encoding and atomic writing follow :mod:`ldpo.common.files.tables` (UTF-8 with or without BOM).
Rows join stores by id, never by position: :func:`align` puts labels in a store's
row order and turns unknown, missing or duplicate ids into one-line input errors.

**Multi-label files** (one id, several labels): still one row per id; the ``label`` cell
holds the id's labels joined by ``;`` (``0;2``, ascending, no label twice), and an
**empty** cell is an id with no positive label (a true negative: an image that shows none
of the classes). A single-label file is a multi-label file whose cells each hold one label.
:func:`read_multilabels` reads both (commands that accept several labels: ``finetune
--multi-label``, ``relabel``); :func:`read_labels` (every single-label command) refuses a
cell with ``;`` or an empty cell with one line naming the file, line and form, never
keeping only the first label.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..errors import InputError
from .tables import read_cell, read_text, write_csv

#: the largest label a labels CSV may hold (class numbers, not measurements)
MAX_LABEL = 2**31 - 1
#: a label as written: ASCII digits only (not Python's int() forms: ``1_0``, ``+3``, `` 3``,
#: Arabic-Indic or full-width digits)
_ASCII_DIGITS = re.compile(r"[0-9]+")
#: joins the labels of one id in a multi-label file's ``label`` cell
SEPARATOR = ";"


@dataclass
class Labels:
    ids: list[str]
    labels: np.ndarray  # int64 [N]
    extra: dict[str, list[str]] = field(default_factory=dict)
    source: str = "labels"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def classes(self) -> list[int]:
        return sorted(int(c) for c in np.unique(self.labels))

    def mapping(self) -> dict[str, int]:
        return dict(zip(self.ids, self.labels.tolist()))


def read_labels(path: str | os.PathLike) -> Labels:
    """Read a labels CSV (``-`` = stdin), checking header, ids and integer labels: one label
    per id (a multi-label file is refused with one line; see :func:`read_multilabels`)."""
    name, ids, cells, extra = _read_rows(path, multi=False)
    return Labels(ids, np.asarray([c[0] for c in cells], dtype=np.int64), extra, source=name)


@dataclass
class MultiLabels:
    """A multi-label file: per id a sorted tuple of labels (``()``: a true negative)."""

    ids: list[str]
    sets: list[tuple[int, ...]]
    extra: dict[str, list[str]] = field(default_factory=dict)
    source: str = "labels"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def classes(self) -> list[int]:
        return sorted({c for s in self.sets for c in s})

    @property
    def is_multi(self) -> bool:
        """True when some id has no label or several (the file is not single-label)."""
        return any(len(s) != 1 for s in self.sets)

    def mapping(self) -> dict[str, tuple[int, ...]]:
        return dict(zip(self.ids, self.sets))


def read_multilabels(path: str | os.PathLike) -> MultiLabels:
    """Read a labels CSV whose ``label`` cells may hold several labels (``0;2``) or none (empty)."""
    name, ids, cells, extra = _read_rows(path, multi=True)
    return MultiLabels(ids, cells, extra, source=name)


def label_cell(labels: Sequence[int]) -> str:
    """The ``label`` cell of a multi-label file: ``0;2``; empty for none."""
    return SEPARATOR.join(str(int(c)) for c in sorted(set(int(c) for c in labels)))


def _read_rows(path: str | os.PathLike, multi: bool):
    name = str(path)
    text = read_text(path, "labels file")
    reader = csv.reader(io.StringIO(text))
    header = [read_cell(h) for h in next(reader, None) or []]
    if not header or "id" not in header or "label" not in header:
        raise InputError(f"{name}: not a labels CSV (the header needs 'id' and 'label' columns)")
    id_col, label_col = header.index("id"), header.index("label")
    others = [(i, h) for i, h in enumerate(header) if i not in (id_col, label_col)]
    ids: list[str] = []
    cells: list[tuple[int, ...]] = []
    extra: dict[str, list[str]] = {h: [] for _, h in others}
    seen: set[str] = set()
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(id_col, label_col):
            raise InputError(f"{name}: line {line_no}: too few columns")
        ident = read_cell(row[id_col]).strip()
        if not ident:
            raise InputError(f"{name}: line {line_no}: empty id")
        if ident in seen:
            hint = "" if multi else f" (several labels of one id go in one cell, e.g. 0{SEPARATOR}2)"
            raise InputError(f"{name}: line {line_no}: duplicate id {ident!r}{hint}")
        cell = row[label_col]
        if not multi and (SEPARATOR in cell or not cell):
            what = f"label {cell!r} holds several labels" if cell else "empty label (a true negative)"
            raise InputError(f"{name}: line {line_no}: {what}: a multi-label file, and this command takes "
                             "exactly one label per id")
        parts = cell.split(SEPARATOR) if cell else []
        values = [_label_value(p.strip() if multi else p, name, line_no) for p in parts]
        if len(set(values)) != len(values):
            raise InputError(f"{name}: line {line_no}: label cell {cell!r} names a label twice")
        seen.add(ident)
        ids.append(ident)
        cells.append(tuple(sorted(values)))
        for i, h in others:
            extra[h].append(read_cell(row[i]) if i < len(row) else "")
    if not ids:
        raise InputError(f"{name}: no labels in the file")
    return name, ids, cells, extra


def _label_value(text: str, name: str, line_no: int) -> int:
    if not _ASCII_DIGITS.fullmatch(text):
        if _ASCII_DIGITS.fullmatch(text.removeprefix("-")):
            raise InputError(f"{name}: line {line_no}: label {text} is negative")
        raise InputError(f"{name}: line {line_no}: label {text!r} is not an integer (ASCII digits 0-9 only)")
    value = int(text)
    if value > MAX_LABEL:
        raise InputError(f"{name}: line {line_no}: label {value} is too large (at most {MAX_LABEL})")
    return value


def write_labels(path: str | os.PathLike, ids: Sequence[str], labels: Sequence[int] | np.ndarray,
                 extra: dict[str, Sequence] | None = None) -> None:
    """Write ``id,label[,extra…]`` to ``path`` (atomically) or stdout for ``-``."""
    labels = np.asarray(labels)
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    extra = extra or {}
    columns = [extra[h] for h in extra]
    rows = ([ident, int(lab), *(c[i] for c in columns)] for i, (ident, lab) in enumerate(zip(ids, labels.tolist())))
    write_csv(path, ["id", "label", *extra], rows)


def write_multilabels(path: str | os.PathLike, ids: Sequence[str], sets: Sequence[Sequence[int]],
                      extra: dict[str, Sequence] | None = None) -> None:
    """Write a multi-label file: ``id,label[,extra…]`` with ``label`` cells ``0;2`` (empty: none)."""
    if len(ids) != len(sets):
        raise ValueError(f"{len(ids)} ids but {len(sets)} label sets")
    extra = extra or {}
    columns = [extra[h] for h in extra]
    rows = ([ident, label_cell(s), *(c[i] for c in columns)] for i, (ident, s) in enumerate(zip(ids, sets)))
    write_csv(path, ["id", "label", *extra], rows)


def align_multi(labels: MultiLabels, store_ids: Sequence[str], classes: Sequence[int], store_name: str = "store",
                allow_missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, Y)``: the store rows that have a label cell (all, unless ``allow_missing``) and
    their targets, float32 ``[len(rows), len(classes)]`` (1 = the class is among the id's labels).
    Unknown ids are errors, as for :func:`align`."""
    index = {ident: i for i, ident in enumerate(store_ids)}
    unknown = [ident for ident in labels.ids if ident not in index]
    if unknown:
        raise InputError(f"{labels.source}: {len(unknown)} id(s) not in {store_name}, e.g. {unknown[0]!r}")
    have = np.zeros(len(store_ids), dtype=bool)
    column = {c: j for j, c in enumerate(classes)}
    full = np.zeros((len(store_ids), len(classes)), dtype=np.float32)
    for ident, labs in zip(labels.ids, labels.sets):
        row = index[ident]
        have[row] = True
        full[row, [column[c] for c in labs]] = 1.0
    if not have.all() and not allow_missing:
        first = store_ids[int(np.argmin(have))]
        raise InputError(f"{labels.source}: {int((~have).sum())} id(s) of {store_name} have no label cell, "
                         f"e.g. {first!r}")
    rows = np.flatnonzero(have)
    return rows, full[rows]


def align(labels: Labels, store_ids: Sequence[str], store_name: str = "store",
          allow_missing: bool = False, allow_unknown: bool = False) -> np.ndarray:
    """Labels in the store's row order; ``-1`` marks rows without a label (``allow_missing``).

    Unknown ids (in the labels, not in the store) and missing ids (in the store, not in
    the labels) are errors unless allowed.
    """
    index = {ident: i for i, ident in enumerate(store_ids)}
    out = np.full(len(store_ids), -1, dtype=np.int64)
    unknown = [ident for ident in labels.ids if ident not in index]
    if unknown and not allow_unknown:
        raise InputError(f"{labels.source}: {len(unknown)} id(s) not in {store_name}, e.g. {unknown[0]!r}")
    for ident, lab in zip(labels.ids, labels.labels.tolist()):
        row = index.get(ident)
        if row is not None:
            out[row] = lab
    missing = int((out < 0).sum())
    if missing and not allow_missing:
        first = store_ids[int(np.argmax(out < 0))]
        raise InputError(f"{labels.source}: {missing} id(s) of {store_name} have no label, e.g. {first!r}")
    return out


def contiguous(labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Renumber labels to 0..K-1; return the new labels and the original class list."""
    classes, inverse = np.unique(labels, return_inverse=True)
    return inverse.astype(np.int64), [int(c) for c in classes]
