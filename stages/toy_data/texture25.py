"""``toy-data texture25``: 25 procedural texture classes in the spirit of UIUC Texture-25.

Each class is a family (gratings, checkerboards, dot and blob fields, Gabor noise,
bricks, weaves, ripples, radial patterns, …) drawn with strong within-class variation:
random phase and position, rotation and scale jitter, contrast and brightness
changes, and noise. A person tells the classes apart at a glance; k-means on raw
pixels does not (its purity is printed, and kept below 0.7 by a test).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...common.cli import CommonOptions, Tool, opt, progress
from ...common.errors import InputError
from ...common.files.folders import check_output_folder, output_folder
from ...common.files.labels import write_labels
from ...common.files.plots import pyplot, save_png
from ...common.files.stores import write_store

log = logging.getLogger("ldpo")

Grid = tuple[np.ndarray, np.ndarray]  # u, v in "texture units" after rotation and scaling


def _grating(angle: float, freq: float, sharp: bool = False) -> Callable:
    def draw(u, v, rng):
        a = np.deg2rad(angle)
        s = np.sin(2 * np.pi * freq * (u * np.cos(a) + v * np.sin(a)) + rng.uniform(0, 2 * np.pi))
        return np.sign(s) if sharp else s
    return draw


def _checker(freq: float, angle: float = 0.0) -> Callable:
    def draw(u, v, rng):
        a = np.deg2rad(angle)
        x, y = u * np.cos(a) + v * np.sin(a), -u * np.sin(a) + v * np.cos(a)
        px, py = rng.uniform(0, 1, 2)
        return np.sign(np.sin(2 * np.pi * freq * x + 2 * np.pi * px)) * np.sign(np.sin(2 * np.pi * freq * y + 2 * np.pi * py))
    return draw


def _dots(count: int, radius: float) -> Callable:
    def draw(u, v, rng):
        out = np.full(u.shape, -1.0)
        n = rng.poisson(count)
        for cx, cy, r in zip(rng.uniform(-1.2, 1.2, n), rng.uniform(-1.2, 1.2, n), rng.uniform(0.7, 1.3, n) * radius):
            out[(u - cx) ** 2 + (v - cy) ** 2 < r * r] = 1.0
        return out
    return draw


def _blobs(count: int, sigma: float) -> Callable:
    def draw(u, v, rng):
        out = np.zeros(u.shape)
        n = rng.poisson(count)
        for cx, cy, sign in zip(rng.uniform(-1.2, 1.2, n), rng.uniform(-1.2, 1.2, n), rng.choice([-1, 1], n)):
            out += sign * np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (2 * sigma ** 2))
        return out
    return draw


def _filtered_noise(freq: float, bandwidth: float, angle: float | None) -> Callable:
    """Noise band-passed around ``freq`` (cycles per unit); oriented when ``angle`` is set."""
    def draw(u, v, rng):
        size = u.shape[0]
        noise = rng.standard_normal(u.shape)
        fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
        f0 = freq * 2 / size  # unit square spans 2 units over `size` pixels
        if angle is None:
            mask = np.exp(-((np.hypot(fx, fy) - f0) ** 2) / (2 * (bandwidth * f0) ** 2))
        else:
            a = np.deg2rad(angle + rng.normal(0, 5))
            cx, cy = f0 * np.cos(a), f0 * np.sin(a)
            mask = (np.exp(-((fx - cx) ** 2 + (fy - cy) ** 2) / (2 * (bandwidth * f0) ** 2))
                    + np.exp(-((fx + cx) ** 2 + (fy + cy) ** 2) / (2 * (bandwidth * f0) ** 2)))
        return np.real(np.fft.ifft2(np.fft.fft2(noise) * mask))
    return draw


def _bricks(freq: float) -> Callable:
    def draw(u, v, rng):
        x, y = u * freq + rng.uniform(0, 1), v * freq * 2 + rng.uniform(0, 1)
        row = np.floor(y)
        x = x + 0.5 * (row % 2)
        mortar = (np.abs(y - np.round(y)) < 0.08) | (np.abs(x - np.round(x)) < 0.05)
        return np.where(mortar, -1.0, 0.6)
    return draw


def _weave(freq: float) -> Callable:
    def draw(u, v, rng):
        x, y = u * freq + rng.uniform(0, 2), v * freq + rng.uniform(0, 2)
        cell = (np.floor(x) + np.floor(y)) % 2
        return np.where(cell == 0, np.sin(np.pi * (x % 1)) * np.sin(2 * np.pi * y) * 0 + np.cos(2 * np.pi * 3 * y),
                        np.cos(2 * np.pi * 3 * x))
    return draw


def _ripples(freq: float) -> Callable:
    def draw(u, v, rng):
        cx, cy = rng.uniform(-0.8, 0.8, 2)
        return np.sin(2 * np.pi * freq * np.hypot(u - cx, v - cy) + rng.uniform(0, 2 * np.pi))
    return draw


def _radial(spokes: int) -> Callable:
    def draw(u, v, rng):
        cx, cy = rng.uniform(-0.5, 0.5, 2)
        return np.sign(np.sin(spokes * np.arctan2(v - cy, u - cx) + rng.uniform(0, 2 * np.pi)))
    return draw


def _sum(*parts: Callable) -> Callable:
    def draw(u, v, rng):
        return sum(p(u, v, rng) for p in parts)
    return draw


def _zigzag(freq: float, amp: float) -> Callable:
    def draw(u, v, rng):
        tri = np.abs(((u * freq * 2 + rng.uniform(0, 1)) % 2) - 1)
        return np.sign(np.sin(2 * np.pi * freq * (v + amp * tri) + rng.uniform(0, 2 * np.pi)))
    return draw


def _wavy(freq: float, amp: float) -> Callable:
    def draw(u, v, rng):
        return np.sin(2 * np.pi * freq * (v + amp * np.sin(2 * np.pi * 1.5 * u + rng.uniform(0, 6.3))) + rng.uniform(0, 6.3))
    return draw


def _strokes(count: int, length: float) -> Callable:
    def draw(u, v, rng):
        out = np.full(u.shape, -1.0)
        for _ in range(rng.poisson(count)):
            cx, cy = rng.uniform(-1.2, 1.2, 2)
            a = rng.uniform(0, np.pi)
            along = (u - cx) * np.cos(a) + (v - cy) * np.sin(a)
            across = -(u - cx) * np.sin(a) + (v - cy) * np.cos(a)
            out[(np.abs(along) < length) & (np.abs(across) < 0.025)] = 1.0
        return out
    return draw


def _rings_grid(freq: float) -> Callable:
    def draw(u, v, rng):
        x, y = (u * freq + rng.uniform(0, 1)) % 1 - 0.5, (v * freq + rng.uniform(0, 1)) % 1 - 0.5
        return np.where(np.abs(np.hypot(x, y) - 0.3) < 0.07, 1.0, -1.0)
    return draw


def _dot_grid(freq: float) -> Callable:
    def draw(u, v, rng):
        x, y = (u * freq + rng.uniform(0, 1)) % 1 - 0.5, (v * freq + rng.uniform(0, 1)) % 1 - 0.5
        return np.where(np.hypot(x, y) < 0.22, 1.0, -1.0)
    return draw


def _sawtooth(freq: float) -> Callable:
    def draw(u, v, rng):
        return ((u * freq + rng.uniform(0, 1)) % 1) * 2 - 1
    return draw


#: (name, drawing function); the order is the class number.
CLASSES: list[tuple[str, Callable]] = [
    ("grating-0-coarse", _grating(0, 3)),
    ("grating-45-medium", _grating(45, 6)),
    ("grating-90-fine", _grating(90, 12)),
    ("bars-135-coarse", _grating(135, 3, sharp=True)),
    ("checker-large", _checker(2)),
    ("checker-small-diamond", _checker(6, 45)),
    ("dots-sparse", _dots(25, 0.05)),
    ("dots-dense", _dots(220, 0.04)),
    ("blobs-large", _blobs(12, 0.18)),
    ("gabor-noise-horizontal", _filtered_noise(8, 0.25, 90)),
    ("cloud-noise", _filtered_noise(2, 0.8, None)),
    ("bricks", _bricks(3)),
    ("weave", _weave(3)),
    ("ripples", _ripples(5)),
    ("radial-spokes", _radial(12)),
    ("crosshatch", _sum(_grating(30, 6, sharp=True), _grating(120, 6, sharp=True))),
    ("zigzag", _zigzag(5, 0.12)),
    ("hexagonal", _sum(_grating(0, 6), _grating(60, 6), _grating(120, 6))),
    ("strokes", _strokes(60, 0.15)),
    ("sawtooth", _sawtooth(4)),
    ("dot-grid", _dot_grid(7)),
    ("plaid", _sum(_grating(0, 2), _grating(90, 9))),
    ("fine-grain-noise", _filtered_noise(40, 0.5, None)),
    ("rings-grid", _rings_grid(4)),
    ("wavy-lines", _wavy(6, 0.08)),
]


def texture(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 ``[size, size]`` sample of class ``label``."""
    _, draw = CLASSES[label]
    axis = np.linspace(-1, 1, size)
    x, y = np.meshgrid(axis, axis)
    angle = np.deg2rad(rng.normal(0, 8))  # rotation jitter
    scale = rng.uniform(0.8, 1.25)  # scale jitter
    u = (x * np.cos(angle) - y * np.sin(angle)) / scale
    v = (x * np.sin(angle) + y * np.cos(angle)) / scale
    img = draw(u, v, rng).astype(np.float64)
    img = (img - img.mean()) / (img.std() + 1e-8)
    contrast, brightness = rng.uniform(0.5, 1.2), rng.uniform(-0.35, 0.35)
    img = 0.5 + brightness + 0.18 * contrast * img
    img += rng.normal(0, rng.uniform(0.02, 0.08), img.shape)  # sensor noise
    img += rng.uniform(-0.15, 0.15) * (x * rng.normal() + y * rng.normal())  # illumination gradient
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def class_sizes(classes: int, largest: int, imbalance: float = 1.0) -> list[int]:
    """Images per class: ``largest`` for class 0, falling geometrically to ``largest / imbalance`` for the last
    class (rounded, at least 1); every class ``largest`` when ``imbalance`` is 1 (a long tail, as in archives)."""
    if imbalance < 1:
        raise InputError(f"--imbalance {imbalance:g}: must be >= 1 (largest class / smallest class)")
    if classes == 1:
        return [largest]
    return [max(1, round(largest * imbalance ** (-c / (classes - 1)))) for c in range(classes)]


def generate(classes: int = 25, per_class: int = 40, size: int = 256, seed: int = 0,
             show_progress: bool = True, imbalance: float = 1.0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Images ``[N, size, size]`` uint8, ids, and truth labels; the same bytes for the same seed.
    ``imbalance`` R > 1: class c holds ``per_class · R^(-c/(classes-1))`` images (:func:`class_sizes`); image i of
    class c is the same image at any R."""
    if not 1 <= classes <= len(CLASSES):
        raise InputError(f"--classes {classes}: must be between 1 and {len(CLASSES)}")
    if per_class < 1 or size < 16:
        raise InputError("--per-class must be >= 1 and --size >= 16")
    sizes = class_sizes(classes, per_class, imbalance)
    images = np.empty((sum(sizes), size, size), dtype=np.uint8)
    ids, labels = [], []
    items = [(c, i) for c in range(classes) for i in range(sizes[c])]
    for row, (c, i) in enumerate(progress(items, desc="textures", disable=not show_progress)):
        rng = np.random.default_rng([seed, c, i])  # each image independent of the set's size
        images[row] = texture(c, size, rng)
        ids.append(f"t{c:02d}-{i:04d}")
        labels.append(c)
    return images, ids, np.asarray(labels, dtype=np.int64)


def raw_pixel_purity(images: np.ndarray, labels: np.ndarray, seed: int = 0, side: int = 32) -> float:
    """Purity of k-means (k = class count) on raw pixels downscaled to ``side`` px."""
    from ...common.numerics.features import kmeans
    from ...common.numerics.metrics import purity

    step = max(1, images.shape[1] // side)
    x = images[:, ::step, ::step].reshape(len(images), -1).astype(np.float32) / 255.0
    k = len(np.unique(labels))
    _, assign, _ = kmeans(x, k, niter=25, seed=seed)
    return purity(assign, labels)


def contact_sheet(images: np.ndarray, labels: np.ndarray, path: Path, per_row: int = 8, found: bool = False) -> None:
    """A PNG with one row of samples per class (``found``: per found category, with its size)."""
    plt = pyplot()

    classes, sizes = np.unique(labels, return_counts=True)
    cols = min(per_row, int(sizes.max()))
    fig, axes = plt.subplots(len(classes), cols + 1, figsize=(cols + 2.2, len(classes) * 0.95), squeeze=False,
                             gridspec_kw={"width_ratios": [2.2] + [1] * cols})
    for r, (c, size) in enumerate(zip(classes, sizes)):
        name = f"category {c}: {size} images" if found else f"{c}: {CLASSES[c][0]}"
        axes[r, 0].text(1.0, 0.5, name, ha="right", va="center", fontsize=7)
        rows = np.flatnonzero(labels == c)[:cols]
        for j, row in enumerate(rows):
            axes[r, j + 1].imshow(images[row], cmap="gray", vmin=0, vmax=255)
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle("found categories: one row per category" if found else "toy Texture-25: one row per class",
                 fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


MAX_BYTES = 8 * 2**30  # the whole set is generated in memory before it is written


@dataclass(kw_only=True)
class Options(CommonOptions):
    out: str = opt("output folder (images store, truth.csv, contact-sheet.png)", role="output-folder")
    classes: int = opt("number of texture classes (1-25)", 25, min=1, max=25)
    per_class: int = opt("images per class (with --imbalance: of the largest class)", 40, min=1, max=100000)
    imbalance: float = opt("largest class / smallest class: sizes fall geometrically from --per-class (class 0) to "
                           "--per-class / R (the last class), a long tail as in archives; 1 = balanced", 1.0, min=1,
                           max=100000)
    size: int = opt("image side in pixels", 256, min=8, max=4096)
    format: str = opt("images store format", "h5", choices=["h5", "zarr"])
    no_sheet: bool = opt("skip the contact sheet", False)
    contact_sheet: str = opt("instead of generating: draw the contact sheet of these labels (id,label CSV, e.g. a "
                             "run's final/labels.csv) over --images, one row per label, into --out (a .png)", "",
                             role="input")
    images: str = opt("images store for --contact-sheet", "", role="input")


class Texture25Tool(Tool):
    name = "toy-data texture25"
    description = ("Generate the toy Texture-25 set: images.h5|zarr (uint8 [N,H,W]), truth.csv (id,label) "
                   "and contact-sheet.png. Prints the purity of k-means on raw pixels (the baseline ldpo must beat).")
    example = ("toy-data texture25 --out toy/ --per-class 12 --size 64 --seed 0\n"
               "toy-data texture25 --contact-sheet run/final/labels.csv --images toy/images.h5 --out run/final/sheet.png")
    Options = Options

    def main(self, opts: Options) -> int:
        if opts.contact_sheet:
            return draw_labels(opts.contact_sheet, opts.images, opts.out)
        out = Path(opts.out)
        total = sum(class_sizes(opts.classes, opts.per_class, opts.imbalance)) * opts.size ** 2
        if total > MAX_BYTES:
            raise InputError(f"--classes {opts.classes} × --per-class {opts.per_class} × --size {opts.size}²: "
                             f"{total / 2**30:.1f} GiB of images, more than the {MAX_BYTES // 2**30} GiB this "
                             "generator holds in memory")
        check_output_folder(out, self.name)  # before the set is generated
        images, ids, labels = generate(opts.classes, opts.per_class, opts.size, opts.seed, imbalance=opts.imbalance)
        store = out / f"images.{opts.format}"
        attrs = {"stage": "toy-data texture25", "classes": [n for n, _ in CLASSES[:opts.classes]],
                 "seed": opts.seed, "size": opts.size, "imbalance": opts.imbalance}
        with output_folder(out, self.name, [store.name, "truth.csv"] + ([] if opts.no_sheet else
                                                                          ["contact-sheet.png"])):
            write_store(store, ids, attrs, images=images)
            write_labels(out / "truth.csv", ids, labels)
            if not opts.no_sheet:
                contact_sheet(images, labels, out / "contact-sheet.png")
        log.info("wrote %d images of %d classes to %s", len(ids), opts.classes, store)
        if opts.classes > 1:
            score = raw_pixel_purity(images, labels, opts.seed)
            print(f"raw-pixel k-means purity (k={opts.classes}): {score:.3f}")
        return 0


def draw_labels(labels_csv: str, images_path: str, out: str) -> int:
    """The contact sheet of any labelling (found categories) over an images store."""
    from ...common.files.labels import align, read_labels
    from ...common.files.stores import open_store

    if not images_path:
        raise InputError("--contact-sheet needs --images STORE")
    if not out.lower().endswith(".png"):
        raise InputError(f"{out}: with --contact-sheet, --out is a .png file")
    with open_store(images_path, expect="images") as store:
        images, ids = store.read("images"), store.ids
    per_row = align(read_labels(labels_csv), ids, images_path)
    contact_sheet(images, per_row, Path(out), found=True)
    log.info("wrote %s (%d categories)", out, len(np.unique(per_row)))
    print(out)
    return 0


TOOL = Texture25Tool
