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
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..common.cli import CommonOptions, Tool, opt, positional, progress, resolve_device
from ..common.errors import InputError
from ..common.images.input_options import InputOptions
from ..common.numerics.features import PCA, kmeans
from ..common.images.imagedata import patch_grid
from ..common.files.stores import atomic_path, create_store, file_checksum, open_store

log = logging.getLogger("ldpo")

METHODS = ("fv", "vlad", "avg", "max", "patches")
UNLABELED = ("spread", "global")
CODINGS = ("auto", "both", "soft", "cosine")
DEFAULT_DIM = 4096
MODEL_FORMAT = "ldpo-encoder-1"


def descriptor_cap(channels: int) -> int:
    """Most descriptors used to fit the GMM/codebook: 100k, and at most 2^25 values."""
    return int(max(1, min(100_000, 2**25 // max(channels, 1))))


# -- encodings (torch, on any device) ---------------------------------------------------------

def signed_sqrt_l2(v):
    """Signed square root, then L2 per row (an all-zero row stays zero)."""
    import torch

    v = torch.sign(v) * torch.sqrt(torch.abs(v))
    return v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-12)


def gmm_log_joint(x, weights, means, variances):
    """``log(w_k N(x | mu_k, diag var_k))`` for rows x ``[M,C]``: ``[M,K]``."""
    import torch

    inv = 1.0 / variances
    quad = (x * x) @ inv.T - 2.0 * (x @ (means * inv).T) + (means * means * inv).sum(1)
    const = torch.log(variances).sum(1) + x.shape[1] * math.log(2 * math.pi)
    return torch.log(weights) - 0.5 * (quad + const)


def fisher_vector(x, weights, means, variances):
    """Improved Fisher Vectors of descriptor sets x ``[B,S,C]``: ``[B, 2·K·C]``."""
    import torch

    b, s, c = x.shape
    k = means.shape[0]
    q = torch.softmax(gmm_log_joint(x.reshape(-1, c), weights, means, variances), dim=1).reshape(b, s, k)
    qt = q.transpose(1, 2)
    s0 = q.sum(1).unsqueeze(2)                       # [B,K,1]
    s1 = qt @ x                                      # [B,K,C]
    s2 = qt @ (x * x)                                # [B,K,C]
    g_mu = (s1 - means * s0) / torch.sqrt(variances)
    g_var = (s2 - 2.0 * means * s1 + means * means * s0) / variances - s0
    g_mu = g_mu / (s * torch.sqrt(weights)).unsqueeze(1)
    g_var = g_var / (s * torch.sqrt(2.0 * weights)).unsqueeze(1)
    return signed_sqrt_l2(torch.stack([g_mu, g_var], dim=2).reshape(b, -1))


def vlad(x, codebook):
    """VLAD of descriptor sets x ``[B,S,C]`` with codebook ``[K,C]``: ``[B, K·C]``."""
    import torch

    b, s, c = x.shape
    k = codebook.shape[0]
    flat = x.reshape(-1, c)
    dist = (codebook * codebook).sum(1) - 2.0 * (flat @ codebook.T)   # + |x|^2, same for every word
    word = dist.argmin(1)
    residual = (flat - codebook[word]).reshape(b, s, c)
    onehot = torch.nn.functional.one_hot(word, k).to(x.dtype).reshape(b, s, k)
    v = onehot.transpose(1, 2) @ residual                           # [B,K,C] residual sums
    v = v / torch.linalg.vector_norm(v, dim=2, keepdim=True).clamp_min(1e-12)
    return signed_sqrt_l2(v.reshape(b, -1))


def pool(x, how: str):
    """Average or max over the S positions: ``[B,C]``."""
    return x.mean(1) if how == "avg" else x.amax(1)


# -- the encoder ------------------------------------------------------------------------------

@dataclass
class Encoder:
    """What ``--model-out`` saves: method, C, K, descriptor center, GMM or codebook, PCA."""

    method: str
    channels: int
    components: int = 0
    center: np.ndarray | None = None       # [C] subtracted from descriptors (fv, vlad)
    weights: np.ndarray | None = None      # fv [K]
    means: np.ndarray | None = None        # fv [K,C]
    variances: np.ndarray | None = None    # fv [K,C]
    codebook: np.ndarray | None = None     # vlad [K,C]
    pca: PCA | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def encoded_dim(self) -> int:
        return encoded_dim(self.method, self.components, self.channels)

    @property
    def dim(self) -> int:
        return self.pca.dim if self.pca is not None else self.encoded_dim

    def tensors(self, device: str) -> dict:
        import torch

        if device not in self._cache:
            names = ["center", "weights", "means", "variances", "codebook"]
            t = {n: torch.from_numpy(np.asarray(getattr(self, n), np.float32)).to(device)
                 for n in names if getattr(self, n) is not None}
            if self.pca is not None:
                for n, a in (("pca_mean", self.pca.mean), ("pca_components", self.pca.components),
                             ("pca_scale", self.pca.scale)):
                    t[n] = torch.from_numpy(np.asarray(a, np.float32)).to(device)
            self._cache[device] = t
        return self._cache[device]

    def encode(self, block: np.ndarray, device: str = "cpu", reduce: bool = True) -> np.ndarray:
        """Descriptor sets ``[B,S,C]`` → float32 rows ``[B,D']`` (``reduce=False``: before PCA)."""
        import torch

        t = self.tensors(device)
        with torch.no_grad():
            x = torch.from_numpy(np.asarray(block, np.float32)).to(device)
            if self.method in ("fv", "vlad"):
                x = x - t["center"]
            if self.method == "fv":
                y = fisher_vector(x, t["weights"], t["means"], t["variances"])
            elif self.method == "vlad":
                y = vlad(x, t["codebook"])
            else:
                y = pool(x, self.method)
            if reduce and self.pca is not None:
                y = ((y - t["pca_mean"]) @ t["pca_components"].T) * t["pca_scale"]
            return y.cpu().numpy().astype(np.float32, copy=False)

    def set_pca(self, pca: PCA | None) -> None:
        self.pca = pca
        self._cache.clear()

    # -- saving and loading ------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out = {"format": np.array(MODEL_FORMAT), "method": np.array(self.method),
               "channels": np.array(self.channels, np.int64), "components": np.array(self.components, np.int64)}
        for name in ("center", "weights", "means", "variances", "codebook"):
            if getattr(self, name) is not None:
                out[name] = np.asarray(getattr(self, name), np.float32)
        if self.pca is not None:
            state = self.pca.state()
            out.update(pca_dim=np.array(state["dim"], np.int64), pca_whiten=np.array(state["whiten"]),
                       pca_mean=state["mean"], pca_components=state["components"], pca_scale=state["scale"])
        return out

    def checksum(self) -> str:
        digest = hashlib.sha256()
        for name, a in sorted(self.arrays().items()):
            digest.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            digest.update(np.ascontiguousarray(a).tobytes())
        return digest.hexdigest()[:16]

    def save(self, path: str) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **self.arrays())

    @classmethod
    def load(cls, path: str) -> "Encoder":
        if not Path(path).is_file():
            raise InputError(f"{path}: no such encoder model")
        try:
            with np.load(path, allow_pickle=False) as z:
                a = {name: z[name] for name in z.files}
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: not an encoder model ({err})".splitlines()[0]) from err
        if "format" not in a or str(a["format"]) != MODEL_FORMAT:
            raise InputError(f"{path}: not an encoder model written by encode --model-out")
        pca = None
        if "pca_dim" in a:
            pca = PCA.from_state({"dim": a["pca_dim"], "whiten": a["pca_whiten"], "mean": a["pca_mean"],
                                  "components": a["pca_components"], "scale": a["pca_scale"]})
        return cls(method=str(a["method"]), channels=int(a["channels"]), components=int(a["components"]),
                   pca=pca, **{n: a[n] for n in ("center", "weights", "means", "variances", "codebook") if n in a})


def encoded_dim(method: str, components: int, channels: int) -> int:
    return {"fv": 2 * components * channels, "vlad": components * channels}.get(method, channels)


# -- fitting ----------------------------------------------------------------------------------

def fit_gmm(x: np.ndarray, k: int, seed: int, device: str, niter: int = 30, tol: float = 1e-5
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Diagonal GMM by EM, started from faiss k-means: ``(weights [K], means [K,C], variances [K,C])``."""
    import torch

    centroids, assign, _ = kmeans(x, k, niter=20, seed=seed, device=device)
    x_t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)
    x2 = x_t * x_t
    floor = 1e-3 * x_t.var(0) + 1e-6
    a = torch.from_numpy(assign).to(device)
    q = torch.nn.functional.one_hot(a, k).to(x_t.dtype)
    means = torch.from_numpy(centroids).to(device)
    weights, _, variances = _m_step(q, x_t, x2, floor, means, torch.ones_like(means))
    previous = -math.inf
    for it in range(niter):  # noqa: B007 - the count is logged after the loop
        logp = gmm_log_joint(x_t, weights, means, variances)
        ll = torch.logsumexp(logp, dim=1)
        q = torch.exp(logp - ll.unsqueeze(1))
        weights, means, variances = _m_step(q, x_t, x2, floor, means, variances)
        mean_ll = float(ll.mean())
        if mean_ll - previous < tol * abs(mean_ll):
            break
        previous = mean_ll
    log.info("GMM: %d components, %d iterations, mean log-likelihood %.4g", k, it + 1, mean_ll)
    return (weights.cpu().numpy(), means.cpu().numpy(), variances.cpu().numpy())


def _m_step(q, x, x2, floor, old_means, old_variances):
    """EM M-step; a component with (almost) no mass keeps its parameters."""
    import torch

    nk = q.sum(0)
    alive = (nk > 1e-3).unsqueeze(1)
    safe = nk.clamp_min(1e-3).unsqueeze(1)
    means = (q.T @ x) / safe
    variances = ((q.T @ x2) / safe - means * means).clamp_min(0) + floor
    means = torch.where(alive, means, old_means)
    variances = torch.where(alive, variances, old_variances)
    weights = nk.clamp_min(1e-3)
    return weights / weights.sum(), means, variances


def sample_rows(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct image rows out of ``n``, seeded, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(count, n), replace=False))


def read_rows(store, rows: np.ndarray, batch: int):
    """Yield blocks ``[b,S,C]`` of the local array for the given sorted rows."""
    for lo in range(0, len(rows), batch):
        yield finite(store.take("local", rows[lo:lo + batch]), store.path, rows[lo:lo + batch])


def finite(block: np.ndarray, path, rows: np.ndarray) -> np.ndarray:
    """``block`` (the local descriptors of store rows ``rows``), refused when it holds NaN or
    inf: one such value would spread into the codebook, the PCA or that image's features."""
    ok = np.isfinite(block).reshape(len(block), -1).all(axis=1)
    if not ok.all():
        row = int(rows[int(np.argmin(ok))])
        raise InputError(f"{path}: row {row} holds non-finite local features (NaN or inf): nothing written "
                         "(re-run featurize, or leave that image out)")
    return block


def sample_descriptors(store, rows: np.ndarray, batch: int, seed: int) -> np.ndarray:
    """Descriptors of the fit images, at most ``descriptor_cap(C)`` of them, float32 ``[M,C]``."""
    _, s, c = store.shape("local")
    per_image = max(1, min(s, descriptor_cap(c) // len(rows)))
    rng = np.random.default_rng(seed + 1)
    parts = []
    for block in read_rows(store, rows, batch):
        pick = np.argsort(rng.random((len(block), s)), axis=1)[:, :per_image]
        parts.append(np.take_along_axis(block, pick[:, :, None], axis=1).reshape(-1, c).astype(np.float32))
    return np.concatenate(parts)


def fit_encoder(store, method: str, k: int, rows: np.ndarray, pca_dim: int | None, batch: int,
                seed: int, device: str) -> Encoder:
    """Fit the GMM/codebook on the fit images' descriptors, then the PCA on their encodings."""
    _, s, c = store.shape("local")
    enc = Encoder(method=method, channels=c, components=k if method in ("fv", "vlad") else 0)
    if method in ("fv", "vlad"):
        x = sample_descriptors(store, rows, batch, seed)
        if len(x) < k:
            raise InputError(f"{store.path}: only {len(x)} descriptors in the fit sample for {k} components")
        enc.center = x.mean(0, dtype=np.float64).astype(np.float32)
        x -= enc.center
        log.info("fitting %s with %d components on %d descriptors of %d images", method, k, len(x), len(rows))
        if method == "fv":
            enc.weights, enc.means, enc.variances = fit_gmm(x, k, seed, device)
        else:
            enc.codebook, _, _ = kmeans(x, k, niter=25, seed=seed, device=device)
        del x
    if pca_dim is not None:
        encoded = np.empty((len(rows), enc.encoded_dim), np.float32)
        lo = 0
        for block in progress(read_rows(store, rows, batch), desc="fit sample", total=math.ceil(len(rows) / batch)):
            encoded[lo:lo + len(block)] = enc.encode(block, device, reduce=False)
            lo += len(block)
        log.info("fitting PCA %d -> %d on %d encodings", enc.encoded_dim, pca_dim, len(rows))
        enc.set_pca(PCA(pca_dim, whiten=False, seed=seed).fit(encoded))
    return enc


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

        from ..common.images.imagedata import crop_patches

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

        from ..common.images.imagedata import Preprocess

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

    from ..common.nets import models
    from ..common.files.labels import align, read_labels

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
