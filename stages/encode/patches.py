"""``encode --method patches`` (LDPO-PM): mid-level elements mined from CNN features of image
patches: the patch grid, the patch features, the element codes, mining the elements per
category (or by spread without labels) and the :class:`PatchEncoder` that ``--model-out``
saves (see the package's docstring for the recipe)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ...common.cli import progress, resolve_device
from ...common.errors import InputError
from ...common.numerics.features import PCA, kmeans

from .descriptors import MODEL_FORMAT, Encoder

log = logging.getLogger("ldpo")


# -- patches: mid-level elements mined from CNN features of image patches ---------------------

#: the patch grid: (side as a fraction of the image side, patches per row); 16 + 25 + 49 = 90 patches
#: (beat 9 + 16 + 25 = 50 on every seed of the toy scenes, docs/scenes.md)
PATCH_GRIDS = ((0.5, 4), (0.35, 5), (0.25, 7))
#: patches per image at most (--patch-grid): the sum of N x N over its scales (the default gives 90); the fit
#: sample's patch features take --fit-sample x patches x D x 2 bytes (5000 x 256 x 960 x 2 B = 2.5 GB at this bound)
MAX_PATCHES = 256
PATCH_COMPONENTS = 128
#: patch features held per fit image while fitting: float16 [fit images, P, D] (5000 x 90 x 960 x 2 B = 864 MB)
KMEANS_PATCH_CAP = 100_000


@dataclass
class PatchEncoder:
    """What ``--model-out`` saves for ``patches``: the patch geometry, the model's identity, the
    kept elements (unit-norm patch-cluster centroids) and the PCA; ``mode`` = mined (chosen by
    labels), spread (no labels) or global (no labels: the whole image's features)."""

    mode: str
    boxes: np.ndarray                      # [P,4] fractions of the side
    patch_size: int
    layer: str
    model_checksum: str
    width: int = 0                         # the encoding's dimension before PCA
    elements: np.ndarray | None = None     # [M,D] float32, unit rows (mined, spread)
    element_category: np.ndarray | None = None  # [M] the category that chose each element (mined), else -1
    pca: PCA | None = None
    coding: str = "cosine"                 # cosine | soft | both (an encoder from before codings: cosine)
    temperature: float = 0.0               # soft, both: the softmax temperature over the codebook's cosines
    codebook: np.ndarray | None = None     # [K,D] every patch cluster, unit rows (none before codings)
    element_index: np.ndarray | None = None  # [M] the elements' rows of the codebook
    scales: np.ndarray | None = None       # both: [2] each half's spread on the fit sample, divided out

    method = "patches"
    components = 0

    @property
    def encoded_dim(self) -> int:
        return self.width

    @property
    def dim(self) -> int:
        return self.pca.dim if self.pca is not None else self.encoded_dim

    def reduce(self, y: np.ndarray) -> np.ndarray:
        return y if self.pca is None else self.pca.transform(y)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"format": np.array(MODEL_FORMAT), "method": np.array("patches"), "mode": np.array(self.mode),
               "boxes": self.boxes, "patch_size": np.array(self.patch_size, np.int64),
               "layer": np.array(self.layer), "model_checksum": np.array(self.model_checksum),
               "width": np.array(self.width, np.int64)}
        if self.elements is not None:
            out["elements"] = self.elements
            out["element_category"] = self.element_category
        out["coding"] = np.array(self.coding)
        if self.codebook is not None:
            out.update(temperature=np.array(self.temperature, np.float64), codebook=self.codebook,
                       element_index=self.element_index)
        if self.scales is not None:
            out["scales"] = self.scales
        if self.pca is not None:
            state = self.pca.state()
            out.update(pca_dim=np.array(state["dim"], np.int64), pca_whiten=np.array(state["whiten"]),
                       pca_mean=state["mean"], pca_components=state["components"], pca_scale=state["scale"])
        return out

    checksum = Encoder.checksum
    save = Encoder.save

    @classmethod
    def from_arrays(cls, a: dict) -> "PatchEncoder":
        pca = None
        if "pca_dim" in a:
            pca = PCA.from_state({"dim": a["pca_dim"], "whiten": a["pca_whiten"], "mean": a["pca_mean"],
                                  "components": a["pca_components"], "scale": a["pca_scale"]})
        return cls(mode=str(a["mode"]), boxes=a["boxes"], patch_size=int(a["patch_size"]), layer=str(a["layer"]),
                   model_checksum=str(a["model_checksum"]), width=int(a["width"]), elements=a.get("elements"),
                   element_category=a.get("element_category"), pca=pca, coding=str(a.get("coding", "cosine")),
                   temperature=float(a.get("temperature", 0.0)), codebook=a.get("codebook"),
                   element_index=a.get("element_index"), scales=a.get("scales"))


class PatchFeatures:
    """The model cut at ``layer``: L2-normalized features of every patch of a uint8 image block
    (``[B,P,D]``), or of the whole images (``[B,D]``), computed on the device in chunks."""

    def __init__(self, extractor, built, boxes: np.ndarray, patch_size: int, device: str, chunk: int = 1024):
        self.extractor, self.built, self.boxes = extractor, built, boxes
        self.patch_size, self.device, self.chunk = patch_size, device, chunk

    def _run(self, x):
        import torch

        outs = [self.extractor(x[lo:lo + self.chunk]).float() for lo in range(0, len(x), self.chunk)]
        out = torch.cat(outs)
        if not bool(torch.isfinite(out).all()):
            init = self.built.init
            raise InputError(f"{init.path or init}: gives non-finite features (NaN or inf) for these images: the "
                             "model diverged or is damaged; nothing written")
        return torch.nn.functional.normalize(out, dim=1)

    def patches(self, block: np.ndarray):
        import torch

        from ...common.images.imagedata import crop_patches

        step = max(1, self.chunk // max(1, len(self.boxes)))  # images whose crops make about one chunk
        parts = []
        with torch.inference_mode():
            for lo in range(0, len(block), step):
                x = crop_patches(torch.from_numpy(np.ascontiguousarray(block[lo:lo + step])).to(self.device),
                                 self.boxes, self.patch_size, self.built.normalize, self.built.mean, self.built.std)
                parts.append(self._run(x).reshape(len(x) // len(self.boxes), len(self.boxes), -1))
            return torch.cat(parts)

    def whole(self, block: np.ndarray):
        import torch

        from ...common.images.imagedata import Preprocess

        prep = Preprocess(self.built.input_size, self.built.normalize, self.built.mean, self.built.std)
        with torch.inference_mode():
            return self._run(prep(torch.from_numpy(np.ascontiguousarray(block)).to(self.device)))

    def encode(self, enc: PatchEncoder, block: np.ndarray) -> np.ndarray:
        """Rows before PCA: per element, the max over the image's patches of its code (:func:`patch_codes`), or
        the whole image's features."""
        import torch

        if enc.mode == "global":
            return self.whole(block).cpu().numpy()
        feats = self.patches(block).half().float()  # the precision the fit sample is held in: the same rows
        if enc.codebook is None:  # an encoder from before codings: the cosine to the elements
            elements = torch.from_numpy(np.asarray(enc.elements, np.float32)).to(feats.device)
            return patch_codes(feats, elements, 0.0)[0].cpu().numpy()
        codebook = torch.from_numpy(np.asarray(enc.codebook, np.float32)).to(feats.device)
        cosine, soft, _ = patch_codes(feats, codebook, enc.temperature)
        return element_codes(cosine.cpu().numpy(), None if soft is None else soft.cpu().numpy(), enc.element_index,
                             enc.coding, enc.scales)


def patch_codes(feats, centroids, temperature: float):
    """``(cosine [B,K], soft [B,K] or None, nearest [B,P])`` of unit patch features ``[B,P,D]`` against unit
    ``centroids [K,D]`` (torch tensors). ``cosine``: per centroid the max over an image's patches of the
    cosine (Li et al. 2015's firing strength). ``soft`` (when ``temperature`` > 0): the max over the
    patches of the softmax over *every* centroid of cosine / temperature, the soft-assignment coding with
    max pooling of Liu et al. (ICCV 2011, "In defense of soft-assignment coding"): a centroid fires only
    where a patch is nearer to it than to the others, so the general similarity every patch has to every
    centroid drops out. ``nearest``: each patch's centroid."""
    import torch

    sim = feats @ centroids.T
    soft = torch.softmax(sim / temperature, dim=2).amax(1) if temperature > 0 else None
    return sim.amax(1), soft, sim.argmax(2)


def element_codes(cosine: np.ndarray, soft: np.ndarray | None, index: np.ndarray, coding: str,
                  scales: np.ndarray | None) -> np.ndarray:
    """An image's encoding from its codes over the codebook: the elements' columns of ``cosine`` or ``soft``,
    or (``both``) the two side by side, each divided by its spread on the fit sample (``scales``) so that
    neither half outweighs the other in the PCA."""
    if coding == "cosine":
        return cosine[:, index]
    if coding == "soft":
        return soft[:, index]
    return np.hstack([cosine[:, index] / scales[0], soft[:, index] / scales[1]]).astype(np.float32)


def block_spread(x: np.ndarray) -> float:
    """The root mean squared distance of the rows from their mean (1 when there is none)."""
    spread = float(np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean()))
    return spread if spread > 0 else 1.0


def mine_elements(assign: np.ndarray, labels: np.ndarray, k: int, per_category: int) -> tuple[np.ndarray, np.ndarray]:
    """Per category y, the ``per_category`` patch clusters c of highest support × confidence:
    support = the share of y's images with a patch in c, confidence = the share of the images with
    a patch in c that are y's (Li et al. 2015's pattern mining, one cluster = one pattern). Ties
    go to the lower cluster number; a cluster chosen by two categories is kept once (for the
    first). ``assign`` [F,P] = each patch's cluster. Returns (clusters, their category)."""
    present = np.zeros((len(assign), k), bool)
    present[np.arange(len(assign))[:, None], assign] = True
    classes = np.unique(labels)
    onehot = (labels[:, None] == classes[None, :]).astype(np.float64)   # [F,Y]
    both = onehot.T @ present                                           # [Y,K] images of y with c
    support = both / onehot.sum(0)[:, None]
    confidence = both / np.maximum(present.sum(0), 1)[None, :]
    score = support * confidence
    chosen, category = [], []
    for y, row in enumerate(score):
        order = np.lexsort((np.arange(k), -row))
        for c in order[:per_category]:
            if row[c] > 0 and c not in chosen:
                chosen.append(int(c))
                category.append(int(classes[y]))
    return np.asarray(chosen, np.int64), np.asarray(category, np.int64)


def spread_elements(codes: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` clusters whose code (max over an image's patches) varies most across images
    (standard deviation; present in some images, absent in others), in cluster order."""
    spread = codes.std(0)
    order = np.lexsort((np.arange(len(spread)), -spread))
    return np.sort(order[:keep])


def fit_patch_encoder(images, feats: PatchFeatures, rows: np.ndarray, labels: np.ndarray | None, opts,
                      pca_dim_for, enc: PatchEncoder) -> tuple[PatchEncoder, np.ndarray]:
    """Fit on the fit-sample images: patch clusters (spherical faiss k-means on a sample of their
    patches), elements (mined with labels, else spread or global), PCA. Returns the encoder and
    the fit images' encodings before PCA (reused when writing)."""
    import torch

    batch = opts.batch_size
    if enc.mode == "global":
        parts = [feats.whole(images.take("images", rows[lo:lo + batch])).cpu().numpy()
                 for lo in progress(range(0, len(rows), batch), desc="fit sample (global)")]
        encoded = np.concatenate(parts)
    else:
        held = None
        for lo in progress(range(0, len(rows), batch), desc="fit sample (patches)"):
            f = feats.patches(images.take("images", rows[lo:lo + batch])).cpu().numpy()
            if held is None:
                held = np.empty((len(rows),) + f.shape[1:], np.float16)
            held[lo:lo + len(f)] = f
        f, p, d = held.shape
        k = opts.components or PATCH_COMPONENTS
        if k > f * p:
            raise InputError(f"--components {k}: more than the {f * p} patches of the {f} fit image(s) "
                             f"({p} per image): give a smaller --components or more images")
        rng = np.random.default_rng(opts.seed + 1)
        flat = held.reshape(-1, d)
        pick = np.sort(rng.choice(len(flat), size=min(len(flat), KMEANS_PATCH_CAP), replace=False))
        log.info("patch clusters: spherical k-means, k=%d, on %d of %d patches of %d images", k, len(pick),
                 len(flat), f)
        centroids, _, _ = kmeans(flat[pick].astype(np.float32), k, niter=25, seed=opts.seed,
                                 device=resolve_device(opts.device), spherical=True)
        centroids = (centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        cosine = np.empty((f, k), np.float32)
        soft = np.empty((f, k), np.float32) if enc.temperature > 0 else None
        assign = np.empty((f, p), np.int64)
        for lo in range(0, f, batch):
            c, sc, a = patch_codes(torch.from_numpy(held[lo:lo + batch].astype(np.float32)),
                                   torch.from_numpy(centroids), enc.temperature)
            cosine[lo:lo + batch], assign[lo:lo + batch] = c.numpy(), a.numpy()
            if soft is not None:
                soft[lo:lo + batch] = sc.numpy()
        if labels is not None:
            chosen, category = mine_elements(assign, labels[rows], k, opts.per_category)
            log.info("mined %d elements for %d categories (support x confidence, top %d each)", len(chosen),
                     len(np.unique(labels)), opts.per_category)
        else:
            chosen = spread_elements(soft if enc.coding == "soft" else cosine, max(1, k // 2))
            category = np.full(len(chosen), -1, np.int64)
            log.info("kept %d of %d patch clusters by their spread across images (no labels)", len(chosen), k)
        enc.elements, enc.element_category = centroids[chosen], category
        enc.codebook, enc.element_index = centroids, chosen
        if enc.coding == "both":
            enc.scales = np.array([block_spread(cosine[:, chosen]), block_spread(soft[:, chosen])])
        encoded = element_codes(cosine, soft, chosen, enc.coding, enc.scales)
    enc.width = encoded.shape[1]
    if len(encoded) and (encoded == encoded[:1]).all():
        raise InputError(f"{opts.local}: all {len(encoded)} fit images give the same encoding (blank, constant or "
                         "one-pixel images?): it would tell no image from another; nothing written")
    dim = pca_dim_for(encoded.shape[1], len(rows))
    if dim is not None:
        log.info("fitting PCA %d -> %d on %d encodings", encoded.shape[1], dim, len(rows))
        enc.pca = PCA(dim, whiten=False, seed=opts.seed).fit(encoded)
    return enc, encoded
