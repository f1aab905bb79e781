"""``relabel``: apply a reviewer's ``review.csv`` (names and merges) to a labels CSV.

``review.csv`` has one row per category, ``label,name,merge_into``, as the report page
(``report``) downloads it. A category with ``merge_into`` set joins that category;
merges are followed transitively (3 → 5 and 5 → 8 put 3 and 5 into 8); a cycle
(3 → 5 → 3) is an error. Categories the review does not list stay as they are. The
resulting categories are renumbered 0..K'-1 in the order of the label value they end
up in, so the output can seed a new run (``ldpo-loop.sh --init-labels NEW.csv``).

Writes OUT: ``id,label,name,previous_label`` (``name``: the reviewer's name of the
category, from the merge target, else from the first named member; may be empty).
Prints ``categories: K -> K'`` on stderr.

Several labels per image (:mod:`ldpo.common.files.labels`): LABELS may be a multi-label file
(``0;2``, empty = none), and a review may keep a category in two groups (``merge_into``
``5;8``, or ``3;8`` on category 3 to keep it and join 8). When some image then carries
several labels (or none), OUT is a multi-label file: ``label`` and ``name`` list them in
the same order, joined by ``;``; ``previous_label`` is the input cell as it was. Otherwise
OUT is an ordinary single-label file, as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..common.cli import CommonOptions, Tool, opt, positional
from ..common.errors import InputError
from ..common.files.labels import SEPARATOR, label_cell, read_multilabels, write_labels, write_multilabels
from ..common.files.review import read_review

log = logging.getLogger("ldpo")


@dataclass(kw_only=True)
class Options(CommonOptions):
    labels: str = positional("labels CSV (id,label; a multi-label file too) the review was made on, e.g. "
                             "WORK/final/labels.csv", role="input")
    review: str = positional("review CSV (label,name,merge_into), as the report page downloads it", role="input")
    out: str = opt("output labels CSV (id,label,name,previous_label); - for stdout", role="output")


class RelabelTool(Tool):
    name = "relabel"
    description = ("Apply a review (label,name,merge_into) to a labels CSV: merges followed transitively "
                   "(a cycle is an error), names kept as a `name` column, categories renumbered 0..K'-1 "
                   "so the result can be a new run's --init-labels.")
    example = ("relabel runs/a/final/labels.csv ~/Downloads/review.csv --out reviewed.csv\n"
               "pipelines/ldpo-loop.sh --images images.h5 --work runs/b --init-labels reviewed.csv")
    Options = Options

    def main(self, opts: Options) -> int:
        labels = read_multilabels(opts.labels)
        review = read_review(opts.review)
        present = set(labels.classes)
        absent = [c for c in review.labels if c not in present]
        if absent:
            raise InputError(f"{opts.review}: label {absent[0]} has no image in {opts.labels} "
                             "(was the review made on another labels file?)")
        targets = sorted(t for into in review.merge_into.values() for t in into if t not in present)
        if targets:
            raise InputError(f"{opts.review}: merge_into {targets[0]} is not a category of {opts.labels}")
        final = review.resolve_sets()
        groups = [sorted({r for c in cell for r in final.get(c, (c,))}) for cell in labels.sets]
        roots = sorted({r for g in groups for r in g})
        number = {r: i for i, r in enumerate(roots)}
        members: dict[int, list[int]] = {}
        for c in present:
            for r in final.get(c, (c,)):
                members.setdefault(r, []).append(c)
        names = {r: review.group_name(r, members[r]) for r in roots}
        new = [[number[r] for r in g] for g in groups]
        previous = [label_cell(cell) for cell in labels.sets]
        if labels.is_multi or any(len(g) != 1 for g in groups):
            joined = next((r for r in roots if SEPARATOR in names[r]), None)
            if joined is not None:  # "a;b" would read back as two names
                raise InputError(f"{opts.review}: the name {names[joined]!r} (category {joined}) holds "
                                 f"{SEPARATOR!r}, which joins the names of a multi-label file's cell: rename it")
            write_multilabels(opts.out, labels.ids, new, {"name": [SEPARATOR.join(names[r] for r in g) for g in groups],
                                                          "previous_label": previous})
        else:
            write_labels(opts.out, labels.ids, np.array([g[0] for g in new], dtype=np.int64),
                         {"name": [names[g[0]] for g in groups], "previous_label": previous})
        merged = sum(1 for c in present if final.get(c, (c,)) != (c,))
        several = sum(1 for c in present if len(final.get(c, (c,))) > 1)
        log.info("categories: %d -> %d (%d merged, %d named%s)", len(present), len(roots), merged,
                 sum(1 for r in roots if names[r]), f", {several} kept in several groups" if several else "")
        return 0


TOOL = RelabelTool
main = RelabelTool.console
