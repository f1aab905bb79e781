"""``finetune``: train a CNN on (pseudo-)labels; write a checkpoint and its metrics.

The paper's recipe: SGD, momentum 0.9, weight decay 5e-4; base LR 0.001 with the new
head at ×10 when starting from pretrained weights or a checkpoint. From ``--init
random`` the default is a BatchNorm network (resnet18) at LR 0.01 with no head boost
(measured: AlexNet without BatchNorm did not learn from random init). A fresh seeded
70/10/20 split per call (``--split none``: train on everything, DeepCluster style).

Outputs (rank 0 writes, atomically):

* ``CHECKPOINT``: a :class:`ldpo.common.nets.checkpoint.Checkpoint` (its one owner: the keys,
  the format tag, reading and writing);
* ``CHECKPOINT``'s metrics beside it, named from it (``model.pt`` → ``model.metrics.json``,
  so two checkpoints in one folder keep their own): ``epochs`` (per epoch ``train_loss``,
  ``train_top1``, ``val_top1``, ``val_top5``, ``seconds``) and ``final`` (``train_loss``,
  ``train_top1``, ``val_top1``, ``val_top5``, ``test_top1``, ``test_top5``; ``null`` where
  the split has no such part). ``train_*`` are running figures over the last epoch's
  augmented batches;
* ``--multi-label`` (target kind ``multi``; the default is ``single``): the labels CSV may
  give an id several labels (``0;2``) or none (an empty cell: a true negative, an image
  of none of the classes; see :mod:`ldpo.common.files.labels`). One sigmoid per class
  (one-vs-all), binary cross-entropy with class-balanced positive weights (negatives /
  positives of the class in the training split), and per class the decision threshold
  that maximizes its F1 on the validation split (0.5 without one). The checkpoint adds
  ``target`` (``single`` | ``multi``) and ``thresholds``; ``featurize --layer probs`` then
  writes sigmoids and ``assign`` label sets. Metrics: per epoch ``train_exact``,
  ``val_macro_ap``, ``val_exact``; ``final`` ``val_*``/``test_*`` ``macro_ap``,
  ``macro_auc``, ``macro_f1``, ``micro_f1``, ``exact`` at the chosen thresholds, and
  ``val``/``test`` with every figure per class (AP, AUC, F1, threshold). ``--balanced``
  draws each label combination about equally often; use ``--crop-scale 1`` (or close to it):
  a random crop can cut a labelled part out (a warning says so below 0.8);
* ``--vectors VECTORS`` (target kind ``words``, image → words, Shin et al. §5): LABELS is a
  words-target CSV (``id,term_a,term_b``, one row per bi-gram: an image is trained once per
  bi-gram; :mod:`ldpo.common.nlp.words`). The head has 2·DIM sigmoids (512 for 256-d vectors)
  regressing the bi-gram's two word vectors, each dimension min-max scaled into [0, 1] over
  the vectors file, with sigmoid cross-entropy (summed over the units, averaged over the
  batch, as Caffe's); the split is by image. The checkpoint adds
  ``target`` ``words`` and ``words``: ``vectors_checksum`` (SHA-256 of VECTORS), ``dim``,
  ``scaling`` (``kind``, per-dimension ``lo``/``hi``) and ``terms`` (the target file's
  terms: what ``describe`` may say). Metrics: per epoch ``train_hit`` (both halves'
  nearest term right), ``val_recall5``; ``final`` ``test_recall5`` (per image, the share of
  its terms among the 5 words ``describe`` gives);
* ``CHECKPOINT.partial`` after every epoch (model, optimizer, scheduler and RNG
  state), removed at the end; ``--resume`` continues from it.

Under ``torchrun`` (WORLD_SIZE > 1) it runs DistributedDataParallel (gloo on CPU, nccl
on CUDA); ``--batch-size`` is per process. ``LDPO_STOP_AFTER_EPOCH=E`` interrupts the
run after epoch E's partial checkpoint (for testing ``--resume``).

The package: this front module holds the options' checks and the command, ``options.py`` the
options and the names of the files beside the checkpoint (neither imports torch, so ``finetune
--help`` answers at once and a SLURM script's argument error costs nothing:
``tests/test_checkpoint.py`` checks it); ``data.py`` joins the labels to the images
and splits them; ``targets.py`` holds the target kinds (one class each); ``trainer.py`` the
training loop, resume and the distributed helpers.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from ...common.cli import Tool, resolve_device
from ...common.errors import InputError

from .data import parse_split, split  # noqa: F401 - split: the public split rule (bench_multilabel)
from .options import Options, metrics_path, partial_path

log = logging.getLogger("ldpo")

class FinetuneTool(Tool):
    def outputs(self, opts: Options) -> list[tuple[str, str]]:
        return super().outputs(opts) + [("--out (metrics)", str(metrics_path(opts.out))),
                                        ("--out (resume state)", str(partial_path(opts.out)))]

    name = "finetune"
    description = ("Fine-tune (or train from scratch) a CNN on labels; write a checkpoint and, named from it, its "
                   "metrics (OUT.pt → OUT.metrics.json).")
    example = ("finetune images.h5 labels.csv --out model.pt --init random --input-size 64 --epochs 3\n"
               "finetune images.h5 topics.csv --out model.pt --init weights:alexnet-owt-7be5be79.pth\n"
               "finetune ml/images.h5 ml/truth.csv --out model.pt --init random --multi-label --crop-scale 1\n"
               "finetune images.h5 iter-00/labels.csv --out model.pt --neighbours iter-00/features.h5\n"
               "finetune keys/images.h5 words.csv --vectors vectors.txt --out words.pt --init checkpoint:topics.pt\n"
               "finetune images.h5 labels.csv --out model.pt --arch timm:convnext_tiny --init weights:convnext.safetensors "
               "--freeze-backbone\n"
               "torchrun --nproc_per_node 4 -m ldpo.stages.finetune images.h5 labels.csv --out model.pt")
    Options = Options

    def main(self, opts: Options) -> int:
        import torch

        from ...common.nets import models

        from .data import load_data
        from .trainer import Trainer, finished, resolve_settings, start_distributed, stop_distributed

        check_options(opts)
        if opts.schedule is None:
            opts.schedule = "cosine" if opts.vectors is not None else "constant"
        check_writable(opts.out)
        init = models.parse_init(opts.init)
        if opts.arch is not None:
            models.check_arch(opts.arch)
        data = load_data(opts)
        rank, world, device = start_distributed(resolve_device(opts.device))
        try:
            if rank:
                log.setLevel(logging.WARNING)
            torch.manual_seed(opts.seed)
            torch.use_deterministic_algorithms(True, warn_only=True)
            built = models.build(init, opts.arch, len(data.classes), opts.seed, opts.input_size, opts.normalize,
                                 new_head=opts.new_head, input_filter=opts.input_filter, store_side=data.side,
                                 head=opts.head)
            settings = resolve_settings(opts, built, world)
            if data.words is not None:  # the vectors by content: another file under the same name trains anew
                settings.update(vectors=str(Path(opts.vectors).resolve()), vectors_checksum=data.words.vectors.checksum)
            if opts.resume and finished(opts.out, settings, rank):
                log.info("%s: already done with these options (--resume)", opts.out)
                return 0
            Trainer(opts, built, data, settings, rank, world, device).run()
        finally:
            stop_distributed(world)
        return 0


def check_options(opts: Options) -> None:
    """What the declarations (bounds, roles) cannot say: options that exclude each other."""
    parse_split(opts.split)
    if opts.head == "mlp" and opts.head_init == "centroids":
        raise InputError("--head-init centroids: needs a linear head (not --head mlp)")
    if opts.multi_label and opts.head_init == "centroids":
        raise InputError("--head-init centroids: needs one label per image (not --multi-label)")
    if opts.multi_label and opts.min_confidence:
        raise InputError("--min-confidence: needs one label per image (not --multi-label)")
    if opts.neighbours is not None and (opts.multi_label or opts.vectors is not None):
        raise InputError("--neighbours: needs one label per image (not --multi-label or --vectors)")
    if opts.vectors is not None:
        for flag, given in (("--multi-label", opts.multi_label), ("--head-init centroids", opts.head_init == "centroids"),
                            ("--min-confidence", bool(opts.min_confidence)), ("--balanced", opts.balanced)):
            if given:
                raise InputError(f"{flag}: needs class labels (not --vectors, a words target)")


def check_writable(out: str) -> None:
    """An --out folder that cannot be written is found before training, not after the first
    epoch: create and remove a temporary file in it (in its nearest existing parent when the
    folder is still to be made)."""
    folder = Path(out).absolute().parent
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise InputError(f"{out}: cannot create its folder {folder} ({existing} is not a folder)")
    try:
        handle, name = tempfile.mkstemp(prefix=".ldpo-write-test-", dir=existing)
        os.close(handle)
        os.unlink(name)
    except OSError as err:
        raise InputError(f"{out}: cannot write in {existing} ({err.strerror or type(err).__name__}): give a "
                         "writable --out") from None


TOOL = FinetuneTool
main = FinetuneTool.console

if __name__ == "__main__":
    main()
