"""finetune's data: the labels (single, multi-label or words) joined to the images store, and the split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...common.errors import InputError

if TYPE_CHECKING:
    from .options import Options

log = logging.getLogger("ldpo")


# -- data -----------------------------------------------------------------------------
@dataclass
class Data:
    classes: list[int]  # original label values; index = class number
    side: int  # the store's image side in px (sets the default input size from random init)
    train: tuple[np.ndarray, np.ndarray]  # store rows, class numbers
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    chunk: int = 1  # rows per chunk of the store's images
    row_bytes: int = 1  # bytes per image
    target: str = "single"  # the target kind: single (one label, softmax) | multi (label sets, sigmoids)
    # multi: float32 [store rows, K], 1 where the row has the class; words: float32 [bi-grams, 2·dim], the
    # scaled targets (a part's targets number its bi-grams)
    truth: np.ndarray | None = None
    words: Any = None  # words: what the Words target needs besides (WordsData)
    neighbours: np.ndarray | None = None  # --neighbours: int64 [store rows, k] store rows, -1 = none



def load_data(opts: Options) -> Data:
    """Labels joined to the store by id, renumbered 0..K-1 and split (seeded)."""
    from ...common.files.labels import align, contiguous, read_labels
    from ...common.files.stores import open_store

    from ...common.images.imagedata import chunk_rows

    with open_store(opts.images, expect="images") as store:
        store_ids, shape = store.ids, store.shape("images")
    side, chunk, row_bytes = max(shape[1:3]), chunk_rows(opts.images), int(np.prod(shape[1:]))
    if opts.multi_label:
        return load_multi(opts, store_ids, side, chunk, row_bytes)
    if opts.vectors is not None:
        return load_words(opts, store_ids, side, chunk, row_bytes)
    labels = read_labels(opts.labels)
    per_row = align(labels, store_ids, opts.images, allow_missing=opts.allow_missing)
    if opts.min_confidence:
        per_row = drop_unconfident(labels, per_row, store_ids, opts.min_confidence, opts.labels)
    rows = np.flatnonzero(per_row >= 0)
    if len(rows) == 0:
        raise InputError(f"{opts.labels}: no image of {opts.images} has a label")
    targets, classes = contiguous(per_row[rows])
    if len(classes) < 2:
        raise InputError(f"{opts.labels}: only one class ({classes[0]}); finetune needs at least two")
    skipped = len(store_ids) - len(rows)
    log.info("finetune: %d labelled images in %d classes%s", len(rows), len(classes),
             f" ({skipped} without a label skipped)" if skipped else "")
    data = Data(classes, side, *split(opts, rows, targets), chunk, row_bytes)
    if opts.neighbours is not None:
        data.neighbours = mine_neighbours(opts.neighbours, store_ids, opts.images, opts.neighbour_k, opts.device)
    return data


def mine_neighbours(path: str, store_ids: list[str], images: str, k: int, device: str) -> np.ndarray:
    """Each images-store row's ``k`` nearest images (cosine, :func:`ldpo.common.numerics.features.nearest_neighbours`) in
    the feature store ``path``, matched by id: int64 [store rows, k] of store rows, -1 for an image the feature
    store lacks. Its features are read whole (rows x dimensions x 4 bytes)."""
    from ...common.cli import resolve_device
    from ...common.numerics.features import nearest_neighbours
    from ...common.files.stores import open_store

    with open_store(path, expect="features") as store:
        ids = store.ids
        row_of = {ident: i for i, ident in enumerate(store_ids)}
        present = np.array([i for i, ident in enumerate(ids) if ident in row_of], dtype=np.int64)
        if len(present) < 2:
            raise InputError(f"{path}: {len(present)} of its ids are images of {images}; --neighbours needs the "
                             "same images")
        x = store.read("features")  # one copy, not blocks joined
    if len(present) < len(ids):
        x = x[present]
    if not np.isfinite(x).all():
        raise InputError(f"{path}: NaN or infinite features")
    rows = np.array([row_of[ids[i]] for i in present], dtype=np.int64)
    found = nearest_neighbours(x, min(k, len(rows) - 1), resolve_device(device))
    table = np.full((len(store_ids), found.shape[1]), -1, dtype=np.int64)
    table[rows] = rows[found]
    log.info("finetune: %d nearest neighbours of each of %d images mined in %s", found.shape[1], len(rows), path)
    return table


def drop_unconfident(labels, per_row: np.ndarray, store_ids: list[str], threshold: float, path: str) -> np.ndarray:
    """``per_row`` with -1 (no label) where the labels' ``confidence`` is below ``threshold``."""
    values = labels.extra.get("confidence")
    if values is None:
        raise InputError(f"{path}: no confidence column for --min-confidence (cluster --method scan writes one)")
    try:
        confidence = {i: float(v) for i, v in zip(labels.ids, values)}
    except ValueError as err:
        raise InputError(f"{path}: a confidence that is not a number ({err})") from None
    for ident, value in confidence.items():
        if not 0.0 <= value <= 1.0:  # also NaN
            raise InputError(f"{path}: id {ident!r}: confidence {value!r} is not a probability in [0, 1]")
    out = per_row.copy()
    low = np.array([confidence.get(i, 1.0) < threshold for i in store_ids])
    out[low & (out >= 0)] = -1
    log.info("finetune: %d of %d labelled images below confidence %g left out", int((low & (per_row >= 0)).sum()),
             int((per_row >= 0).sum()), threshold)
    return out


def split(opts: Options, rows: np.ndarray, targets: np.ndarray):
    """``(train, val, test)`` parts of (store rows, targets): a seeded permutation cut at --split."""
    fractions = parse_split(opts.split)
    if fractions is None:
        empty = (rows[:0], targets[:0])
        return (rows, targets), empty, empty
    perm = np.random.default_rng(opts.seed).permutation(len(rows))
    n_train = max(1, round(fractions[0] * len(rows)))
    n_val = min(len(rows) - n_train, round(fractions[1] * len(rows)))
    parts = np.split(perm, [n_train, n_train + n_val])
    log.info("split %s: %d train, %d val, %d test", opts.split, len(parts[0]), len(parts[1]), len(parts[2]))
    return tuple((rows[p], targets[p]) for p in parts)


def load_multi(opts: Options, store_ids: list[str], side: int, chunk: int, row_bytes: int) -> Data:
    """--multi-label: label sets joined to the store by id; ``truth`` holds them per store row,
    and a part's targets are the number of each row's label combination (for --balanced)."""
    from ...common.files.labels import align_multi, read_multilabels

    labels = read_multilabels(opts.labels)
    classes = labels.classes
    if not classes:
        raise InputError(f"{opts.labels}: no image has a label (every label cell is empty)")
    rows, y = align_multi(labels, store_ids, classes, opts.images, allow_missing=opts.allow_missing)
    truth = np.zeros((len(store_ids), len(classes)), dtype=np.float32)
    truth[rows] = y
    _, combos = np.unique(y, axis=0, return_inverse=True)
    negatives = int((y.sum(axis=1) == 0).sum())
    log.info("finetune --multi-label: %d images, %d classes, %d with several labels, %d with none (true "
             "negatives)", len(rows), len(classes), int((y.sum(axis=1) > 1).sum()), negatives)
    if opts.crop_scale < 0.8:
        log.warning("--crop-scale %g with --multi-label: a random crop can cut a labelled part out of the image "
                    "(its target still says present); --crop-scale 1 keeps the whole image", opts.crop_scale)
    parts = split(opts, rows, combos.reshape(-1).astype(np.int64))
    return Data(classes, side, *parts, chunk, row_bytes, target="multi", truth=truth)


@dataclass
class WordsData:
    """--vectors: the vectors, their scaling, the bi-grams' term numbers, the candidate terms."""

    vectors: Any  # ldpo.common.nlp.words.Vectors
    scaling: Any  # ldpo.common.nlp.words.Scaling
    terms: list[str]  # every term of the words-target file: the words describe may give
    term_a: np.ndarray  # per bi-gram, its terms' numbers in ``terms``
    term_b: np.ndarray
    image_terms: dict[int, list[str]]  # store row -> its terms (the truth of recall@5)


def load_words(opts: Options, store_ids: list[str], side: int, chunk: int, row_bytes: int) -> Data:
    """--vectors: bi-grams joined to the store by id. The split is by image (an image's
    bi-grams stay in one part); a part's targets number its bi-grams (rows repeat: an image
    with several bi-grams is trained once per bi-gram)."""
    from ...common.nlp import words

    vectors = words.read_vectors(opts.vectors)
    target = words.read_words_target(opts.labels, vectors)
    at = {ident: row for row, ident in enumerate(store_ids)}
    unknown = [i for i in dict.fromkeys(target.ids) if i not in at]
    if unknown and not opts.allow_missing:
        raise InputError(f"{opts.labels}: {len(unknown)} ids are not images of {opts.images} (first: "
                         f"{unknown[0]!r}); --allow-missing skips them")
    keep = [k for k, i in enumerate(target.ids) if i in at]
    if not keep:
        raise InputError(f"{opts.labels}: no image of {opts.images} has a bi-gram")
    target = words.WordsTarget([target.ids[k] for k in keep], [target.term_a[k] for k in keep],
                               [target.term_b[k] for k in keep], target.path)
    scaling = words.Scaling.fit(vectors.matrix)
    table = words.target_matrix(target, vectors, scaling)
    terms = target.terms()
    number = {t: k for k, t in enumerate(terms)}
    rows_of = np.array([at[i] for i in target.ids], dtype=np.int64)
    image_terms: dict[int, list[str]] = {}
    for row, a, b in zip(rows_of.tolist(), target.term_a, target.term_b):
        image_terms.setdefault(row, [])
        image_terms[row] += [t for t in (a, b) if t not in image_terms[row]]
    images = np.array(sorted(image_terms), dtype=np.int64)
    parts = []
    for rows, _ in split(opts, images, np.zeros(len(images), np.int64)):
        mine = np.flatnonzero(np.isin(rows_of, rows))
        parts.append((rows_of[mine], mine.astype(np.int64)))
    log.info("finetune --vectors: %d bi-grams of %d images, %d terms, %d-d vectors (%s)", len(table), len(images),
             len(terms), vectors.dim, vectors.checksum[:12])
    info = WordsData(vectors, scaling, terms, np.array([number[t] for t in target.term_a]),
                     np.array([number[t] for t in target.term_b]), image_terms)
    return Data(list(range(2 * vectors.dim)), side, *parts, chunk, row_bytes, target="words", truth=table,
                words=info)

def parse_split(text: str) -> tuple[float, float, float] | None:
    """``70/10/20`` → fractions; ``none`` → None (train on everything)."""
    if text.lower() == "none":
        return None
    try:
        parts = [float(p) for p in text.split("/")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 0 or parts[0] <= 0 or abs(sum(parts) - 100) > 1e-6:
        raise InputError(f"--split {text}: use train/val/test percentages summing to 100 (e.g. 70/10/20), or none")
    return parts[0] / 100, parts[1] / 100, parts[2] / 100
