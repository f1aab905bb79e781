"""``assign``: put new images into the categories a finetune checkpoint was trained on.

Each image of IMAGES goes through MODEL (a ``finetune`` checkpoint, e.g. the loop's
``WORK/final/model.pt``, a copy of its last iteration's) exactly as ``featurize --layer probs`` does (the
checkpoint's input size and normalization), and gets the class with the highest
softmax probability. Label values are the checkpoint's ``classes``.

``unsure`` is 1 when either rule says so:

* confidence: the top probability is below ``--min-confidence``;
* distance (only with ``--reference-labels`` and ``--reference-images``, e.g. the
  run's ``final/labels.csv`` and its images store): the model's penultimate features
  (avgpool, fc7 or pool5) of the reference images give one centroid per class and a
  radius per class = the ``--radius-quantile`` quantile (default 0.95) of the distances
  of that class's own reference images to its centroid. An image farther from every
  centroid than that centroid's radius is unsure: it is less typical of every class
  than 95% of the class's own training images.

Writes OUT: ``id,label,probability,runner_up,runner_up_probability,unsure``
(``nearest_distance`` and ``nearest_radius`` too with the distance rule).

A multi-label checkpoint (``finetune --multi-label``: one sigmoid per class) gives each
image its label set instead: every class whose probability reaches the class's threshold
(chosen by finetune on its validation split). OUT is then a multi-label file
(:mod:`ldpo.common.files.labels`): ``id,label,p_C…,unsure_C…,unsure`` with ``label`` the set
(``0;2``; empty: none of the classes), ``p_C`` each class's probability, ``unsure_C`` = 1
when that probability is within ``--margin`` of the class's threshold, and ``unsure`` = 1
when any class is. The distance rule is for single-label checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..common.cli import READER_WORKERS, CommonOptions, Tool, opt, positional, resolve_device, same_file
from ..common.errors import InputError

log = logging.getLogger("ldpo")


@dataclass(kw_only=True)
class Options(CommonOptions):
    images: str = positional("images store (.h5/.zarr) of the images to assign", role="input")
    model: str = opt("finetune checkpoint (e.g. the loop's WORK/final/model.pt)", role="input")
    out: str = opt("output CSV: id,label,probability,runner_up,runner_up_probability,unsure; - for stdout",
                   role="output")
    min_confidence: float = opt("unsure when the top probability is below this", 0.5, min=0, max=1)
    reference_labels: Optional[str] = opt("labels the model was trained on (WORK/final/labels.csv): enables the "
                                          "distance rule", None, role="input")
    reference_images: Optional[str] = opt("images store holding the reference labels' ids", None, role="input")
    radius_quantile: float = opt("a class's radius: this quantile of its reference images' distances to its "
                                 "centroid", 0.95, above=0, max=1)
    workers: int = opt(READER_WORKERS, 0, min=0, max=1024)
    batch_size: int = opt("images per batch", 64, min=1)
    amp: bool = opt("speed over bit-reproducibility: bfloat16 autocast, and on CUDA channels-last and cuDNN "
                    "autotuning (as featurize --amp)", False)
    margin: float = opt("multi-label checkpoints: a class's decision is unsure when its probability is within "
                        "this of the class's threshold", 0.1, min=0, max=1)


class AssignTool(Tool):
    name = "assign"
    description = ("Assign images to the categories of a finetune checkpoint: label, probability, runner-up, and "
                   "`unsure` = 1 when the top probability is below --min-confidence or (with --reference-labels "
                   "and --reference-images) the image is farther from every class centroid, in the model's "
                   "penultimate features, than that class's --radius-quantile of its own reference images.")
    example = ("assign new.h5 --model runs/a/final/model.pt --out new-labels.csv\n"
               "assign new.h5 --model runs/a/final/model.pt --out new-labels.csv --min-confidence 0.6 \\\n"
               "    --reference-labels runs/a/final/labels.csv --reference-images images.h5\n"
               "assign new.h5 --model ml/model.pt --out new-sets.csv --margin 0.15   # a --multi-label checkpoint")
    Options = Options
    together = (("reference_labels", "reference_images"),)

    def main(self, opts: Options) -> int:
        import torch

        from ..common.nets import models
        from ..common.nets.checkpoint import require_target
        from ..common.files.labels import align, read_labels, write_labels
        from ..common.files.stores import open_store

        device = resolve_device(opts.device)
        torch.manual_seed(opts.seed)
        if device == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        init = models.parse_init(f"checkpoint:{opts.model}")
        built = models.build(init, seed=opts.seed)
        require_target(built.target, opts.model, "assign")
        check_classes(built.classes, models.num_outputs(built.model, built.arch), opts.model)
        if built.target == "multi" and opts.reference_labels:
            raise InputError(f"--reference-labels: {opts.model} is a multi-label checkpoint; the distance rule "
                             "is for single-label ones")
        net = Network(built, device)
        with open_store(opts.images, expect="images") as store:
            ids = store.ids
        if not ids:
            raise InputError(f"{opts.images}: no images")
        probs, feats = net.run(opts.images, opts.batch_size, "assign", opts.workers, opts.amp)
        if built.target == "multi":
            return assign_sets(built, ids, probs, opts.margin, opts.out, opts.model)
        classes = np.asarray(built.classes, dtype=np.int64)
        order = np.argsort(-probs, axis=1, kind="stable")
        top, second = order[:, 0], order[:, 1] if probs.shape[1] > 1 else order[:, 0]
        rows = np.arange(len(ids))
        p_top, p_second = probs[rows, top], probs[rows, second] if probs.shape[1] > 1 else np.zeros(len(ids))
        unsure = p_top < opts.min_confidence
        extra = {"probability": [f"{p:.6f}" for p in p_top],
                 "runner_up": classes[second].tolist() if probs.shape[1] > 1 else [""] * len(ids),
                 "runner_up_probability": [f"{p:.6f}" for p in p_second]}
        if opts.reference_labels:
            with open_store(opts.reference_images, expect="images") as ref:
                ref_ids = ref.ids
            lab = read_labels(opts.reference_labels)
            ref_labels = align(lab, ref_ids, opts.reference_images, allow_missing=True)
            known = set(classes.tolist())
            strange = sorted(set(lab.labels.tolist()) - known)
            if strange:
                raise InputError(f"{opts.reference_labels}: label {strange[0]} is not a class of {opts.model}")
            if same_file(opts.reference_images, opts.images):
                ref_feats = feats
            else:
                ref_feats = net.run(opts.reference_images, opts.batch_size, "reference", opts.workers, opts.amp)[1]
            centroids, radius = class_radii(ref_feats[ref_labels >= 0], ref_labels[ref_labels >= 0], classes,
                                            opts.radius_quantile)
            dist = distances(feats, centroids)  # [N, K]
            with np.errstate(invalid="ignore"):
                ratio = np.where(np.isfinite(radius)[None], dist / np.maximum(radius, 1e-12)[None], np.inf)
            nearest = np.argmin(ratio, axis=1)
            far = ratio[rows, nearest] > 1.0
            unsure |= far
            extra["nearest_distance"] = [f"{d:.6g}" for d in dist[rows, nearest]]
            extra["nearest_radius"] = [f"{r:.6g}" for r in radius[nearest]]
            log.info("distance rule: %d of %d images farther than every class radius", int(far.sum()), len(ids))
        extra["unsure"] = unsure.astype(int).tolist()
        write_labels(opts.out, ids, classes[top], extra)
        log.info("assigned %d images to %d classes; %d unsure", len(ids), len(set(top.tolist())), int(unsure.sum()))
        return 0


def assign_sets(built, ids: list[str], probs: np.ndarray, margin: float, out: str, model: str = "") -> int:
    """A multi-label checkpoint: each image's label set, per-class probabilities and unsure flags."""
    from ..common.files.labels import write_multilabels

    classes = list(built.classes)
    thresholds = np.asarray(built.thresholds if built.thresholds is not None else [0.5] * len(classes))
    if thresholds.shape != (len(classes),) or not np.all((thresholds >= 0) & (thresholds <= 1)):
        raise InputError(f"{model}: its `thresholds` do not give one threshold in [0, 1] per class")
    chosen = probs >= thresholds[None, :]
    near = np.abs(probs - thresholds[None, :]) < margin
    sets = [[c for c, keep in zip(classes, row) if keep] for row in chosen]
    extra: dict[str, list] = {f"p_{c}": [f"{p:.6f}" for p in probs[:, k]] for k, c in enumerate(classes)}
    extra.update({f"unsure_{c}": near[:, k].astype(int).tolist() for k, c in enumerate(classes)})
    extra["unsure"] = near.any(axis=1).astype(int).tolist()
    write_multilabels(out, ids, sets, extra)
    sizes = np.bincount(chosen.sum(axis=1), minlength=3)
    log.info("assigned %d images: %d to no class, %d to one, %d to several; %d unsure", len(ids), sizes[0],
             sizes[1], int(sizes[2:].sum()), int(near.any(axis=1).sum()))
    return 0


def check_classes(classes: list[int], outputs: int, path: str) -> None:
    """The checkpoint's ``classes`` name each output of its head once, as labels (a damaged or
    hand-edited checkpoint otherwise gives an index error, or labels that are not labels)."""
    if len(classes) != outputs:
        raise InputError(f"{path}: its `classes` lists {len(classes)} label(s) but its head has {outputs} "
                         "outputs: not a checkpoint finetune wrote")
    seen: set[int] = set()
    for c in classes:
        if c < 0:
            raise InputError(f"{path}: its `classes` holds the negative label {c}")
        if c in seen:
            raise InputError(f"{path}: its `classes` lists label {c} twice")
        seen.add(c)


def class_radii(feats: np.ndarray, labels: np.ndarray, classes: np.ndarray, quantile: float):
    """Per class: the centroid of its reference features and the ``quantile`` of their distances to it
    (classes without reference images get an infinite-distance centroid: they never count as near)."""
    centroids = np.zeros((len(classes), feats.shape[1]), dtype=np.float64)
    radius = np.full(len(classes), np.nan)
    for j, c in enumerate(classes.tolist()):
        own = feats[labels == c].astype(np.float64)
        if len(own) == 0:
            continue
        centroids[j] = own.mean(axis=0)
        radius[j] = float(np.quantile(distances(own, centroids[j:j + 1])[:, 0], quantile))
    return centroids, radius


def distances(x: np.ndarray, centroids: np.ndarray, block: int = 4096) -> np.ndarray:
    """Euclidean distances [N, K], computed in blocks of rows (memory N·K, not N·K·D)."""
    c = centroids.astype(np.float64)
    c2 = (c ** 2).sum(axis=1)
    out = np.empty((len(x), len(c)), dtype=np.float64)
    for lo in range(0, len(x), block):
        xb = x[lo:lo + block].astype(np.float64)
        d2 = (xb ** 2).sum(axis=1)[:, None] - 2.0 * xb @ c.T + c2[None, :]
        out[lo:lo + block] = np.sqrt(np.maximum(d2, 0.0))
    return out


class Network:
    """The checkpoint's model: probabilities (softmax; one sigmoid per class for a multi-label
    checkpoint) and penultimate features in one pass."""

    def __init__(self, built, device: str):
        from ..common.nets import models

        self.built, self.device = built, device
        self.model = built.model.eval().to(device)
        self._captured = None
        models.head_module(self.model, built.arch).register_forward_pre_hook(self._keep)

    def _keep(self, module, inputs) -> None:
        self._captured = inputs[0]  # what the head sees: the default global layer, for every arch

    def run(self, path: str, batch: int, what: str, workers: int = 0, amp: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from ..common.images import imagedata
        from ..common.images.accel import tune
        from ..common.images.inference import infer, store_items

        built = self.built
        fast = tune(self.model, self.device, amp)
        prep = imagedata.Preprocess(built.input_size, built.normalize, built.mean, built.std, channels_last=fast)
        probs, feats = [], []
        for _, _, logits in infer(self.model, path, store_items(path, batch), prep, batch=batch, workers=workers,
                                  device=self.device, amp=amp, desc=what):
            logits = logits.float()
            multi = built.target == "multi"
            probs.append((torch.sigmoid(logits) if multi else torch.softmax(logits, dim=1)).cpu().numpy())
            feats.append(self._captured.flatten(1).float().cpu().numpy())
        return np.concatenate(probs), np.concatenate(feats)


TOOL = AssignTool
main = AssignTool.console
