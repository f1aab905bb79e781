"""finetune's target kinds: single label (softmax), multi-label (one sigmoid per class), words (bi-gram vectors).

A new kind of target is one more class here and one more entry of ``TARGETS``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np


if TYPE_CHECKING:
    from .data import Data

log = logging.getLogger("ldpo")


class Training(Protocol):
    """What a target kind uses of the training run (``trainer.Trainer`` is one): the data, the network and
    its options, and two ways of scoring a split. Said here as a protocol so that the trainer imports the
    target kinds and they never import the trainer."""

    data: Data
    net: Any
    opts: Any
    device: str
    rank: int

    def evaluate(self, part: tuple[np.ndarray, np.ndarray]) -> tuple[float | None, float | None]: ...

    def collect(self, part: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]: ...

    def preprocess(self): ...


# -- target kinds ---------------------------------------------------------------------
# What the head predicts and how it is scored; the checkpoint records the kind (``target``)
# so that featurize and assign read the outputs right. A new kind (e.g. a regression
# target) is one more class here and one more entry of TARGETS.
class SingleLabel:
    """``single``: one label per image; softmax, cross-entropy, top-1/top-5 accuracy."""

    kind = "single"

    def __init__(self, data: Data, device: str):
        pass

    def loss(self, out, y, rows):
        import torch.nn.functional as F

        return F.cross_entropy(out, y)

    def hits(self, out, y, rows):
        """Training images predicted right (the running figure of an epoch)."""
        return (out.argmax(1) == y).sum()

    def epoch_figures(self, trainer: Training, hits: float) -> dict[str, Any]:
        val = trainer.evaluate(trainer.data.val)
        return {"train_top1": hits, "val_top1": val[0], "val_top5": val[1]}

    def final(self, trainer: Training, last: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(metrics: ``final`` and beside it, checkpoint entries)."""
        test = trainer.evaluate(trainer.data.test)
        if test[0] is not None:
            log.info("test top-1 %.3f top-5 %.3f", test[0], test[1])
        return {"final": {"train_loss": last.get("train_loss"), "train_top1": last.get("train_top1"),
                          "val_top1": last.get("val_top1"), "val_top5": last.get("val_top5"),
                          "test_top1": test[0], "test_top5": test[1]}}, {}


class MultiLabel:
    """``multi``: a set of labels per image (maybe none); one sigmoid per class, binary
    cross-entropy with class-balanced positive weights, per-class thresholds from the
    validation split."""

    kind = "multi"

    def __init__(self, data: Data, device: str):
        import torch

        self.truth = torch.from_numpy(data.truth).to(device)
        train = data.truth[data.train[0]]
        pos = train.sum(axis=0)
        everywhere = [c for c, n in zip(data.classes, pos) if len(train) and n == len(train)]
        if everywhere:
            log.warning("class%s %s %s positive on every one of the %d training images: no negatives to learn "
                        "from, %s sigmoid only learns to say yes", "es" if len(everywhere) > 1 else "",
                        ", ".join(str(c) for c in everywhere), "are" if len(everywhere) > 1 else "is", len(train),
                        "their" if len(everywhere) > 1 else "its")
        # negatives / positives per class: each class's positives weigh as much as its negatives
        self.pos_weight = torch.from_numpy((len(train) - pos) / np.maximum(pos, 1)).float().to(device)
        self.device = device

    def targets(self, rows):
        return self.truth[rows.to(self.device)]

    def loss(self, out, y, rows):
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(out, self.targets(rows), pos_weight=self.pos_weight)

    def hits(self, out, y, rows):
        """Training images whose whole label set is right at threshold 0.5 (exact match)."""
        return ((out > 0) == (self.targets(rows) > 0.5)).all(dim=1).sum()

    def epoch_figures(self, trainer: Training, hits: float) -> dict[str, Any]:
        val = self.scores(trainer, trainer.data.val, 0.5)
        return {"train_exact": hits, "val_macro_ap": val and val["macro_ap"], "val_exact": val and val["exact_match"]}

    def scores(self, trainer: Training, part, thresholds) -> dict[str, Any] | None:
        from ...common.numerics.metrics import multilabel_metrics

        if len(part[0]) == 0:
            return None
        probs, truth = trainer.collect(part)
        return multilabel_metrics(truth, probs, thresholds, trainer.data.classes)

    def final(self, trainer: Training, last: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        from ...common.numerics.metrics import best_thresholds, multilabel_metrics

        thresholds, val = np.full(len(trainer.data.classes), 0.5), None
        if len(trainer.data.val[0]):
            probs, truth = trainer.collect(trainer.data.val)
            thresholds = best_thresholds(truth, probs)
            val = multilabel_metrics(truth, probs, thresholds, trainer.data.classes)
        test = self.scores(trainer, trainer.data.test, thresholds)
        final: dict[str, Any] = {"train_loss": last.get("train_loss"), "train_exact": last.get("train_exact")}
        for name, m in (("val", val), ("test", test)):
            for key in ("macro_ap", "macro_auc", "macro_f1", "micro_f1"):
                final[f"{name}_{key}"] = m and m[key]
            final[f"{name}_exact"] = m and m["exact_match"]
        if test is not None:
            log.info("test: macro AP %.3f, macro F1 %.3f, micro F1 %.3f, exact match %.3f", test["macro_ap"] or 0,
                     test["macro_f1"], test["micro_f1"], test["exact_match"])
        log.info("thresholds per class (%s on the validation split): %s",
                 "F1-best" if len(trainer.data.val[0]) else "0.5: no", np.round(thresholds, 3).tolist())
        return ({"final": final, "thresholds": thresholds.tolist(), "val": val, "test": test},
                {"thresholds": [float(t) for t in thresholds]})


class Words:
    """``words``: image → words (Shin et al. §5). The head's 2·dim sigmoids regress a bi-gram's
    two word vectors, scaled per dimension into [0, 1] (:class:`ldpo.common.nlp.words.Scaling`),
    with sigmoid cross-entropy. Figures: ``train_hit`` (both halves' nearest term right,
    among the target file's terms), ``val_recall5``/``test_recall5`` (per image, the share
    of its terms among the 5 words :func:`ldpo.common.nlp.words.describe` gives)."""

    kind = "words"

    def __init__(self, data: Data, device: str):
        import torch

        info = data.words
        self.info, self.device = info, device
        self.table = torch.from_numpy(data.truth).to(device)
        self.dim = info.vectors.dim
        self.lo = torch.from_numpy(info.scaling.lo).to(device)
        self.span = torch.from_numpy(info.scaling.span()).to(device)
        terms = info.vectors.lookup(info.terms)
        centre = terms.mean(axis=0) if len(terms) > 1 else np.zeros(terms.shape[1], np.float32)
        unit = terms - centre  # centred, as describe compares (ldpo.common.nlp.words.term_scores)
        unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        self.centre = torch.from_numpy(centre.astype(np.float32)).to(device)
        self.unit = torch.from_numpy(unit.astype(np.float32)).to(device)
        self.term_a = torch.from_numpy(info.term_a).to(device)
        self.term_b = torch.from_numpy(info.term_b).to(device)

    def loss(self, out, y, rows):
        """Sigmoid cross-entropy summed over the 2·dim units, averaged over the batch (Caffe's
        SigmoidCrossEntropyLoss, which Shin et al. used): a mean over the units too would shrink
        each unit's gradient 2·dim times."""
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(out, self.table[y], reduction="sum") / len(y)

    def nearest_terms(self, out):
        """Each half's nearest target-file term (numbers), by centred cosine after unscaling."""
        import torch

        halves = []
        for k in (0, 1):
            v = self.lo + torch.sigmoid(out[:, k * self.dim:(k + 1) * self.dim].float()) * self.span - self.centre
            halves.append((v @ self.unit.T).argmax(dim=1))
        return halves

    def hits(self, out, y, rows):
        a, b = self.nearest_terms(out.detach())
        return ((a == self.term_a[y]) & (b == self.term_b[y])).sum()

    def predict(self, trainer: Training, part) -> tuple[np.ndarray, np.ndarray]:
        """The part's images (store rows, once each) and the head's sigmoid outputs for them."""
        from ...common.nlp import words

        images = np.unique(part[0])
        if len(images) == 0:
            return images, np.zeros((0, 2 * self.dim), np.float32)
        return images, words.predict(trainer.net, trainer.opts.images, images, trainer.preprocess(),
                                     trainer.opts.batch_size, trainer.opts.workers, trainer.device, trainer.opts.amp,
                                     bar=trainer.rank == 0 and not trainer.opts.no_progress)

    def recall(self, images: np.ndarray, outputs: np.ndarray, prior: dict[str, float] | None = None,
               weight: float = 0.0) -> float | None:
        """recall@5 of the images' terms among the 5 words describe gives them (None without images)."""
        from ...common.nlp import words

        if len(images) == 0:
            return None
        found = words.describe(outputs, self.info.vectors, self.info.scaling, self.info.terms, 5, prior, weight)
        return words.recall_at([[w for w, _ in f] for f in found], [self.info.image_terms[int(r)] for r in images], 5)

    def epoch_figures(self, trainer: Training, hits: float) -> dict[str, Any]:
        return {"train_hit": hits, "val_recall5": self.recall(*self.predict(trainer, trainer.data.val))}

    def prior_weight(self, trainer: Training, prior: dict[str, float]) -> float:
        """The term-prior weight of :data:`ldpo.common.nlp.words.PRIOR_WEIGHTS` with the best validation recall@5
        (the first best; 0 without a validation split)."""
        from ...common.nlp.words import PRIOR_WEIGHTS

        images, outputs = self.predict(trainer, trainer.data.val)
        if len(images) == 0:
            return 0.0
        scores = [self.recall(images, outputs, prior, w) for w in PRIOR_WEIGHTS]
        best = PRIOR_WEIGHTS[int(np.argmax(scores))]
        log.info("term prior weight %g, chosen on the validation split (recall@5 %s for weights %s)", best,
                 " ".join(f"{v:.3f}" for v in scores), " ".join(f"{w:g}" for w in PRIOR_WEIGHTS))
        return best

    def final(self, trainer: Training, last: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        from ...common.nlp.words import term_prior

        info = self.info
        trained = np.unique(trainer.data.train[0])
        prior = dict(zip(info.terms, term_prior((info.image_terms[int(r)] for r in trained), info.terms)))
        weight = self.prior_weight(trainer, prior)
        test = self.recall(*self.predict(trainer, trainer.data.test), prior, weight)
        if test is not None:
            log.info("test recall@5 %.3f", test)
        return ({"final": {"train_loss": last.get("train_loss"), "train_hit": last.get("train_hit"),
                           "val_recall5": last.get("val_recall5"), "prior_weight": weight, "test_recall5": test}},
                {"words": {"vectors_checksum": info.vectors.checksum, "dim": info.vectors.dim,
                           "scaling": info.scaling.state(), "terms": list(info.terms),
                           "prior": [prior[t] for t in info.terms], "prior_weight": weight}})


TARGETS = {"single": SingleLabel, "multi": MultiLabel, "words": Words}

