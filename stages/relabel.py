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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ldpo.common.cli import CommonOptions, Tool, opt, positional
from ldpo.common.errors import InputError
from ldpo.common.labels import read_labels, write_labels
from ldpo.common.review import read_review

log = logging.getLogger("ldpo")


@dataclass(kw_only=True)
class Options(CommonOptions):
    labels: str = positional("labels CSV (id,label) the review was made on, e.g. WORK/final/labels.csv",
                             role="input")
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
        labels = read_labels(opts.labels)
        review = read_review(opts.review)
        present = set(labels.classes)
        absent = [c for c in review.labels if c not in present]
        if absent:
            raise InputError(f"{opts.review}: label {absent[0]} has no image in {opts.labels} "
                             "(was the review made on another labels file?)")
        targets = sorted(t for t in review.merge_into.values() if t not in present)
        if targets:
            raise InputError(f"{opts.review}: merge_into {targets[0]} is not a category of {opts.labels}")
        final = review.resolve()
        root = np.array([final.get(int(c), int(c)) for c in labels.labels.tolist()], dtype=np.int64)
        roots = sorted(set(root.tolist()))
        number = {r: i for i, r in enumerate(roots)}
        members: dict[int, list[int]] = {}
        for c in present:
            members.setdefault(final.get(c, c), []).append(c)
        names = {r: review.group_name(r, members[r]) for r in roots}
        new = np.array([number[r] for r in root.tolist()], dtype=np.int64)
        write_labels(opts.out, labels.ids, new, {"name": [names[r] for r in root.tolist()],
                                                 "previous_label": labels.labels.tolist()})
        merged = sum(1 for c in present if final.get(c, c) != c)
        log.info("categories: %d -> %d (%d merged, %d named)", len(present), len(roots), merged,
                 sum(1 for r in roots if names[r]))
        return 0


TOOL = RelabelTool
main = RelabelTool.console
