"""``encode``: a conv layer's local descriptors (or image patches, ``patches``) → one vector per image, then PCA.

Reads a local feature store (``local`` float16/32 ``[N,S,C]`` + ``ids``, from
``featurize --layer conv5|inc5b|layer4``) and writes a features store (``features``
float32 ``[N,D']`` + the same ids in the same order).

Methods (``--method``):

* ``fv``: improved Fisher Vector of a diagonal GMM with K components: gradients with
  respect to the means and the variances, 2·K·C dims laid out per component
  (component k at columns ``[2kC, 2(k+1)C)``: C mean-gradients, then C
  variance-gradients); signed square root; L2.
* ``vlad``: K-word k-means codebook (faiss); residual sums per word (word k at columns
  ``[kC, (k+1)C)``); intra-normalization (L2 per word), signed square root; L2.
* ``avg`` / ``max``: plain pooling over the S positions, C dims (the baseline; no
  normalization).

* ``patches`` (LDPO-PM; reads an **images** store and ``--model``, the CNN as featurize's
  ``--init``): 90 patches per image at 3 scales (4×4 patches of 1/2 the side, 5×5 of 0.35,
  7×7 of 1/4, edge to edge, overlapping; ``--patch-grid``), cut and resized to ``--patch-size`` (default half the model's
  input) by one batched ``roi_align`` on the device, each featurized by ``--layer`` (default
  ``multiscale``) and L2-normalized (held as float16). Patch clusters: spherical faiss k-means
  (``--components``, default 128) on at most 100k patches of the fit sample. Elements: with
  ``--labels`` (the current categories), per category the ``--per-category`` (default 8)
  clusters of highest *support × confidence* (support = the share of the category's images
  with a patch in the cluster, confidence = the share of the images with a patch in it that
  are the category's: Li et al. CVPR 2015's mid-level pattern mining, a cluster standing for
  a pattern); without labels (``--unlabeled``) the half of the clusters whose code (below)
  varies most across images (``spread``, the default: measured better than ``global``, the
  whole image's features, see docs/scenes.md). An image's encoding (``--coding``): per element,
  the maximum over its patches of ``soft``, the patch's softmax over *every* patch cluster of
  cosine / ``--temperature`` (soft-assignment coding with max pooling, Liu et al. ICCV 2011),
  ``cosine``, the cosine itself (the firing strength of Li et al.), or ``both`` side by side,
  each half divided by its spread on the fit sample; ``auto`` (the default): both for a network
  with trained weights, cosine from random init (spread then reads the cosine half). The fit
  sample's patch features are held in memory (float16, fit images × 90 × D: 5000 × 90 × 960 ×
  2 B = 864 MB at most); the other images stream.

Then PCA to ``--dim`` (default 4096), fitted on the encodings of the fit sample and
applied batch by batch. ``--dim`` policy: when left at its default it is capped, with a
warning, by the encoding's dimension and by the number of fit-sample images; an
explicit ``--dim`` above that is an input error (exit 2).

``--fit-sample N`` images (seeded) fit the GMM/codebook (on their descriptors,
subsampled to at most ``descriptor_cap(C)`` descriptors) and the PCA. The rest is
streamed: a batch of images → encodings → PCA → rows of the output store, so the
[N, 2·K·C] matrix never exists and peak memory is flat in N.

The fitted encoder (method, C, K, descriptor center, GMM or codebook, PCA) is saved
by ``--model-out`` as a plain ``.npz`` (``np.load(path, allow_pickle=False)``) and
applied by ``--model-in``, which reproduces the features exactly.

The package: this front module holds the options and the command; ``descriptors.py`` the
Fisher Vector, VLAD and pooling encodings, the :class:`Encoder` and its fitting;
``patches.py`` the patch elements of ``--method patches`` and their :class:`PatchEncoder`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ...common.cli import CommonOptions, Tool, opt, positional, progress, resolve_device
from ...common.errors import InputError
from ...common.images.input_options import InputOptions
from ...common.images.imagedata import patch_grid
from ...common.files.stores import create_store, file_checksum, open_store

from .descriptors import MODEL_FORMAT, Encoder, encoded_dim, finite, fit_encoder, sample_rows
from .patches import MAX_PATCHES, PATCH_COMPONENTS, PATCH_GRIDS, PatchEncoder, PatchFeatures, fit_patch_encoder

log = logging.getLogger("ldpo")

METHODS = ("fv", "vlad", "avg", "max", "patches")
UNLABELED = ("spread", "global")
CODINGS = ("auto", "both", "soft", "cosine")
DEFAULT_DIM = 4096




# -- the command ------------------------------------------------------------------------------

@dataclass(kw_only=True)
class Options(CommonOptions, InputOptions):
    local: str = positional("local-descriptor store (.h5/.zarr) with `local` [N,S,C] from featurize --layer "
                            "conv5|inc5b|layer4; with --method patches an images store", role="input")
    out: str = opt("output feature store (.h5/.zarr): `features` float32 [N,D]", role="output")
    method: str = opt("encoding: fv (Fisher Vector), vlad, avg or max pooling of local descriptors, or patches "
                      "(mid-level elements mined from image patches; needs --model) "
                      "(required unless --model-in, which then sets it)", "", choices=list(METHODS))
    components: Optional[int] = opt("GMM components (fv), codebook words (vlad) or patch clusters (patches) "
                                    f"(default 64; patches {PATCH_COMPONENTS})", None, min=1, max=65536)
    dim: Optional[int] = opt(f"PCA output dimensions (default {DEFAULT_DIM}, then capped with a warning by the "
                             "encoding's dimension and --fit-sample; an explicit larger value is an error)", None,
                             min=1)
    no_pca: bool = opt("keep the full encoding, no PCA", False)
    fit_sample: int = opt("images sampled (seeded) to fit the GMM/codebook/patch clusters and the PCA", 5000, min=1)
    model_out: str = opt("save the fitted encoder here (.npz)", "", role="output")
    model_in: str = opt("apply this saved encoder (.npz) instead of fitting one", "", role="input")
    batch_size: int = opt("images encoded per batch", 128, min=1)
    # patches
    model: str = opt("patches: the CNN that featurizes the patches, as featurize's --init: random | weights:PATH "
                     "| checkpoint:PATH", "")
    labels: str = opt("patches: the current categories (id,label CSV of every image), which choose the elements; "
                      "without it --unlabeled decides", "", role="input")
    arch: Optional[str] = opt("patches: architecture (as featurize; default: the checkpoint's, resnet18 from random)",
                              None)
    layer: Optional[str] = opt("patches: a global layer of the model per patch (default multiscale: every stage "
                               "pooled and L2-normalized, concatenated)", None)
    patch_size: Optional[int] = opt("patches: side each patch is resized to for the CNN (default: half the model's "
                                    "input size, at least the architecture's minimum)", None, min=8, max=1024)
    patch_grid: str = opt("patches: SIDE:N,... an N x N grid of patches of SIDE (a fraction of the image side) "
                          "per scale (default 0.5:4,0.35:5,0.25:7, 90 patches; at most 256 in all)", "")
    per_category: int = opt("patches with --labels: elements kept per category", 8, min=1)
    unlabeled: str = opt("patches without --labels: spread (keep the half of the patch clusters that varies most "
                         "across images) or global (the whole image's features)", "spread", choices=list(UNLABELED))
    coding: str = opt("patches: how an element fires in an image, max over its patches of: cosine (the cosine "
                      "itself), soft (the softmax over every patch cluster of cosine / --temperature), both (the two "
                      "side by side), or auto (both when --model's weights were trained, from a weights file or a "
                      "checkpoint that started from one; cosine from random init)", "auto", choices=list(CODINGS))
    temperature: float = opt("patches, --coding soft or both: the softmax temperature", 0.05, above=0)


class EncodeTool(Tool):
    name = "encode"
    description = ("Encode a conv layer's local descriptors (Fisher Vector, VLAD, avg/max pooling), "
                   "reduce with PCA, and write a global feature store; streamed, memory flat in N.")
    example = ("encode conv5.h5 --out fv.h5 --method fv --components 64 --dim 4096 --model-out fv.npz\n"
               "encode new_conv5.h5 --out new_fv.h5 --model-in fv.npz\n"
               "encode images.h5 --out pm.h5 --method patches --model checkpoint:iter-01/model.pt "
               "--labels iter-00/labels.csv")
    Options = Options

    def main(self, opts: Options) -> int:
        check_options(opts)
        if opts.method == "patches" or (not opts.method and saved_method(opts.model_in) == "patches"):
            return encode_patches(opts)
        device = resolve_device(opts.device)
        with open_store(opts.local, expect="local") as src:
            n, s, c = src.shape("local")
            if n == 0:
                raise InputError(f"{opts.local}: the store has no rows")
            started = time.perf_counter()
            if opts.model_in:
                enc = load_for(opts, c)
            else:
                rows = sample_rows(n, opts.fit_sample, opts.seed)
                k = opts.components or 64
                pca_dim = choose_dim(opts, encoded_dim(opts.method, k, c), len(rows))
                enc = fit_encoder(src, opts.method, k, rows, pca_dim, opts.batch_size,
                                  opts.seed, device)
                log.info("fitted %s encoder in %.1f s", enc.method, time.perf_counter() - started)
            started = time.perf_counter()
            checksum = file_checksum(opts.local, 16)
            log.info("source checksum in %.1f s", time.perf_counter() - started)
            started = time.perf_counter()
            write_features(src, enc, opts, device, checksum)
            log.info("encoded %d images in %.1f s (%s, %d -> %d dims)", n, time.perf_counter() - started,
                     enc.method, enc.encoded_dim, enc.dim)
        if opts.model_out:
            enc.save(opts.model_out)
        return 0


def check_options(opts: Options) -> None:
    if not opts.model_in and not opts.method:
        raise InputError("--method is required (fv, vlad, avg, max or patches) unless --model-in is given")
    if opts.dim is not None and opts.no_pca:
        raise InputError("--dim and --no-pca exclude each other")
    patches = opts.method == "patches" or (not opts.method and saved_method(opts.model_in) == "patches")
    if patches and not opts.model:
        raise InputError("--method patches needs --model (the CNN: random, weights:PATH or checkpoint:PATH)")
    given = [flag for flag, value in (("--model", opts.model), ("--labels", opts.labels), ("--arch", opts.arch),
                                      ("--layer", opts.layer), ("--patch-size", opts.patch_size),
                                      ("--patch-grid", opts.patch_grid),
                                      ("--input-size", opts.input_size), ("--normalize", opts.normalize),
                                      ("--input-filter", opts.input_filter), ("--coding", opts.coding != "auto"),
                                      ("--temperature", opts.temperature != 0.05)) if value]
    if given and not patches:
        raise InputError(f"{', '.join(given)}: only for --method patches")
    if opts.patch_grid:
        parse_grids(opts.patch_grid)  # before any model is loaded


def saved_method(path: str) -> str:
    """The method of a saved encoder (``""`` when there is none or it cannot be read: loading says why)."""
    if not path or not Path(path).is_file():
        return ""
    try:
        with np.load(path, allow_pickle=False) as z:
            return str(z["method"]) if "method" in z.files else ""
    except (OSError, ValueError):
        return ""


def choose_dim(opts: Options, full: int, fit_rows: int) -> int | None:
    """The PCA dimension (``None`` = no PCA), by the policy in the module docstring."""
    if opts.no_pca:
        return None
    possible = min(full, fit_rows)
    if opts.dim is None:
        if possible < DEFAULT_DIM:
            log.warning("PCA: %d dimensions (the default %d is more than the %d-dim %s encoding or the "
                        "%d fit-sample images allow)", possible, DEFAULT_DIM, full, opts.method, fit_rows)
        return min(DEFAULT_DIM, possible)
    if opts.dim > possible:
        raise InputError(f"--dim {opts.dim} is larger than possible: the {opts.method} encoding has {full} "
                         f"dimensions and the fit sample {fit_rows} images, so at most {possible}")
    return opts.dim


def load_for(opts: Options, channels: int) -> Encoder:
    """Load ``--model-in`` and check it fits these descriptors and the flags."""
    enc = Encoder.load(opts.model_in)
    if enc.channels != channels:
        raise InputError(f"{opts.local}: descriptors have {channels} channels but the encoder "
                         f"{opts.model_in} was fitted on {enc.channels}")
    if opts.method and opts.method != enc.method:
        raise InputError(f"--method {opts.method} contradicts the encoder {opts.model_in} ({enc.method})")
    if (opts.no_pca and enc.pca is not None) or (opts.dim is not None and opts.dim != enc.dim):
        raise InputError(f"{opts.model_in}: the encoder gives {enc.dim} dims "
                         f"({'with' if enc.pca is not None else 'without'} PCA); drop --dim/--no-pca")
    log.info("encoder %s: %s, C=%d, K=%d, %d dims", opts.model_in, enc.method, enc.channels, enc.components, enc.dim)
    return enc


def write_features(src, enc: Encoder, opts: Options, device: str, source_checksum: str) -> None:
    """Stream the local array batch by batch through the encoder into the output store."""
    n, s, c = src.shape("local")
    attrs = {"stage": "encode", "method": enc.method, "encoding": enc.method, "components": enc.components,
             "dim": enc.dim, "encoded_dim": enc.encoded_dim, "pca": enc.pca is not None,
             "channels": c, "positions": s, "layer": src.attrs.get("layer", ""),
             "source": str(opts.local), "source_checksum": source_checksum,
             "model": opts.model_in or opts.model_out, "model_checksum": enc.checksum(), "seed": opts.seed}
    with create_store(opts.out, n=n, arrays={"features": ((enc.dim,), "float32")}, ids=src.ids,
                      attrs=attrs) as out:
        total = math.ceil(n / opts.batch_size)
        for lo, hi, block in progress(src.batches("local", opts.batch_size), desc="encode", total=total):
            out.write("features", lo, enc.encode(finite(block, src.path, np.arange(lo, hi)), device))


# -- the command: patches -----------------------------------------------------------------------

def encode_patches(opts: Options) -> int:
    """``--method patches``: featurize patches with --model, fit (or load) the elements, stream the images."""

    from ...common.nets import models
    from ...common.files.labels import align, read_labels

    init, device = models.start(opts.model, opts.arch, opts.seed, opts.device)
    with open_store(opts.local, expect="images") as images:
        n, ids, side = len(images), images.ids, max(images.shape("images")[1:3])
        if n == 0:
            raise InputError(f"{opts.local}: no images")
        labels = align(read_labels(opts.labels), ids, opts.local) if opts.labels else None
        built = models.build(init, opts.arch, None, opts.seed, opts.input_size, opts.normalize,
                             input_filter=opts.input_filter, store_side=side)
        saved = load_patch_encoder(opts, built) if opts.model_in else None
        layer = saved.layer if saved else (opts.layer or "multiscale")
        extractor = models.Extractor(built.model, built.arch, layer, built.target).eval().to(device)
        if extractor.layer.kind not in ("global", "multiscale"):
            raise InputError(f"--layer {layer}: patches need one vector per patch (a global layer or multiscale), "
                             f"not a {extractor.layer.kind} layer")
        size = saved.patch_size if saved else (opts.patch_size or max(models.min_input(built.arch), built.input_size // 2))
        models.check_input_size(built.arch, size, "--patch-size")
        grids = parse_grids(opts.patch_grid) if opts.patch_grid else PATCH_GRIDS
        boxes = saved.boxes if saved else patch_grid(grids)
        feats = PatchFeatures(extractor, built, boxes, size, device)
        started = time.perf_counter()
        if saved:
            enc, rows, encoded = saved, np.zeros(0, np.int64), np.zeros((0, saved.width), np.float32)
        else:
            mode = "mined" if labels is not None else opts.unlabeled
            coding = resolve_coding(opts.coding, built.origin)
            enc = PatchEncoder(mode=mode, boxes=boxes, patch_size=size, layer=layer,
                               model_checksum=built.checksum or f"random:{built.arch}:{opts.seed}",
                               coding=coding, temperature=opts.temperature if coding != "cosine" else 0.0)
            rows = sample_rows(n, opts.fit_sample, opts.seed)
            if len(rows) < 2:
                raise InputError(f"{opts.local}: {n} image: patches are encoded against other images (their "
                                 "clusters and PCA need at least 2); nothing written")
            log.info("patches: %s %s, %d patches per image (%s) at %d px, %d fit images, elements: %s, coding: %s",
                     built.arch, layer, len(boxes), ", ".join(f"{g}x{g} of {s:g}" for s, g in grids), size,
                     len(rows), mode, coding + (f" (temperature {opts.temperature:g})" if coding != "cosine" else ""))
            enc, encoded = fit_patch_encoder(images, feats, rows, labels, opts,
                                             lambda full, fit: choose_dim(opts, full, fit), enc)
            log.info("fitted the patch encoder in %.1f s", time.perf_counter() - started)
        started = time.perf_counter()
        write_patch_features(images, feats, enc, opts, rows, encoded, file_checksum(opts.local, 16))
        seconds = time.perf_counter() - started
        log.info("encoded %d images in %.1f s (%.1f ms per image, %d patches each; %d -> %d dims)", n, seconds,
                 1000 * seconds / n, len(boxes), enc.encoded_dim, enc.dim)
    if opts.model_out:
        enc.save(opts.model_out)
    return 0


def resolve_coding(coding: str, origin: str) -> str:
    """``auto``: ``both`` for a network whose weights were trained (``origin`` weights: a weights file, or a
    checkpoint that started from one), ``cosine`` from random init. A random network's patch features
    all lie close together, so which cluster is a patch's nearest says little and the soft half only
    adds noise; with trained weights the soft half finds the parts (docs/scenes.md: ``both`` won on the
    toy scenes and tied on the archive phantoms and the PACS key images; from random init it lost)."""
    if coding != "auto":
        return coding
    return "both" if origin == "weights" else "cosine"


def parse_grids(text: str) -> tuple[tuple[float, int], ...]:
    """``--patch-grid 0.5:3,0.35:4,0.25:5`` -> ((0.5, 3), (0.35, 4), (0.25, 5))."""
    try:
        grids = tuple((float(a), int(b)) for a, b in (part.split(":") for part in text.split(",")))
    except ValueError as err:
        raise InputError(f"--patch-grid {text}: expected SIDE:N,... such as 0.5:3,0.35:4,0.25:5") from err
    if not all(0 < side <= 1 and n >= 1 for side, n in grids):
        raise InputError(f"--patch-grid {text}: each side in (0, 1], each N at least 1")
    patches = sum(n * n for _, n in grids)
    if patches > MAX_PATCHES:
        raise InputError(f"--patch-grid {text}: {patches:,} patches per image, more than the {MAX_PATCHES} allowed "
                         "(each scale gives N x N)")
    return grids


def load_patch_encoder(opts: Options, built) -> PatchEncoder:
    """``--model-in`` for patches: saved by --model-out with this --model (the same weights)."""
    if not Path(opts.model_in).is_file():
        raise InputError(f"{opts.model_in}: no such encoder model")
    try:
        with np.load(opts.model_in, allow_pickle=False) as z:
            a = {name: z[name] for name in z.files}
        enc = PatchEncoder.from_arrays(a)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{opts.model_in}: not a patches encoder written by encode --model-out ({err})".splitlines()[0]) from err
    if str(a.get("format")) != MODEL_FORMAT:
        raise InputError(f"{opts.model_in}: not an encoder model written by encode --model-out")
    if built.checksum and enc.model_checksum != built.checksum:
        raise InputError(f"{opts.model_in}: fitted with another model than --model {opts.model}")
    if opts.labels:
        raise InputError("--labels: the elements of --model-in are chosen already; drop --labels")
    if (opts.no_pca and enc.pca is not None) or (opts.dim is not None and opts.dim != enc.dim):
        raise InputError(f"{opts.model_in}: the encoder gives {enc.dim} dims; drop --dim/--no-pca")
    return enc


def write_patch_features(images, feats: PatchFeatures, enc: PatchEncoder, opts: Options, fit_rows: np.ndarray,
                         fit_encoded: np.ndarray, source_checksum: str) -> None:
    """Stream the images batch by batch: encodings (the fit images' are reused), PCA, rows of the output."""
    n = len(images)
    attrs = {"stage": "encode", "method": "patches", "encoding": f"patches-{enc.mode}", "coding": enc.coding,
             "temperature": enc.temperature, "components": 0,
             "dim": enc.dim, "encoded_dim": enc.encoded_dim, "pca": enc.pca is not None,
             "patches": len(enc.boxes), "patch_size": enc.patch_size, "layer": enc.layer, "model": opts.model,
             "labels": opts.labels, "source": str(opts.local), "source_checksum": source_checksum,
             "encoder": opts.model_in or opts.model_out, "model_checksum": enc.checksum(), "seed": opts.seed}
    position = np.full(n, -1, np.int64)
    position[fit_rows] = np.arange(len(fit_rows))
    with create_store(opts.out, n=n, arrays={"features": ((enc.dim,), "float32")}, ids=images.ids,
                      attrs=attrs) as out:
        for lo in progress(range(0, n, opts.batch_size), desc="encode", total=math.ceil(n / opts.batch_size)):
            hi = min(n, lo + opts.batch_size)
            y = np.empty((hi - lo, enc.encoded_dim), np.float32)
            have = position[lo:hi] >= 0
            y[have] = fit_encoded[position[lo:hi][have]]
            if not have.all():
                y[~have] = feats.encode(enc, images.take("images", np.arange(lo, hi)[~have]))
            out.write("features", lo, enc.reduce(y))


TOOL = EncodeTool
main = EncodeTool.console
