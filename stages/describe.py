"""``describe``: the words of each image, from an image → words model (Shin et al., CVPR 2015, §5).

Each image of IMAGES goes through MODEL (a ``finetune --vectors`` checkpoint: target
``words``) at the checkpoint's input size and normalization; its 2·DIM sigmoid outputs are
two halves, each scaled back into word-vector space with the checkpoint's scaling. A term's
score is its best cosine to either half plus the checkpoint's term-prior weight x the log
of its share among the training images (:func:`ldpo.common.nlp.words.describe`; finetune
chose the weight on its validation split; ``--prior-weight 0``: the nearest terms alone,
Shin et al.'s decode). Only vocabulary terms can come out:
the candidates are the checkpoint's ``terms`` (the terms it was trained on) that are terms
of ``--vocabulary`` (default: ldpo's list), so no report text, and no identifier, can.
VECTORS must be the file the model was trained with (its SHA-256 is checked).

Writes OUT: ``id,rank,word,score``, ``--top`` rows per image (rank from 1, best first;
``word`` a term as a token of the vectors file, ``pleural_effusion``; ``score`` the cosine,
-1..1, plus the weighted log prior, which is negative).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..common.cli import READER_WORKERS, CommonOptions, Tool, opt, positional, resolve_device
from ..common.errors import InputError

log = logging.getLogger("ldpo")


@dataclass(kw_only=True)
class Options(CommonOptions):
    images: str = positional("images store (.h5/.zarr) of the images to describe", role="input")
    model: str = opt("finetune --vectors checkpoint (target words)", role="input")
    vectors: str = opt("the word vectors file the model was trained with (word-vectors --out)", role="input")
    out: str = opt("output CSV: id,rank,word,score; - for stdout", role="output")
    vocabulary: Optional[str] = opt("vocabulary the words must come from (default: ldpo's list of common "
                                    "radiology findings)", None, role="input")
    top: int = opt("words per image", 5, min=1, max=100)
    workers: int = opt(READER_WORKERS, 0, min=0, max=1024)
    batch_size: int = opt("images per batch", 64, min=1)
    prior_weight: Optional[float] = opt("weight of the terms' log prior (their share of the training images) added "
                                        "to the cosine (default: the checkpoint's, chosen by finetune on its "
                                        "validation split; 0 = the nearest terms alone)", None, min=0, max=100)


class DescribeTool(Tool):
    name = "describe"
    description = ("Give each image its top words with scores from an image → words model (finetune --vectors): "
                   "each predicted half's nearest vocabulary terms by cosine, merged.")
    example = ("describe keys/images.h5 --model words.pt --vectors vectors.txt --out words.csv\n"
               "describe keys/images.h5 --model words.pt --vectors vectors.txt --vocabulary doid.txt --top 10 "
               "--out -")
    Options = Options

    def main(self, opts: Options) -> int:
        import torch

        from ..common.nets import models
        from ..common.nlp import words
        from ..common.images.imagedata import Preprocess
        from ..common.nlp.mentions import load_vocabulary
        from ..common.files.stores import open_store
        from ..common.files.tables import write_csv

        ckpt = models.load_checkpoint(opts.model)
        if ckpt.target != "words" or ckpt.words is None:
            raise InputError(f"{opts.model}: not an image → words checkpoint (target {ckpt.target!r};"
                             " train one with finetune --vectors)")
        meta = ckpt.words
        vectors = words.read_vectors(opts.vectors)
        if vectors.checksum != meta["vectors_checksum"]:
            raise InputError(f"{opts.vectors}: not the vectors {opts.model} was trained with (SHA-256 "
                             f"{vectors.checksum[:12]}…, the checkpoint's {meta['vectors_checksum'][:12]}…)")
        vocab = load_vocabulary(opts.vocabulary)
        allowed = {words.term_token(t) for t in vocab.terms}
        terms = [t for t in meta["terms"] if t in allowed and t in set(vectors.words)]
        if not terms:
            raise InputError(f"{opts.vocabulary or 'the default vocabulary'}: none of the {len(meta['terms'])} terms "
                             f"{opts.model} was trained on is one of its terms")
        prior = dict(zip(meta["terms"], meta.get("prior") or []))  # older checkpoints: none
        weight = meta.get("prior_weight", 0.0) if opts.prior_weight is None else opts.prior_weight
        if weight and not prior:
            raise InputError(f"{opts.model}: records no term prior (trained before finetune chose one): "
                             "give --prior-weight 0")
        with open_store(opts.images, expect="images") as store:
            ids, side = store.ids, max(store.shape("images")[1:3])
        if not ids:
            raise InputError(f"{opts.images}: no images")
        device = resolve_device(opts.device)
        torch.manual_seed(opts.seed)
        built = models.build(models.parse_init(f"checkpoint:{opts.model}"), store_side=side)
        model = built.model.to(device)
        prep = Preprocess(built.input_size, built.normalize, built.mean, built.std)
        log.info("describe: %d images, %s at %d px, %d candidate terms", len(ids), built.arch, built.input_size,
                 len(terms))
        outputs = words.predict(model, opts.images, np.arange(len(ids)), prep, opts.batch_size, opts.workers, device,
                                bar=not opts.no_progress)
        found = words.describe(outputs, vectors, words.Scaling.from_state(meta["scaling"]), terms, opts.top,
                               prior, weight)
        write_csv(opts.out, ["id", "rank", "word", "score"],
                  ((ident, rank, word, round(score, 4)) for ident, best in zip(ids, found)
                   for rank, (word, score) in enumerate(best, 1)))
        log.info("wrote %s: %d images x %d words", opts.out, len(ids), opts.top)
        return 0


TOOL = DescribeTool
main = DescribeTool.console

if __name__ == "__main__":
    main()
