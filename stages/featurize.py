"""``featurize``: a CNN layer's activations for every image of a store.

Global layers (``fc7``, ``avgpool``, …) write ``features`` float32 ``[N,D]``; conv layers
(``conv5``, ``layer4``, ``inc5b``) write ``local`` float16 ``[N,S,C]`` for ``encode``;
``multiscale`` writes ``features`` float32: every stage of the network (ResNet's layer1–4,
AlexNet's and VGG's conv stages, GoogLeNet's conv3/inception3b/4e/5b, a timm model's
``forward_intermediates``) globally average-pooled, each L2-normalized, concatenated;
``probs`` writes the softmax ``features`` float32 ``[N,K]`` (one sigmoid per class, and the attributes
``target`` = multi and ``thresholds``, for a ``finetune --multi-label`` checkpoint) with the class list in the
attribute ``classes``. ``ids`` are the images store's, in its order.

``--shard i/n`` fills part of a store made by a first call with ``--create-only`` (same
options), so SLURM array jobs fill one store: shard i computes rows i·N/n … (i+1)·N/n,
with each boundary rounded down to a multiple of the array's chunk rows so that no two
shards write the same chunk (``--create-only`` makes chunks of about N/256 rows). Run
shards concurrently only on ``.zarr`` stores; HDF5 files take one writer at a time.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np


from ..common.cli import READER_WORKERS, CommonOptions, Tool, opt, positional
from ..common.errors import InputError
from ..common.images.input_options import InputOptions

log = logging.getLogger("ldpo")

#: attributes a shard checks against the store made by --create-only
MATCHING_ATTRS = ("arch", "layer", "init", "checkpoint", "input_size", "normalize", "input_filter", "source_rows")


@dataclass(kw_only=True)
class Options(CommonOptions, InputOptions):
    images: str = positional("images store (.h5/.zarr)", role="input")
    out: str = opt("output feature store (.h5/.zarr)", role="output")
    arch: Optional[str] = opt("architecture: alexnet, alexnet_bn, googlenet, vgg16_bn, resnet18, resnet50, or "
                              "timm:NAME, any timm model (default: the checkpoint's; resnet18 for --init random, "
                              "alexnet for --init weights:)", None)
    layer: Optional[str] = opt("layer: alexnet/alexnet_bn conv5|fc6|fc7, googlenet inc5b|pool5, vgg16_bn "
                               "conv5|fc7, resnet18/50 layer4|avgpool, timm:* pooled|last, any: probs or multiscale (every stage "
                               "pooled and L2-normalized, concatenated), or local = the last conv "
                               "layer (default: fc7, pool5, avgpool or pooled)",
                               None)
    init: str = opt("random | weights:PATH (state_dict, .safetensors, or a checkpoint wrapping one) | "
                    "checkpoint:PATH (finetune)", "random")
    workers: int = opt(READER_WORKERS, 0, min=0, max=1024)
    batch_size: int = opt("images per batch", 64, min=1)
    amp: bool = opt("speed over bit-reproducibility: bfloat16 autocast, and on CUDA channels-last and cuDNN "
                     "autotuning (features within bfloat16 rounding of the float32 ones; off by default)", False)
    shard: Optional[str] = opt("compute only shard i of n (i/n, 0-based) into a store made by --create-only", None)
    create_only: bool = opt("create the (zero-filled) output store for --shard runs and stop", False)


class FeaturizeTool(Tool):
    name = "featurize"
    description = "Extract a CNN layer's activations (or softmax probs) for every image of a store."
    example = ("featurize images.h5 --out feats.h5 --init random --input-size 64\n"
               "featurize images.h5 --out probs.h5 --init checkpoint:model.pt --layer probs\n"
               "featurize images.h5 --out feats.h5 --arch timm:vit_small_patch14_dinov2 --init weights:dinov2.pth "
               "--input-size 224\n"
               "featurize images.zarr --out f.zarr --init weights:alexnet-owt-7be5be79.pth --arch alexnet "
               "--layer conv5 --create-only\n"
               "featurize images.zarr --out f.zarr --init weights:alexnet-owt-7be5be79.pth --arch alexnet "
               "--layer conv5 --shard 0/8")
    Options = Options

    def main(self, opts: Options) -> int:
        shard = parse_shard(opts.shard)
        if shard is not None and not os.path.lexists(opts.out):  # before any model is loaded
            raise InputError(f"{opts.out}: no such store: --shard {opts.shard} fills a store made first by the "
                             f"same featurize command with --create-only instead of --shard")


        from ..common.nets import models
        from ..common.files.stores import open_store

        init, device = models.start(opts.init, opts.arch, opts.seed, opts.device)
        with open_store(opts.images, expect="images") as images:
            n, ids, side = len(images), images.ids, max(images.shape("images")[1:3])
        if n == 0:
            raise InputError(f"{opts.images}: no images")
        built = models.build(init, opts.arch, None, opts.seed, opts.input_size, opts.normalize,
                             input_filter=opts.input_filter, store_side=side)
        layer = models.resolve_layer(built.arch, opts.layer)
        extractor = models.Extractor(built.model, built.arch, layer, built.target).eval().to(device)
        shape = extractor.output_shape(built.input_size, device)
        name, dtype = ("local", "float16") if extractor.layer.kind == "local" else ("features", "float32")
        attrs = {"stage": "featurize", "arch": built.arch, "layer": layer, "init": str(init),
                 "checkpoint": built.checksum, "input_size": built.input_size, "normalize": built.normalize,
                 "input_filter": built.input_filter, "source": str(opts.images), "source_rows": n, "seed": opts.seed}
        if built.normalize != "zscore":
            attrs.update(mean=list(built.mean), std=list(built.std))
        if extractor.layer.kind == "probs":
            from ..common.nets.checkpoint import require_target

            require_target(built.target, str(init.path or init), "--layer probs")  # words: not class scores
            attrs["classes"] = built.classes
            if built.target == "multi":  # one sigmoid per class, and the thresholds that decide them
                attrs.update(target="multi", thresholds=built.thresholds)
        log.info("featurize: %s %s %s → %s %s, %d images at %d px (%s)", built.arch, layer, init, name,
                 "x".join(map(str, shape)), n, built.input_size, device)
        spec = {name: (shape, dtype)}
        if opts.create_only:
            return create_only(opts.out, n, spec, ids, attrs)
        if shard is not None:
            return self.fill_shard(opts, extractor, built, name, attrs, shard, n, ids, device)
        from ..common.files.stores import create_store

        with create_store(opts.out, n=n, arrays=spec, ids=ids, attrs=attrs) as store:
            extract(extractor, built, store, name, opts.images, 0, n, batch=opts.batch_size, workers=opts.workers,
                    device=device, amp=opts.amp, init=opts.init)
        return 0

    def fill_shard(self, opts, extractor, built, name, attrs, shard, n, ids, device) -> int:
        from ..common.files.stores import open_store

        with open_store(opts.out, "r+") as store:
            have = store.attrs
            wrong = [k for k in MATCHING_ATTRS if have.get(k) != attrs[k]]
            if wrong or name not in store or store.ids != ids:
                what = ", ".join(f"{k} {have.get(k)!r} ≠ {attrs[k]!r}" for k in wrong) or "its ids or array differ"
                raise InputError(f"{opts.out}: not made by --create-only with these options ({what})")
            lo, hi = shard_rows(shard, n, int(store.array(name).chunks[0]))
            log.info("shard %d/%d: rows %d..%d", shard[0], shard[1], lo, hi)
            extract(extractor, built, store, name, opts.images, lo, hi, batch=opts.batch_size, workers=opts.workers,
                    device=device, amp=opts.amp, init=opts.init)
        return 0


def create_only(out: str, n: int, spec: dict, ids: list[str], attrs: dict) -> int:
    """An empty store for --shard runs, in chunks of about N/256 rows (at most ~4 MiB) so shards balance."""
    from ..common.files.stores import create_store

    (shape, dtype), = spec.values()
    row_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    chunk_rows = max(1, min(n // 256, (4 << 20) // row_bytes))
    with create_store(out, n=n, arrays=spec, ids=ids, attrs=attrs, chunk_rows=chunk_rows):
        pass
    log.info("created %s for --shard runs", out)
    return 0


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text}: use i/n, e.g. 0/8") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text}: need 0 <= i < n")
    return i, n


def shard_rows(shard: tuple[int, int], n: int, chunk: int = 1) -> tuple[int, int]:
    """Rows ``[i·N/n, (i+1)·N/n)``, boundaries rounded down to multiples of ``chunk``."""
    i, parts = shard

    def bound(k: int) -> int:
        return n if k >= parts else (k * n // parts) // chunk * chunk

    return bound(i), bound(i + 1)


def extract(extractor, built, store, name: str, images: str, lo: int, hi: int, *, batch: int, workers: int = 0,
            device: str = "cpu", amp: bool = False, init: str = "") -> None:
    """Stream rows ``[lo, hi)`` of ``images`` through the extractor into ``store[name]``
    (common/images/inference.py), written as float32 (float16 for local features)."""
    import torch

    from ..common.images import imagedata
    from ..common.images.accel import tune
    from ..common.images.inference import infer, store_items

    fast = tune(extractor, device, amp)
    prep = imagedata.Preprocess(built.input_size, built.normalize, built.mean, built.std, channels_last=fast)
    start = time.perf_counter()
    items = store_items(images, batch, lo, hi)
    for rows, _, out in infer(extractor, images, items, prep, batch=batch, workers=workers, device=device, amp=amp,
                              desc="featurize"):
        first = int(rows[0])
        if not torch.isfinite(out).all():
            raise InputError(f"{init}: gives non-finite features for rows {first}..{first + len(out) - 1} of "
                             f"{images}; nothing written (a diverged checkpoint?)")
        store.write(name, first, out.float().cpu().numpy())
    seconds = time.perf_counter() - start
    log.info("featurize: %d images in %.1f s (%.1f img/s)", hi - lo, seconds, (hi - lo) / max(seconds, 1e-9))


TOOL = FeaturizeTool
main = FeaturizeTool.console

if __name__ == "__main__":
    main()
