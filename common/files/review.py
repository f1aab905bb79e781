"""A reviewer's ``review.csv`` (``label,name,merge_into``), as the report page downloads it.

One row per category: ``label`` (the category's label value), ``name`` (free text,
may be empty) and ``merge_into`` (another category's label value, or empty). Read by
``relabel`` (merges and names) and ``export-folders`` (names).

A category can be kept in two groups: ``merge_into`` may list several labels joined by
``;`` (the multi-label separator of :mod:`ldpo.common.files.labels`), e.g. ``5;8`` (the
category's images join both 5 and 8) or ``3;8`` on category 3 (it stays itself and its
images join 8 too). ``relabel`` then writes a multi-label file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..errors import InputError
from .labels import SEPARATOR
from .tables import csv_rows

COLUMNS = ("label", "name", "merge_into")


@dataclass
class Review:
    names: dict[int, str] = field(default_factory=dict)   # label -> name ("" = unnamed)
    merge_into: dict[int, tuple[int, ...]] = field(default_factory=dict)  # label -> the labels it joins
    source: str = "review.csv"

    @property
    def labels(self) -> list[int]:
        return sorted(self.names)

    def resolve(self) -> dict[int, int]:
        """Every reviewed label → the label it ends up in, following merges transitively
        (a target the review does not list ends the chain). A review that keeps a category in
        two groups has no single answer: use :meth:`resolve_sets`."""
        sets = self.resolve_sets()
        several = next((c for c, s in sets.items() if len(s) != 1), None)
        if several is not None:
            raise InputError(f"{self.source}: category {several} is kept in {len(sets[several])} groups; "
                             "this command takes one group per category")
        return {c: s[0] for c, s in sets.items()}

    def resolve_sets(self) -> dict[int, tuple[int, ...]]:
        """Every reviewed label → the labels it ends up in (sorted), following merges
        transitively: a category listed in its own ``merge_into`` stays, and joins the others.

        A chain that comes back to itself (3 → 5 → 3) is an input error naming the file.
        """
        final: dict[int, tuple[int, ...]] = {}

        def visit(node: int, path: list[int]) -> tuple[int, ...]:
            if node in final:
                return final[node]
            ends: set[int] = set()
            for target in self.merge_into.get(node, (node,)):
                if target == node:
                    ends.add(node)
                    continue
                if target in path:
                    cycle = " → ".join(str(x) for x in path[path.index(target):] + [target])
                    raise InputError(f"{self.source}: merges form a cycle ({cycle}): one category of it must "
                                     "keep merge_into empty")
                ends.update(visit(target, path + [target]) if target in self.names else (target,))
            final[node] = tuple(sorted(ends))
            return final[node]

        for start in self.labels:
            visit(start, [start])
        return final

    def group_name(self, root: int, members: list[int]) -> str:
        """The name of the category a merge group becomes: the target's, else its members' first."""
        if self.names.get(root):
            return self.names[root]
        return next((self.names[m] for m in sorted(members) if self.names.get(m)), "")


def _label(raw: str, what: str, source: str, line: int) -> int:
    text = raw.strip()
    if not re.fullmatch(r"-?[0-9]+", text):  # ASCII digits only: not int()'s 1_0, +3 or other scripts' digits
        raise InputError(f"{source}: line {line}: {what} {text!r} is not an integer label (ASCII digits 0-9 only)")
    value = int(text)
    if value < 0:
        raise InputError(f"{source}: line {line}: {what} {value} is negative")
    return value


def read_review(path: str | os.PathLike) -> Review:
    """Read and check a review CSV: a header with ``label`` (``name``, ``merge_into`` optional),
    integer labels, no label twice (merge targets are checked against the labels by the caller).

    Read with the common CSV reader (:func:`ldpo.common.files.tables.csv_rows`): UTF-8 with or
    without BOM, and a name the writer (or the report page) quoted against spreadsheet
    formulas (``'=x``) reads back as it was typed (``=x``)."""
    name = str(path)
    review = Review(source=name)
    rows = csv_rows(path, "review CSV", ["label"])
    for line, row in rows:
        if "name" not in row and "merge_into" not in row:
            raise InputError(f"{name}: not a review CSV (the header needs 'label' and 'name' and/or 'merge_into')")
        label = _label(row["label"], "label", name, line)
        if label in review.names:
            raise InputError(f"{name}: line {line}: label {label} is reviewed twice")
        review.names[label] = " ".join(row.get("name", "").split())
        targets = [t for t in row.get("merge_into", "").split(SEPARATOR) if t.strip()]
        into = tuple(dict.fromkeys(_label(t, "merge_into", name, line) for t in targets))
        if into and into != (label,):
            review.merge_into[label] = into
    if not review.names:
        raise InputError(f"{name}: no rows")
    return review
