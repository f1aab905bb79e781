"""Neighbour-consistent clustering on fixed features (``cluster --method scan``).

SCAN (Van Gansbeke et al., ECCV 2020), its clustering step, on a feature matrix instead of
a trained backbone:

1. **Mine neighbours.** Each row's ``neighbours`` nearest rows by cosine similarity (faiss,
   exact up to :data:`~ldpo.common.numerics.features.EXACT_KNN_MAX_ROWS` rows, an inverted-file
   index beyond), in the features as they come (``cluster --pca D`` reduces them first).
2. **Train heads.** ``heads`` linear heads p(c|x) = softmax(W x + b) on the centred,
   L2-normalized features, each starting as the nearest-centroid rule of its own k-means
   (``--scan-init kmeans``, the default; ``random`` is SCAN's start), all at once, with SCAN's loss on mini-batches of (row, one of its
   neighbours drawn at random):

       L = - mean_i log <p(x_i), p(x_j)>  -  w * H(mean_i p(x_i))

   The first term makes a row and its neighbour agree (confidently); the entropy of the
   mean prediction (weight ``w``, ``--entropy-weight``) keeps every cluster in use.
3. **Keep the head with the lowest loss** over all rows and all their neighbours (SCAN and
   TEMI choose this way; no labels are needed).
4. **Self-label** (optional, ``--self-label T``): train that head further with
   cross-entropy on the rows it assigns with probability >= T, weighted so every cluster
   counts the same (SCAN's third step).

Why this recipe and not SCAN's own numbers: on features of a network that has not been trained
on the images, linear heads on raw L2-normalized features barely move (the rows share a large
mean, so their logits span a tiny range) and collapse, and centring the features first fixes
it, while whitening them can collapse a small set; SCAN's entropy weight of 5 favours even
cluster sizes more than an imbalanced archive bears, so the default is 2; training counts
steps (``--scan-steps``), not epochs, because a few hundred images make too few steps per
epoch; and starting each head from a k-means solution keeps what k-means already found and
gains on top of it. The measurements, with the command that reruns them, are in
docs/measurements.md ("cluster --method scan").

Memory: the heads learn from every row of a store up to ``cluster``'s ``--train-rows`` (N x D
float32 about three times, and N x heads x k probabilities for the loss), from a seeded sample of
that many rows beyond it (neighbours mined inside the sample); then every row is read block by
block and given the kept head's cluster (:meth:`Fitted.assign`), so memory does not grow with N.

Labels are the kept head's argmax, renumbered 0..K'-1; clusters no row chooses are logged
as a warning with their count (never dropped silently). Each row's probability of its
cluster is returned as its confidence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ...common.cli import progress
from ...common.numerics.features import l2_normalize, nearest_neighbours

log = logging.getLogger("ldpo")

@dataclass(frozen=True)
class ScanSettings:
    neighbours: int = 20
    heads: int = 5
    steps: int = 1000
    batch: int = 256
    lr: float = 1e-2
    entropy_weight: float = 2.0
    self_label: float = 0.0  # 0 = off; else the confidence threshold
    init: str = "kmeans"  # random | kmeans (each head starts as the nearest-centroid rule of its own k-means)
    chunk: int = 4096
    prior: tuple[float, ...] | None = None  # the cluster sizes to aim at (any order, summing to 1); None = equal


def head_input(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The heads' input: the features centred (on the rows the heads learned from), then each row scaled to
    unit length."""
    return l2_normalize(np.asarray(x, dtype=np.float32) - centre)


@dataclass
class Fitted:
    """The kept head, the centre its inputs are taken from, and its loss."""

    head: object
    centre: np.ndarray
    loss: float

    def assign(self, x: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """``(cluster [n] in 0..k-1, confidence [n])`` of feature rows ``x`` (any rows: a block of a large store)."""
        import torch

        device = self.head.weight.device
        probs = predict(self.head, torch.from_numpy(head_input(x, self.centre)).to(device), chunk)
        confidence, assign = probs.max(dim=1)
        return assign.cpu().numpy().astype(np.int64), confidence.cpu().numpy().astype(np.float32)


def scan(x: np.ndarray, k: int, settings: ScanSettings, seed: int = 0, device: str = "cpu"
         ) -> tuple[np.ndarray, np.ndarray, float]:
    """``(assignment [N] in 0..k-1, confidence [N], loss of the kept head)`` for features ``x``."""
    fitted = fit(x, k, settings, seed, device)
    return (*fitted.assign(x, settings.chunk), fitted.loss)


def fit(x: np.ndarray, k: int, settings: ScanSettings, seed: int = 0, device: str = "cpu") -> Fitted:
    """Steps 1-4 on the rows ``x``: the kept (and optionally self-labelled) head."""
    import torch

    x = np.asarray(x, dtype=np.float32)
    count = neighbour_count(len(x), k, settings.neighbours)
    neighbours = nearest_neighbours(x, count, device, seed=seed)
    log.info("scan: %d nearest neighbours per row mined; %d heads, %d steps", neighbours.shape[1], settings.heads,
             settings.steps)
    centre = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    inputs = torch.from_numpy(head_input(x, centre)).to(device)
    nb = torch.from_numpy(neighbours).to(device)
    heads = train_heads(inputs, nb, k, settings, seed)
    losses = head_losses(heads, inputs, nb, k, settings)
    best = int(np.argmin(losses))
    log.info("scan: head losses %s; kept head %d", " ".join(f"{v:.4f}" for v in losses), best)
    head = one_head(heads, best, k)
    if settings.self_label:
        self_label(head, inputs, settings, seed)
    return Fitted(head, centre, losses[best])


def neighbour_count(n: int, k: int, wanted: int) -> int:
    """``wanted`` neighbours, but fewer than an average cluster holds (N/k - 1): on a small set,
    neighbours beyond a cluster's size must come from other clusters and pull them together."""
    cap = max(1, n // max(k, 1) - 1)
    if cap < wanted:
        log.info("scan: %d neighbours per row instead of %d (%d rows in %d clusters)", cap, wanted, n, k)
    return min(wanted, cap)


def make_heads(d: int, k: int, count: int, seed: int, device):
    """``count`` linear heads of ``k`` outputs as one layer of ``count x k`` outputs (head h: rows h*k..)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Linear(d, count * k).to(device)


def one_head(heads, h: int, k: int):
    """Head ``h`` of the stacked layer as a layer of its own."""
    import torch

    head = torch.nn.Linear(heads.in_features, k).to(heads.weight.device)
    with torch.no_grad():
        head.weight.copy_(heads.weight[h * k:(h + 1) * k])
        head.bias.copy_(heads.bias[h * k:(h + 1) * k])
    return head


def size_term(mean, prior):
    """The balance term of the mean prediction ``mean`` ``[H, K]``: its entropy (maximal at equal sizes) without a
    ``prior``; with one, minus the KL divergence of the sorted mean from the sorted prior, so the clusters' sizes
    aim at the prior's size distribution (largest cluster at the largest share, and so on) whichever cluster
    ends up which size. With an equal prior the two differ by log K, a constant."""
    import torch

    if prior is None:
        return -(mean * torch.log(mean.clamp_min(1e-8))).sum(dim=1)
    ordered = torch.sort(mean, dim=1, descending=True).values
    return -(ordered * (torch.log(ordered.clamp_min(1e-8)) - torch.log(prior))).sum(dim=1)


def prior_tensor(settings: ScanSettings, k: int, device):
    """The sorted prior (largest first) as a tensor of ``k`` shares, or None."""
    import torch

    if settings.prior is None:
        return None
    return torch.tensor(resample_sizes(settings.prior, k), dtype=torch.float32, device=device)


def resample_sizes(sizes, k: int) -> list[float]:
    """``sizes`` sorted largest first, stretched or shrunk to ``k`` shares (linear interpolation of the sorted
    size curve) and normalized to sum to 1."""
    ordered = np.sort(np.asarray(sizes, dtype=np.float64))[::-1]
    if len(ordered) != k:
        ordered = np.interp(np.linspace(0, 1, k), np.linspace(0, 1, len(ordered)), ordered)
    ordered = np.maximum(ordered, 1e-6)
    return (ordered / ordered.sum()).tolist()


def scan_loss(logits_a, logits_n, weight: float, prior=None):
    """SCAN's loss for a batch, per head (logits ``[B, H, K]``): neighbour consistency minus
    ``weight`` x the balance term (:func:`size_term`); returns ``[H]``."""
    import torch

    pa, pn = torch.softmax(logits_a, dim=2), torch.softmax(logits_n, dim=2)
    consistency = -torch.log((pa * pn).sum(dim=2).clamp_min(1e-8)).mean(dim=0)
    return consistency - weight * size_term(pa.mean(dim=0), prior)


def train_heads(inputs, nb, k: int, settings: ScanSettings, seed: int):
    """``settings.heads`` linear heads (one stacked layer) trained together on the same seeded batches."""
    import torch

    n, d = inputs.shape
    heads = make_heads(d, k, settings.heads, seed, inputs.device)
    if settings.init == "kmeans":
        start_from_kmeans(heads, inputs, k, settings.heads, seed)
    optimizer = torch.optim.Adam(heads.parameters(), lr=settings.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    batch = min(settings.batch, n)
    prior = prior_tensor(settings, k, inputs.device)
    for _ in progress(range(settings.steps), desc="scan heads"):
        rows = torch.randint(n, (batch,), generator=gen)
        pick = torch.randint(nb.shape[1], (batch,), generator=gen)
        rows, pick = rows.to(inputs.device), pick.to(inputs.device)
        a = heads(inputs[rows]).view(batch, settings.heads, k)
        m = heads(inputs[nb[rows, pick]]).view(batch, settings.heads, k)
        loss = scan_loss(a, m, settings.entropy_weight, prior).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return heads


#: temperature of a k-means start: logits (2 c.x - |c|^2) / (2 T) on unit-length rows
KMEANS_START_TEMPERATURE = 0.05


def start_from_kmeans(heads, inputs, k: int, count: int, seed: int) -> None:
    """Head h starts as the nearest-centroid rule of k-means (seed ``seed * 1000 + h``) on the heads'
    input, softened by :data:`KMEANS_START_TEMPERATURE`: training starts where k-means ends."""
    import torch

    from ...common.numerics.features import kmeans

    x = inputs.cpu().numpy()
    for h in range(count):
        centroids, _, _ = kmeans(x, k, 20, seed * 1000 + h, "cpu")
        c = torch.from_numpy(centroids).to(inputs.device)
        with torch.no_grad():
            heads.weight[h * k:(h + 1) * k] = c / KMEANS_START_TEMPERATURE
            heads.bias[h * k:(h + 1) * k] = -0.5 * (c * c).sum(dim=1) / KMEANS_START_TEMPERATURE


def predict(head, inputs, chunk: int):
    import torch

    with torch.no_grad():
        return torch.cat([torch.softmax(head(inputs[lo:lo + chunk]), dim=1) for lo in range(0, len(inputs), chunk)])


def head_losses(heads, inputs, nb, k: int, settings: ScanSettings) -> list[float]:
    """The SCAN loss of each head over every row and every one of its neighbours (in row chunks)."""
    import torch

    count = heads.out_features // k
    with torch.no_grad():
        probs = torch.cat([torch.softmax(heads(inputs[lo:lo + settings.chunk]).view(-1, count, k), dim=2)
                           for lo in range(0, len(inputs), settings.chunk)])  # [N, H, K]
        total = torch.zeros(count, dtype=torch.float64, device=probs.device)
        for lo in range(0, len(probs), settings.chunk):
            p, q = probs[lo:lo + settings.chunk], probs[nb[lo:lo + settings.chunk]]  # [b,H,K], [b,nn,H,K]
            agree = (p[:, None] * q).sum(dim=3).clamp_min(1e-8)  # [b, nn, H]
            total -= torch.log(agree).sum(dim=(0, 1)).double() / nb.shape[1]
        balance = size_term(probs.mean(dim=0), prior_tensor(settings, k, probs.device)).double()  # [H]
    return (total / len(probs) - settings.entropy_weight * balance).cpu().tolist()


def self_label(head, inputs, settings: ScanSettings, seed: int) -> None:
    """SCAN's self-labeling on fixed features: cross-entropy on the confident rows' own labels,
    each cluster weighted by the inverse of its confident count."""
    import torch

    probs = predict(head, inputs, settings.chunk)
    confidence, target = probs.max(dim=1)
    chosen = torch.nonzero(confidence >= settings.self_label).flatten()
    if len(chosen) == 0:
        log.warning("scan: no row reaches confidence %.3g; self-labeling skipped", settings.self_label)
        return
    counts = torch.bincount(target[chosen], minlength=probs.shape[1]).float()
    weight = torch.where(counts > 0, counts.sum() / counts.clamp_min(1) / (counts > 0).sum(), torch.zeros_like(counts))
    log.info("scan: self-labeling on %d confident rows (>= %.3g) of %d clusters", len(chosen), settings.self_label,
             int((counts > 0).sum()))
    optimizer = torch.optim.Adam(head.parameters(), lr=settings.lr / 10, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed + 1)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    for _ in range(settings.steps // 2):
        rows = chosen[torch.randint(len(chosen), (min(settings.batch, len(chosen)),), generator=gen).to(chosen.device)]
        loss = loss_fn(head(inputs[rows]), target[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
