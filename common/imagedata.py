"""Images from a store as network input, for ``featurize`` and ``finetune``.

uint8 grayscale ``[H,W]`` or RGB ``[H,W,3]`` → float in [0,1] → grayscale replicated to
3 channels → resized to ``input_size`` (bilinear, antialiased; square) → normalized:
``imagenet`` (torchvision's mean/std), ``timm`` (the mean/std of timm's pretrained config
for the model, passed in by the caller: ``Built.mean``/``Built.std``) or ``zscore`` (per
image, as DeepMCAT does for MR).

Gray images are replicated to 3 channels (before normalizing): the one rule for gray
medical images and 3-channel backbones (see :mod:`ldpo.common.models`).

The datasets open the store lazily in the process that reads (so DataLoader workers
each get their own handle) and read only the rows asked for: memory does not grow
with N.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from ldpo.common.stores import Store, open_store

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float3(block: np.ndarray) -> torch.Tensor:
    """uint8 ``[B,H,W]`` or ``[B,H,W,3]`` → float32 ``[B,3,H,W]`` in [0,1]."""
    x = torch.from_numpy(np.ascontiguousarray(block))
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def normalize(x: torch.Tensor, how: str, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """``imagenet``/``timm``: per-channel ``mean``/``std`` (ImageNet's unless given), or
    ``zscore``: each image to mean 0, std 1 over all its pixels."""
    if how == "zscore":
        return zscore(x)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Per image (population std, so a gray image and its 3-channel copy give the same values)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, correction=0).clamp_min(1e-6)
    return (x - mean) / std


class Preprocess:
    """uint8 block ``[B,H,W]``/``[B,H,W,3]`` → resized, normalized float ``[B,3,S,S]`` (evaluation).

    Same result as ``normalize(resize(to_float3(block)))`` up to float rounding, in fewer
    passes: a gray image is resized and scaled once per channel, never copied to 3
    channels first (the model's own speed is the budget: see tests/bench).
    """

    def __init__(self, size: int, how: str, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD):
        self.size, self.how, self.mean, self.std = size, how, mean, std

    def __call__(self, block: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(block))
        x = resize((x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)).float(), self.size)  # 0..255
        if self.how == "zscore":
            return zscore(x).expand(-1, 3, -1, -1).contiguous()
        out = torch.empty(len(x), 3, *x.shape[-2:])
        for c in range(3):
            scale, shift = 1 / (255 * self.std[c]), -self.mean[c] / self.std[c]
            torch.mul(x[:, 0 if x.shape[1] == 1 else c], scale, out=out[:, c]).add_(shift)
        return out


class Augment:
    """Training input for a uint8 block of one image: random resized crop, optional flip, normalize.

    Draws from the global torch RNG: :class:`StoreImages` seeds it per image and epoch.
    """

    def __init__(self, size: int, how: str, min_scale: float = 0.35, flip: bool = False, jitter: float = 0.0,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        self.size, self.how, self.min_scale, self.flip, self.jitter = size, how, min_scale, flip, jitter
        self.mean, self.std = mean, std

    def __call__(self, block: np.ndarray) -> torch.Tensor:
        from torchvision.transforms import RandomResizedCrop

        x = to_float3(block)
        if self.min_scale < 1.0:
            top, left, h, w = RandomResizedCrop.get_params(x, scale=(self.min_scale, 1.0), ratio=(3 / 4, 4 / 3))
            x = x[..., top:top + h, left:left + w]
        x = resize(x, self.size)
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.jitter:
            x = jitter_intensity(x, self.jitter)
        return normalize(x, self.how, self.mean, self.std)


def jitter_intensity(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Random gamma in [e^-s, e^s], then contrast ×[1-s, 1+s] about the mean and brightness
    ±s/2, clipped to [0,1]: the intensity changes of gray medical images (no hue). Gamma
    survives per-image z-scoring; contrast and brightness matter with ``imagenet``."""
    u = torch.rand(3) * 2 - 1  # three draws in [-1, 1]
    x = x.clamp_min(0).pow(float(torch.exp(u[0] * strength)))
    mean = x.mean()
    x = (x - mean) * (1 + float(u[1]) * strength) + mean + float(u[2]) * strength / 2
    return x.clamp(0, 1)


class _LazyStore:
    """Opens the images store on first use in each process (DataLoader workers included)."""

    def __init__(self, path: str):
        self.path = str(path)
        self._store: Store | None = None
        self._pid = -1

    @property
    def store(self) -> Store:
        if self._store is None or self._pid != os.getpid():
            self._store = open_store(self.path, validate=False)
            self._pid = os.getpid()
        return self._store

    def __getstate__(self) -> dict:
        return {"path": self.path, "_store": None, "_pid": -1}


class StoreBlocks(Dataset, _LazyStore):
    """Consecutive blocks of ``batch`` rows in ``[start, stop)``, preprocessed: item j is a batch."""

    def __init__(self, path: str, start: int, stop: int, batch: int, transform: Callable):
        _LazyStore.__init__(self, path)
        self.start, self.stop, self.batch, self.transform = start, stop, batch, transform

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch)

    def __getitem__(self, j: int) -> torch.Tensor:
        lo = self.start + j * self.batch
        hi = min(lo + self.batch, self.stop)
        return self.transform(self.store.read("images", lo, hi))

    def __getstate__(self) -> dict:
        return {**self.__dict__, **_LazyStore.__getstate__(self)}


class StoreImages(Dataset, _LazyStore):
    """Images at store ``rows`` with their class ``targets``; item i is ``(image [3,S,S], target)``.

    With an :class:`Augment` transform the random draws for an image depend only on
    (seed, epoch, row): the same augmentation whatever the number of workers or processes.
    """

    def __init__(self, path: str, rows: np.ndarray, targets: np.ndarray, transform: Callable, seed: int = 0):
        _LazyStore.__init__(self, path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform, self.seed, self.epoch = transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = int(self.rows[i])
        block = self.store.read("images", row, row + 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, row]).generate_state(1)[0]))
            x = self.transform(block)
        return x[0], int(self.targets[i])

    def __getstate__(self) -> dict:
        return {**self.__dict__, **_LazyStore.__getstate__(self)}


class EpochSampler(Sampler[int]):
    """This process's share of a seeded per-epoch order over ``targets``.

    A shuffle, or with ``balanced`` DeepCluster's UnifLabelSampler: every non-empty class
    drawn about N/K times. Like DistributedSampler, the order is padded to a multiple of
    ``world`` and process ``rank`` takes every ``world``-th item; it depends only on
    (seed, epoch), so a resumed run sees the same orders.
    """

    def __init__(self, targets: np.ndarray, balanced: bool = False, seed: int = 0, rank: int = 0, world: int = 1):
        self.targets = np.asarray(targets)
        self.balanced, self.seed, self.rank, self.world = balanced, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.targets)
        if not self.balanced:
            return rng.permutation(n)
        classes = np.unique(self.targets)
        per_class = n // len(classes) + 1
        picks = [rng.choice(members, per_class, replace=len(members) < per_class)
                 for members in (np.flatnonzero(self.targets == c) for c in classes)]
        return rng.permutation(np.concatenate(picks))[:n]

    def __len__(self) -> int:
        return -(-len(self.targets) // self.world)

    def __iter__(self):
        order = self.order()
        padded = np.resize(order, len(self) * self.world)  # repeats the start, like DistributedSampler
        return iter(padded[self.rank::self.world].tolist())
