"""``toy-data scenes``: scene categories defined by which objects appear, not by how the whole image looks.

A scene is a background filling the image (one of :data:`BACKGROUNDS`, low-contrast
textures of Texture-25, drawn at random for every image whatever its category) with
small objects on it. An object is a disc of texture (Texture-25 generators) or a small
CT phantom (the toy PACS's body sections), 18–32 % of the image side, at a random
place, size, brightness and contrast. A category is a set of two or three of the seven
key object kinds (:data:`CATEGORIES`; every kind belongs to several categories, so no
one kind names a category, and no category's kinds contain another's); each kind of the
set appears once or twice. Every image also gets zero to two distractor objects of the
three :data:`DISTRACTORS` kinds, shared by all categories.

So the whole image's statistics are dominated by the background (about 70 % of the
pixels, its kind independent of the category) and by kinds shared between categories:
global features confuse the categories, while the parts (which objects are there)
separate them. Brightness and contrast are drawn per background and per object, never
per category, so no global colour or intensity tells a category. Deterministic per seed:
image i of category c comes from ``default_rng([seed, c, i])``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...common.cli import CommonOptions, Tool, opt, progress
from ...common.errors import InputError
from ...common.files.folders import check_output_folder, output_folder
from ...common.files.labels import write_labels
from ...common.files.plots import pyplot, save_png
from ...common.files.stores import write_store
from . import texture25
from .pacs.pixels import phantom

log = logging.getLogger("ldpo")

TEXTURES = {name: draw for name, draw in texture25.CLASSES}

#: object kinds: ("texture", Texture-25 class, texture units per object radius) or ("phantom", region, zoom)
KINDS: dict[str, tuple[str, str, float]] = {
    "checker": ("texture", "checker-large", 0.6),
    "rings": ("texture", "rings-grid", 0.7),
    "bars": ("texture", "bars-135-coarse", 0.45),
    "dot-grid": ("texture", "dot-grid", 0.5),
    "head": ("phantom", "head", 0.95),
    "spine": ("phantom", "spine", 0.8),
    "spokes": ("texture", "radial-spokes", 1.0),
    # distractors, in every category
    "strokes": ("texture", "strokes", 0.8),
    "zigzag": ("texture", "zigzag", 0.5),
    "pelvis": ("phantom", "pelvis", 0.95),
}
KEY_KINDS = ["checker", "rings", "bars", "dot-grid", "head", "spine", "spokes"]
DISTRACTORS = ["strokes", "zigzag", "pelvis"]
#: category -> its key kinds: 7 pairs and 5 triples; no category's set holds another's
CATEGORIES: list[tuple[str, ...]] = [
    ("checker", "rings"), ("bars", "dot-grid"), ("head", "spine"), ("checker", "spokes"),
    ("rings", "bars"), ("dot-grid", "head"), ("spine", "spokes"),
    ("checker", "bars", "head"), ("rings", "dot-grid", "spine"), ("bars", "head", "spokes"),
    ("checker", "dot-grid", "spine"), ("rings", "head", "spokes"),
]
BACKGROUNDS = ["cloud-noise", "fine-grain-noise", "gabor-noise-horizontal", "wavy-lines", "plaid", "sawtooth"]


def _check_categories() -> None:
    sets = [set(c) for c in CATEGORIES]
    for i, a in enumerate(sets):
        for j, b in enumerate(sets):
            assert i == j or not a <= b, (CATEGORIES[i], CATEGORIES[j])


_check_categories()


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A float image in [0,1]: a random low-contrast texture, brightness and illumination gradient."""
    draw = TEXTURES[BACKGROUNDS[rng.integers(len(BACKGROUNDS))]]
    axis = np.linspace(-1, 1, size)
    x, y = np.meshgrid(axis, axis)
    img = draw(x, y, rng).astype(np.float64)
    img = (img - img.mean()) / (img.std() + 1e-8)
    img = rng.uniform(0.3, 0.7) + rng.uniform(0.03, 0.08) * img
    return img + rng.uniform(-0.12, 0.12) * (x * rng.normal() + y * rng.normal())


def object_patch(kind: str, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(values, alpha)`` ``[side, side]``: the object's gray values (mean about 0, std about 1) and its mask."""
    what, name, scale = KINDS[kind]
    axis = np.linspace(-1, 1, side)
    x, y = np.meshgrid(axis, axis)
    if what == "texture":
        angle = np.deg2rad(rng.normal(0, 10))
        u = (x * np.cos(angle) - y * np.sin(angle)) * scale
        v = (x * np.sin(angle) + y * np.cos(angle)) * scale
        values = TEXTURES[name](u, v, rng).astype(np.float64)
        alpha = np.clip((1.0 - np.hypot(x, y)) * side / 3, 0, 1)  # a disc with a soft edge
    else:
        pose = (0.0, 0.0, scale * rng.uniform(0.9, 1.1), rng.normal(0, 0.15))
        hu = phantom(name, "CT", rng.uniform(0.3, 0.7), side, rng, pose)
        values = np.clip((hu + 160) / 400, 0, 1.5)  # a soft-tissue window
        alpha = (hu > -800).astype(np.float64)
    inside = alpha > 0.5
    if inside.any():
        values = (values - values[inside].mean()) / (values[inside].std() + 1e-8)
    return values, alpha


def scene(kinds: list[str], size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 ``[size, size]`` image: a background with the given objects pasted on it (few overlaps)."""
    img = background(size, rng)
    placed: list[tuple[float, float, float]] = []
    for kind in kinds:
        side = int(round(size * rng.uniform(0.26, 0.38)))
        for _ in range(20):  # a place that overlaps the earlier objects little
            top, left = rng.integers(0, size - side + 1, 2)
            cy, cx, r = top + side / 2, left + side / 2, side / 2
            if all(np.hypot(cy - py, cx - px) > 0.8 * (r + pr) for py, px, pr in placed):
                break
        placed.append((cy, cx, r))
        values, alpha = object_patch(kind, side, rng)
        level = rng.uniform(0.25, 0.75) + rng.uniform(0.12, 0.25) * values
        window = img[top:top + side, left:left + side]
        window[:] = (1 - alpha) * window + alpha * level
    img += rng.normal(0, rng.uniform(0.02, 0.05), img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def scene_kinds(category: int, rng: np.random.Generator) -> list[str]:
    """The objects of one image of ``category``: each key kind once, 0-1 distractor, shuffled."""
    kinds = list(CATEGORIES[category])
    kinds += list(rng.choice(DISTRACTORS, size=rng.integers(0, 2), replace=True))
    return [kinds[i] for i in rng.permutation(len(kinds))]


def generate(classes: int = 10, per_class: int = 40, size: int = 64, seed: int = 0,
             show_progress: bool = True) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Images ``[N, size, size]`` uint8, ids and truth labels; the same bytes for the same seed."""
    if not 1 <= classes <= len(CATEGORIES):
        raise InputError(f"--classes {classes}: must be between 1 and {len(CATEGORIES)}")
    images = np.empty((classes * per_class, size, size), dtype=np.uint8)
    ids, labels = [], []
    items = [(c, i) for c in range(classes) for i in range(per_class)]
    for row, (c, i) in enumerate(progress(items, desc="scenes", disable=not show_progress)):
        rng = np.random.default_rng([seed, c, i])  # each image independent of the set's size
        images[row] = scene(scene_kinds(c, rng), size, rng)
        ids.append(f"s{c:02d}-{i:04d}")
        labels.append(c)
    return images, ids, np.asarray(labels, dtype=np.int64)


def isolated_objects(per_kind: int = 60, size: int = 32, seed: int = 0
                     ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The parts alone, for pretraining (the toy stand-in for ImageNet, which knows windows and beds
    but not the scenes): one object of each of the ten kinds centred on a background crop,
    ``[10·per_kind, size, size]`` uint8, ids and the kind as label. Scene categories never appear."""
    kinds = KEY_KINDS + DISTRACTORS
    images = np.empty((len(kinds) * per_kind, size, size), np.uint8)
    ids, labels = [], []
    for row, (k, i) in enumerate((k, i) for k in range(len(kinds)) for i in range(per_kind)):
        rng = np.random.default_rng([seed, 1000 + k, i])
        img = background(size, rng)
        side = int(round(size * rng.uniform(0.6, 0.9)))
        top, left = rng.integers(0, size - side + 1, 2)
        values, alpha = object_patch(kinds[k], side, rng)
        level = rng.uniform(0.25, 0.75) + rng.uniform(0.12, 0.25) * values
        window = img[top:top + side, left:left + side]
        window[:] = (1 - alpha) * window + alpha * level
        img += rng.normal(0, rng.uniform(0.02, 0.05), img.shape)
        images[row] = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        ids.append(f"o{k:02d}-{i:04d}")
        labels.append(k)
    return images, ids, np.asarray(labels, np.int64)


def category_name(c: int) -> str:
    return "+".join(CATEGORIES[c])


def contact_sheet(images: np.ndarray, labels: np.ndarray, path: Path, per_row: int = 8) -> None:
    """A small PNG, one row of samples per category, named by its object kinds."""
    plt = pyplot()
    classes = np.unique(labels)
    fig, axes = plt.subplots(len(classes), per_row + 1, figsize=(per_row * 0.8 + 2.0, len(classes) * 0.8),
                             squeeze=False, gridspec_kw={"width_ratios": [2.5] + [1] * per_row})
    for r, c in enumerate(classes):
        axes[r, 0].text(1.0, 0.5, f"{c}: {category_name(c)}", ha="right", va="center", fontsize=6)
        for j, row in enumerate(np.flatnonzero(labels == c)[:per_row]):
            axes[r, j + 1].imshow(images[row], cmap="gray", vmin=0, vmax=255)
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle("toy scenes: one row per category (its key objects)",
                 fontsize=7)
    fig.tight_layout(pad=0.2)
    save_png(fig, path)


MAX_BYTES = 8 * 2**30  # the whole set is generated in memory before it is written


@dataclass(kw_only=True)
class Options(CommonOptions):
    out: str = opt("output folder (images store, truth.csv, contact-sheet.png)", role="output-folder")
    classes: int = opt(f"number of categories (1-{len(CATEGORIES)})", 10, min=1, max=len(CATEGORIES))
    per_class: int = opt("images per category", 40, min=1, max=100000)
    size: int = opt("image side in pixels", 64, min=32, max=1024)
    format: str = opt("images store format", "h5", choices=["h5", "zarr"])
    no_sheet: bool = opt("skip the contact sheet", False)
    objects: int = opt("also write OUT/objects/ (images + truth): this many isolated objects per kind, for "
                       "pretraining a network that knows the parts (0 = none)", 0, min=0, max=100000)


class ScenesTool(Tool):
    name = "toy-data scenes"
    description = ("Generate toy scenes: categories defined by which two or three object kinds appear over "
                   "random backgrounds with shared distractors (images.h5|zarr uint8 [N,H,W], truth.csv, "
                   "contact-sheet.png). Global features confuse them; patch mining (encode --method patches) "
                   "separates them.")
    example = "toy-data scenes --out scenes/ --classes 10 --per-class 40 --size 64 --seed 0"
    Options = Options

    def main(self, opts: Options) -> int:
        total = opts.classes * opts.per_class * opts.size ** 2
        if total > MAX_BYTES:
            raise InputError(f"--classes {opts.classes} × --per-class {opts.per_class} × --size {opts.size}²: "
                             f"{total / 2**30:.1f} GiB of images, more than the {MAX_BYTES // 2**30} GiB this "
                             "generator holds in memory")
        out = Path(opts.out)
        check_output_folder(out, self.name)  # before the set is generated
        if opts.objects:
            check_output_folder(out / "objects", self.name + " --objects")
        images, ids, labels = generate(opts.classes, opts.per_class, opts.size, opts.seed,
                                       show_progress=not opts.no_progress)
        attrs = {"stage": "toy-data scenes", "classes": [category_name(c) for c in range(opts.classes)],
                 "seed": opts.seed, "size": opts.size}
        names = [f"images.{opts.format}", "truth.csv"] + ([] if opts.no_sheet else ["contact-sheet.png"])
        with output_folder(out, self.name, names + (["objects"] if opts.objects else [])):
            write_store(out / f"images.{opts.format}", ids, attrs, images=images)
            write_labels(out / "truth.csv", ids, labels)
            if not opts.no_sheet:
                contact_sheet(images, labels, out / "contact-sheet.png")
            log.info("wrote %d images of %d categories to %s", len(ids), opts.classes, out)
            if opts.objects:
                o_images, o_ids, o_labels = isolated_objects(opts.objects, max(32, opts.size // 2), opts.seed)
                with output_folder(out / "objects", self.name + " --objects", [f"images.{opts.format}", "truth.csv"]):
                    write_store(out / "objects" / f"images.{opts.format}", o_ids,
                                {"stage": "toy-data scenes --objects", "classes": KEY_KINDS + DISTRACTORS,
                                 "seed": opts.seed}, images=o_images)
                    write_labels(out / "objects" / "truth.csv", o_ids, o_labels)
        if opts.classes > 1:
            print(f"raw-pixel k-means purity (k={opts.classes}): "
                  f"{texture25.raw_pixel_purity(images, labels, opts.seed):.3f}")
        return 0


TOOL = ScenesTool
