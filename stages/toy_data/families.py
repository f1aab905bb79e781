"""Families of the toy sets' truth classes, for judging a category tree.

A tree built from a model's confusion should first join categories of the same kind.
These groupings say which truth classes are "of the same kind": the 25 Texture-25
generators by the structure they draw, and the toy PACS's studies by body region
(there the region *is* the truth, so a family is a region).

The texture families are a human reading of the generators, not what a CNN finds alike.
Measured (README, "The category tree"): a ResNet-18 trained with the Sobel filter on the
25 truth classes themselves (test top-1 0.815) builds a tree over those classes whose
first merges share a family 0.22–0.24 of the time, chance being 0.20. It joins by
orientation and period instead: grating-90-fine with gabor-noise-horizontal and plaid
(horizontal structure), checker-small-diamond with weave and dot-grid (a fine periodic
grid), crosshatch with zigzag and hexagonal (several line directions), dots with strokes.
A few placements here are debatable (gabor-noise-horizontal looks like wavy horizontal
stripes; strokes are short line segments), but regrouping the classes by what the CNN
confuses would make the measure circular, so the families stay as written, and
``tests/bench/bench_tree.py`` reports beside each tree how far the model's own view is from
them.
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

#: family -> Texture-25 class names (see texture25.CLASSES; every class in exactly one family)
TEXTURE25_FAMILIES: dict[str, tuple[str, ...]] = {
    "stripes": ("grating-0-coarse", "grating-45-medium", "grating-90-fine", "bars-135-coarse", "sawtooth",
                "zigzag", "wavy-lines"),
    "grids": ("checker-large", "checker-small-diamond", "crosshatch", "hexagonal", "plaid", "weave", "bricks"),
    "spots": ("dots-sparse", "dots-dense", "blobs-large", "dot-grid", "rings-grid", "strokes"),
    "noise": ("gabor-noise-horizontal", "cloud-noise", "fine-grain-noise"),
    "radial": ("ripples", "radial-spokes"),
}


def texture25_family(label: int) -> str:
    """The family of Texture-25 class ``label`` (its index in texture25.CLASSES)."""
    from .texture25 import CLASSES

    name = CLASSES[label][0]
    return next(f for f, names in TEXTURE25_FAMILIES.items() if name in names)


def same_family_fraction(groups: Sequence[Sequence[object]]) -> tuple[float, int]:
    """Over all pairs of members within each group: the fraction whose families are equal,
    and the number of pairs. ``groups`` list the members' families."""
    pairs = [a == b for group in groups for a, b in combinations(group, 2)]
    return (sum(pairs) / len(pairs) if pairs else float("nan")), len(pairs)


def first_level_groups(tree: dict) -> list[list[int]]:
    """The member classes of each level-1 group of a ``hierarchy`` tree.json: its first merges."""
    out: list[list[int]] = []

    def visit(node: dict) -> None:
        if node["level"] == 1:
            out.append(node["classes"])
        for child in node["children"]:
            visit(child)

    visit(tree)
    return out
