"""``toy-data multilabel``: radiograph-like images showing one, two or none of four body parts.

The ImageCLEF 2015 medical clustering task in small: each image shows the head, chest,
spine or pelvis phantom of the toy PACS (:mod:`ldpo.stages.toy_data.pacs.pixels`, the same
drawing code), or two of them side by side, or none (a true negative: only the
distractors that any image may carry, rulers and text blocks). Every image gets 0–3
distractors, so their presence says nothing about the body parts.

Writes ``DIR/images.h5|zarr`` (uint8 ``[N,H,W]``; ``--aspect`` > 1 makes wide images, for
the pad-to-square data path) and ``DIR/truth.csv``, a multi-label file
(:mod:`ldpo.common.files.labels`): ``id,label,parts`` with ``label`` the image's classes joined by
``;`` (``0;2``) and empty for a true negative; ``parts`` names them. Classes: 0 head,
1 chest, 2 spine, 3 pelvis. Mix: a fifth of the images show nothing, two fifths one part
(uniform over the four), two fifths two parts (uniform over the six pairs). The same
seed writes the same bytes; each image depends only on (seed, index).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from ...common.cli import CommonOptions, Tool, opt, progress
from ...common.files.folders import check_output_folder, output_folder
from ...common.files.labels import write_multilabels
from ...common.files.stores import write_store
from .pacs.pixels import phantom

log = logging.getLogger("ldpo")

PARTS = ["head", "chest", "spine", "pelvis"]
PAIRS = list(combinations(range(len(PARTS)), 2))
#: HU → gray: a wide window, so air, lung, soft tissue and bone all differ
WINDOW = (-1000.0, 1000.0)


def label_set(rng: np.random.Generator) -> tuple[int, ...]:
    """None with probability 1/5, one part 2/5, two parts 2/5."""
    u = rng.uniform()
    if u < 0.2:
        return ()
    if u < 0.6:
        return (int(rng.integers(len(PARTS))),)
    return PAIRS[int(rng.integers(len(PAIRS)))]


def draw(parts: tuple[int, ...], height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 ``[height, width]`` image showing ``parts`` (side by side when two)."""
    canvas = np.full((height, width), WINDOW[0]) + rng.normal(0, 20, (height, width))
    order = list(rng.permutation(parts)) if parts else []
    side = min(height, width)
    for slot, part in enumerate(order):
        along = max(height, width) // 2  # two parts: one slot each, in the two halves of the longer side
        tile = min(int(side * rng.uniform(0.46, 0.56)), along) if len(order) == 2 else int(side * rng.uniform(0.6, 0.85))
        if len(order) == 2:
            lo = slot * along + int(rng.integers(0, max(1, along - tile + 1)))
            across = int(rng.integers(0, max(1, side - tile + 1)))
            top, left = (across, lo) if width >= height else (lo, across)
        else:
            top, left = int(rng.integers(0, height - tile + 1)), int(rng.integers(0, width - tile + 1))
        pose = (rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08), rng.uniform(0.85, 1.05),
                rng.normal(0, 0.12))
        image = phantom(PARTS[part], "CT", float(rng.uniform()), tile, rng, pose)
        region = canvas[top:top + tile, left:left + tile]
        np.maximum(region, image, out=region)
    for _ in range(int(rng.integers(0, 4))):  # distractors: rulers, text blocks, markers
        h, w = int(rng.integers(2, max(3, side // 6))), int(rng.integers(2, max(3, side // 3)))
        if rng.uniform() < 0.5:
            h, w = w, h
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        canvas[top:top + h, left:left + w] = rng.uniform(-200, 1000) + rng.normal(0, 30, (h, w))
    gray = (canvas - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
    return (np.clip(gray, 0, 1) * 255).round().astype(np.uint8)


def generate(n: int, size: int, seed: int = 0, aspect: float = 1.0, show_progress: bool = True
             ) -> tuple[np.ndarray, list[str], list[tuple[int, ...]]]:
    """Images uint8 ``[n, size, round(size·aspect)]``, ids, and label sets."""
    width = max(size, int(round(size * aspect)))
    images = np.empty((n, size, width), dtype=np.uint8)
    ids, sets = [], []
    for i in progress(range(n), desc="multilabel", disable=not show_progress):
        rng = np.random.default_rng([seed, 20, i])
        parts = label_set(rng)
        images[i] = draw(parts, size, width, rng)
        ids.append(f"m{i:05d}")
        sets.append(tuple(sorted(parts)))
    return images, ids, sets


@dataclass(kw_only=True)
class Options(CommonOptions):
    out: str = opt("output folder (images store, truth.csv)", role="output-folder")
    n: int = opt("number of images", 600, min=1, max=1_000_000)
    size: int = opt("image height in pixels", 64, min=32, max=2048)
    aspect: float = opt("width / height (above 1: wide images, padded to square by the data path)", 1.0,
                        min=1, max=4)
    format: str = opt("images store format", "h5", choices=["h5", "zarr"])


class MultilabelTool(Tool):
    name = "toy-data multilabel"
    description = ("Generate a toy multi-label set: images showing one, two or none of four body-part phantoms "
                   "(0 head, 1 chest, 2 spine, 3 pelvis), images.h5|zarr and truth.csv (id,label,parts; label "
                   "'0;2' for two parts, empty for none).")
    example = ("toy-data multilabel --out ml/ --n 600 --size 64\n"
               "finetune ml/images.h5 ml/truth.csv --multi-label --out ml/model.pt --init random --epochs 8 "
               "--batch-size 16 --crop-scale 1")
    Options = Options

    def main(self, opts: Options) -> int:
        out = Path(opts.out)
        check_output_folder(out, self.name)  # before the set is generated
        images, ids, sets = generate(opts.n, opts.size, opts.seed, opts.aspect)
        store = out / f"images.{opts.format}"
        with output_folder(out, self.name, [store.name, "truth.csv"]):
            write_store(store, ids, {"stage": "toy-data multilabel", "classes": PARTS, "seed": opts.seed,
                                     "size": opts.size, "aspect": opts.aspect}, images=images)
            write_multilabels(out / "truth.csv", ids, sets,
                              {"parts": [";".join(PARTS[c] for c in s) for s in sets]})
        counts = np.bincount([len(s) for s in sets], minlength=3)
        log.info("wrote %d images to %s: %d with no part, %d with one, %d with two", len(ids), store, *counts[:3])
        return 0


TOOL = MultilabelTool
