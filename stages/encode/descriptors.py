"""``encode``'s Fisher Vector, VLAD and pooling of a conv layer's local descriptors: the encodings
(torch, on any device), the fitted :class:`Encoder` that ``--model-out`` saves, and fitting its
GMM or codebook and PCA on the fit sample (see the package's docstring for the methods)."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...common.cli import progress
from ...common.errors import InputError
from ...common.numerics.features import PCA, kmeans
from ...common.files.stores import atomic_path

log = logging.getLogger("ldpo")


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
