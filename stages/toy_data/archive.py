"""``toy-data archive``: a synthetic archive of any size, generated fast, written chunk by chunk.

Every image is a phantom: an elliptical "body" on a dark background, filled with a
texture of two oriented gratings, plus per-image brightness, contrast and noise. The
``--classes`` generator classes differ in the first grating's orientation and frequency
(spread evenly over both by a low-discrepancy sequence), in the second grating, and in
the body's shape and mean intensity; within a class every image jitters all of them and
draws its own phases. Class parameters depend only on the class number, so class 3 looks
the same in every archive.

Speed comes from doing whole blocks at once with numpy: a grating
``sin(ax·x + ay·y + φ)`` is separable (``sin(ax·x+φ)·cos(ay·y) + cos(ax·x+φ)·sin(ay·y)``),
so a block of textures is one batched matrix product of ``[B,S,4]`` by ``[B,4,S]``; the
body mask is the sum of an x and a y profile; the noise is uniform uint8 draws. No
per-image Python loop touches pixels.

Determinism: image ``i`` depends only on (``--seed``, ``i``, ``--classes``, ``--size``, ``--imbalance``):
images are made in blocks of 256 rows, each from its own generator seeded by
(seed, block), so the first 20,000 images of a 200,000-image archive are the 20,000-image
archive, and ``--workers`` threads give the same bytes as one.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ...common.cli import CommonOptions, Tool, opt, progress
from ...common.errors import InputError
from ...common.files.stores import atomic_path, create_store, store_format, write_ids
from ...common.files.tables import side_file, write_csv

log = logging.getLogger("ldpo")

#: rows drawn from one seeded generator; the unit of determinism (never change it: it changes every archive)
GEN_BLOCK = 256
#: pixels computed at once inside a block (keeps temporaries in cache, memory flat at any --size)
PIXELS_PER_STEP = 1 << 21
#: target bytes of one images chunk when --chunk-rows is 0
CHUNK_BYTES = 4 << 20
MAX_CHUNK_ROWS = 4096
#: seeds the per-class parameters (independent of --seed: a class looks the same in every archive)
CLASS_SEED = 0xA2C417E
#: the R2 low-discrepancy sequence (Roberts 2018): class c's (orientation, frequency) are spread evenly
R2 = (0.7548776662466927, 0.5698402909980532)
#: first grating: cycles per image side, and the share of the Nyquist limit it may reach
FREQ_RANGE = (2.0, 12.0)
MAX_FREQ_OF_SIDE = 0.3


@dataclass(frozen=True)
class ClassParams:
    """Per-class parameters, arrays of shape [K]."""

    angle1: np.ndarray  # radians
    freq1: np.ndarray  # cycles per image side
    angle2: np.ndarray
    freq2: np.ndarray
    amp2: np.ndarray  # second grating's amplitude relative to the first
    axis_x: np.ndarray  # body semi-axes, in half image sides
    axis_y: np.ndarray
    level: np.ndarray  # body mean intensity in [0, 1]
    contrast: np.ndarray  # texture amplitude in intensity units


def class_params(classes: int) -> ClassParams:
    """The parameters of classes ``0..classes-1``; class c's do not depend on ``classes``."""
    c = np.arange(classes)
    angle1 = np.pi * ((0.5 + c * R2[0]) % 1.0)
    freq1 = FREQ_RANGE[0] + (FREQ_RANGE[1] - FREQ_RANGE[0]) * ((0.5 + c * R2[1]) % 1.0)
    draws = np.array([np.random.default_rng([CLASS_SEED, int(i)]).random(7) for i in c]).reshape(classes, 7)
    return ClassParams(
        angle1=angle1,
        freq1=freq1,
        angle2=angle1 + np.pi / 2 + (draws[:, 0] - 0.5) * np.pi / 3,
        freq2=freq1 * np.exp((draws[:, 1] - 0.5) * 2 * np.log(2.5)),
        amp2=0.6 * draws[:, 2],
        axis_x=0.45 + 0.45 * draws[:, 3],
        axis_y=0.45 + 0.45 * draws[:, 4],
        level=0.35 + 0.3 * draws[:, 5],
        contrast=0.08 + 0.1 * draws[:, 6],
    )


def class_shares(classes: int, imbalance: float) -> np.ndarray:
    """Each class's expected share of the rows: falling geometrically from class 0 to the last class, which is
    ``imbalance`` times rarer (a long tail, as in archives)."""
    weights = imbalance ** (-np.arange(classes) / max(classes - 1, 1))
    return weights / weights.sum()


def block_labels(seed: int, block: int, classes: int, imbalance: float = 1.0) -> np.ndarray:
    """The classes of rows ``block·256 … block·256+255`` (their own stream: known before any pixel); uniform,
    or with ``imbalance`` > 1 drawn from :func:`class_shares`."""
    rng = np.random.default_rng([seed, block, 0])
    if imbalance == 1:
        return rng.integers(classes, size=GEN_BLOCK)
    return rng.choice(classes, size=GEN_BLOCK, p=class_shares(classes, imbalance))


def labels_for(n: int, classes: int, seed: int, imbalance: float = 1.0) -> np.ndarray:
    """The truth labels of rows ``0..n-1``."""
    blocks = -(-n // GEN_BLOCK)
    if not n:
        return np.zeros(0, np.int64)
    return np.concatenate([block_labels(seed, b, classes, imbalance) for b in range(blocks)])[:n]


def generate_block(seed: int, block: int, classes: int, size: int, params: ClassParams | None = None,
                   imbalance: float = 1.0) -> np.ndarray:
    """The 256 images of generation block ``block``: uint8 ``[256, size, size]``."""
    params = params or class_params(classes)
    labels = block_labels(seed, block, classes, imbalance)
    rng = np.random.default_rng([seed, block, 1])
    draws = draw_image_params(rng, labels, params, size)
    out = np.empty((GEN_BLOCK, size, size), dtype=np.uint8)
    step = max(1, PIXELS_PER_STEP // (size * size))
    for lo in range(0, GEN_BLOCK, step):
        hi = min(lo + step, GEN_BLOCK)
        render({k: v[lo:hi] for k, v in draws.items()}, size, rng, out[lo:hi])
    return out


def draw_image_params(rng: np.random.Generator, labels: np.ndarray, p: ClassParams, size: int) -> dict:
    """Per-image parameters (float32 arrays of length B): the class's, jittered."""
    b = len(labels)

    def jitter(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, b)

    max_freq = MAX_FREQ_OF_SIDE * size
    found = {
        "angle1": p.angle1[labels] + rng.normal(0, np.deg2rad(4), b),
        "freq1": np.minimum(p.freq1[labels] * jitter(0.9, 1.1), max_freq),
        "angle2": p.angle2[labels] + rng.normal(0, np.deg2rad(4), b),
        "freq2": np.minimum(p.freq2[labels] * jitter(0.9, 1.1), max_freq),
        "amp2": p.amp2[labels],
        "phase1": jitter(0, 2 * np.pi),
        "phase2": jitter(0, 2 * np.pi),
        "centre_x": jitter(-0.08, 0.08),
        "centre_y": jitter(-0.08, 0.08),
        "axis_x": p.axis_x[labels] * jitter(0.9, 1.1),
        "axis_y": p.axis_y[labels] * jitter(0.9, 1.1),
        "level": p.level[labels] + jitter(-0.06, 0.06),
        "contrast": p.contrast[labels] * jitter(0.75, 1.25),
        "background": jitter(0.0, 0.08),
        "noise": jitter(0.02, 0.06),
    }
    return {k: v.astype(np.float32) for k, v in found.items()}


def texture(d: dict, t: np.ndarray) -> np.ndarray:
    """Two gratings per image, float32 ``[B, S(y), S(x)]``, as one batched product of rank 4."""
    def factors(angle, freq, phase, amp):
        w = np.pi * freq  # t spans 2 units: freq cycles per side
        u = (w * np.cos(angle))[:, None] * t[None, :] + phase[:, None]  # [B,S] along x
        v = (w * np.sin(angle))[:, None] * t[None, :]  # [B,S] along y
        xs = np.stack([np.sin(u), np.cos(u)], axis=2) * amp[:, None, None]
        ys = np.stack([np.cos(v), np.sin(v)], axis=2)
        return xs, ys

    x1, y1 = factors(d["angle1"], d["freq1"], d["phase1"], np.ones_like(d["amp2"]))
    x2, y2 = factors(d["angle2"], d["freq2"], d["phase2"], d["amp2"])
    xs = np.concatenate([x1, x2], axis=2).astype(np.float32)  # [B,S,4]
    ys = np.concatenate([y1, y2], axis=2).astype(np.float32)
    return np.matmul(ys, xs.transpose(0, 2, 1))


def body_mask(d: dict, t: np.ndarray, size: int) -> np.ndarray:
    """Soft-edged ellipses, float32 ``[B, S, S]`` in [0, 1] (about a 2-pixel edge)."""
    rx = ((t[None, :] - d["centre_x"][:, None]) / d["axis_x"][:, None]) ** 2  # [B,S]
    ry = ((t[None, :] - d["centre_y"][:, None]) / d["axis_y"][:, None]) ** 2
    mask = rx[:, None, :] + ry[:, :, None]
    np.subtract(1.0, mask, out=mask)
    mask *= 0.1 * size
    return np.clip(mask, 0.0, 1.0, out=mask)


def render(d: dict, size: int, rng: np.random.Generator, out: np.ndarray) -> None:
    """Pixels of the images whose parameters are ``d`` into uint8 ``out [B,S,S]``."""
    t = np.linspace(-1, 1, size, dtype=np.float32)

    def col(a: np.ndarray) -> np.ndarray:
        return a[:, None, None]

    img = texture(d, t)
    img *= col(d["contrast"])
    img += col(d["level"] - d["background"])
    img *= body_mask(d, t, size)
    img += col(d["background"])
    noise = rng.integers(0, 256, img.shape, dtype=np.uint8)  # uniform: std 73.9 units of 1/255
    img += np.multiply(noise, col(d["noise"] / 73.9 / 255.0), dtype=np.float32)
    img -= col(d["noise"] * 127.5 / 73.9 / 255.0)
    img *= 255.0
    img += 0.5
    np.clip(img, 0.0, 255.0, out=img)
    out[...] = img  # truncation after +0.5: rounding


def chunk_rows_for(size: int) -> int:
    """Rows per images chunk: the largest power of two keeping a chunk within 4 MiB (1..4096)."""
    rows = CHUNK_BYTES // (size * size)
    return int(min(MAX_CHUNK_ROWS, 1 << max(0, int(rows).bit_length() - 1)))


def ids_for(lo: int, hi: int, n: int) -> list[str]:
    width = max(6, len(str(max(n - 1, 0))))
    return [f"a{i:0{width}d}" for i in range(lo, hi)]


@dataclass(kw_only=True)
class Options(CommonOptions):
    out: str = opt("output images store (.zarr, .h5 or .hdf5): uint8 images [N,S,S] and ids", role="output")
    n: int = opt("number of images", 10000, min=1, max=100_000_000)
    size: int = opt("image side in pixels", 256, min=16, max=4096)
    classes: int = opt("generator classes (the truth's label count)", 20, min=1, max=10000)
    imbalance: float = opt("largest class / smallest class, in expectation: class shares fall geometrically from "
                           "class 0 to the last class (a long tail, as in archives); 1 = every class equally likely",
                           1.0, min=1, max=100000)
    truth: str = opt("truth labels CSV (id,label) (default: OUT.truth.csv beside the store)", "", role="output")
    chunk_rows: int = opt("images per store chunk (0 = the most that fit in about 4 MiB, a power of two; "
                          "1 = one image per chunk, for per-image random reads)", 0, min=0, max=1_000_000)


class ArchiveTool(Tool):
    name = "toy-data archive"
    description = ("Generate a synthetic archive of any size: a store of uint8 phantom images [N,S,S] (an "
                   "elliptical body filled with oriented gratings, per class) and the truth labels "
                   "(OUT.truth.csv, id,label), written block by block and atomically. --workers threads "
                   "generate in parallel (same bytes). Prints the images/s it reached.")
    example = ("toy-data archive --n 216000 --size 256 --out archive.zarr\n"
               "toy-data archive --n 20000 --size 64 --classes 50 --out small.zarr --truth small-truth.csv "
               "--workers 2")
    Options = Options

    def outputs(self, opts: Options) -> list[tuple[str, str]]:
        return super().outputs(opts) + ([] if opts.truth else [("--out (truth)", str(truth_path(opts.out)))])

    def main(self, opts: Options) -> int:
        store_format(opts.out)  # a bad suffix is an error before any work
        chunk = opts.chunk_rows or chunk_rows_for(opts.size)
        truth = truth_path(opts.out, opts.truth)
        check_disk(opts.out, truth, opts.n, opts.size, opts.classes)  # before anything is built in memory
        start = time.perf_counter()
        with atomic_path(truth) as tmp_truth:  # ids and labels block by block: memory flat at any --n
            write_csv(tmp_truth, ["id", "label"], truth_rows(opts.n, opts.classes, opts.seed, opts.imbalance))
            write_archive(opts.out, opts.n, opts.size, opts.classes, opts.seed, chunk, opts.workers, opts.imbalance)
        seconds = time.perf_counter() - start
        rate = opts.n / max(seconds, 1e-9)
        log.info("wrote %s (%d images of %d px, %d classes, %d rows per chunk) and %s", opts.out, opts.n,
                 opts.size, opts.classes, min(chunk, opts.n), truth)
        print(f"{opts.n} images of {opts.size} px in {seconds:.1f} s: {rate:.0f} images/s")
        return 0


def truth_rows(n: int, classes: int, seed: int, imbalance: float = 1.0) -> Iterator[tuple[str, int]]:
    """``(id, label)`` of rows ``0..n-1`` (:func:`labels_for`), one generator block at a time."""
    for block in range(-(-n // GEN_BLOCK)):
        lo, hi = block * GEN_BLOCK, min(n, (block + 1) * GEN_BLOCK)
        yield from zip(ids_for(lo, hi, n), block_labels(seed, block, classes, imbalance)[:hi - lo].tolist())


def truth_path(out: str, truth: str | None = None) -> Path:
    return Path(truth) if truth else side_file(out, "truth.csv")


def check_disk(out: str, truth: Path, n: int, size: int, classes: int) -> None:
    """Refuse an archive that the disk cannot hold: the raw image bytes (noise barely
    compresses), the ids and the truth CSV, against the free space of the disk each goes to."""
    width = len(ids_for(max(n - 1, 0), n, n)[0])
    parts = [(Path(out), n * (size ** 2 + width + 8), f"{n} images of {size} px"),
             (truth, n * (width + len(str(classes)) + 2), "the truth labels")]
    disks: dict[int, list] = {}
    for path, size, what in parts:
        folder = next((p for p in (path.absolute().parent, *path.absolute().parents) if p.exists()), Path("."))
        disk = disks.setdefault(folder.stat().st_dev, [path, folder, 0, []])
        disk[2] += size
        disk[3].append(what)
    for path, folder, size, what in disks.values():
        free = shutil.disk_usage(folder).free
        if size > free:
            raise InputError(f"{path}: {' and '.join(what)} take up to {size / 2**30:.1f} GiB before compression, "
                             f"but {folder} has {free / 2**30:.1f} GiB free: use a smaller --n or --size, or "
                             "another disk")


def write_archive(out: str, n: int, size: int, classes: int, seed: int, chunk: int, workers: int = 0,
                  imbalance: float = 1.0) -> None:
    """Generate row ranges in ``workers`` threads (a bounded window ahead) and write them in order."""
    params = class_params(classes)
    unit = max(chunk, GEN_BLOCK) // GEN_BLOCK * GEN_BLOCK  # whole blocks; chunk-aligned when chunk is a power of two
    attrs = {"stage": "toy-data archive", "generator": "phantoms of two oriented gratings", "classes": classes,
             "seed": seed, "size": size, **({"imbalance": imbalance} if imbalance != 1 else {})}

    def make(lo: int) -> np.ndarray:
        hi = min(lo + unit, n)
        blocks = range(lo // GEN_BLOCK, -(-hi // GEN_BLOCK))
        return np.concatenate([generate_block(seed, b, classes, size, params, imbalance) for b in blocks])[:hi - lo]

    threads = max(1, workers)
    with create_store(out, n=n, arrays={"images": ((size, size), "uint8")}, attrs=attrs,
                      chunk_rows=chunk) as store, \
            ThreadPoolExecutor(threads) as pool, progress(total=n, desc="archive", unit="img") as bar:
        starts = iter(range(0, n, unit))
        pending = deque((lo, pool.submit(make, lo)) for _, lo in zip(range(threads + 1), starts))
        while pending:
            lo, future = pending.popleft()
            images = future.result()
            store.write("images", lo, images)
            write_ids(store, ids_for(lo, lo + len(images), n), lo)  # the ids of this block only
            bar.update(len(images))
            following = next(starts, None)
            if following is not None:
                pending.append((following, pool.submit(make, following)))


TOOL = ArchiveTool
