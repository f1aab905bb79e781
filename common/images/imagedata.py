"""Images from a store as network input, for ``featurize``, ``finetune`` and ``assign``.

The data path, the same on CPU and CUDA (:func:`batches`):

1. **Read** uint8 rows of whole chunks (:func:`chunk_rows`), in ``--workers`` threads of
   the calling process, ahead of use, each read at most ``READ_BYTES``. An item is planned
   up front (:class:`Item`): the row ranges to read and the rows to keep from them, in order.
2. **Gather** each batch in one copy from its items' rows (into pinned memory on CUDA), and
   move it to the device without blocking: 4× fewer bytes than float, and nothing per
   image on the CPU. No worker processes: nothing crosses a process boundary, no shared
   memory (/dev/shm), and the batches do not depend on the number of threads (FFCV's
   design: threads and pinned buffers in the training process).
3. **Prepare on the device, in batches**: :class:`Preprocess` (evaluation: resize,
   normalize) or :class:`Augment` (training: random resized crop, flip, intensity
   jitter, normalize).

Preparing: uint8 grayscale ``[H,W]`` or RGB ``[H,W,3]`` → float → a non-square store's
images padded to a square with black, centred (:func:`pad_square`, as ``extract-keyimages``
pads: no anatomy is cropped or stretched) → resized to ``input_size`` (bilinear,
antialiased) → normalized: ``imagenet``
(torchvision's mean/std), ``timm`` (the mean/std of timm's pretrained config for the
model, passed in by the caller: ``Built.mean``/``Built.std``) or ``zscore`` (per
image, as DeepMCAT does for MR). Gray images are replicated to 3 channels: the one rule
for gray medical images and 3-channel backbones (see :mod:`ldpo.common.nets.models`); the
work is done once on the single channel and copied at the end.

Training order (:func:`epoch_items`): the epoch's seeded order of the training images
(a shuffle, or DeepCluster's class-balanced draw) is read window by window: the chunks
holding training images are dealt at random into windows of about ``WINDOW_BYTES`` of
images; a window's images keep their order from the epoch's shuffle. A store whose
training images fit in one window (the toy sets) is read in exactly the epoch's shuffle;
an archive is read chunk by chunk, each chunk once per epoch, in random windows (the
block shuffle of WebDataset and FFCV's quasi-random order). The next window is read while
the current one is trained on: host memory holds about two windows, whatever the workers.

Augmentation draws (:func:`draws`) are a pure function of (seed, epoch, store row): the
same crops whatever the workers, processes or windows.

Why one module of this size (about 600 lines): the data path from a store row to a network's
input is one chain (windows of chunks, decoding, preprocessing, the seeded augmentation draws,
batches), and the same-crops-whatever-the-workers rule holds only if it is read as a whole.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..files.stores import Store, open_store

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: images per training window, in bytes: about 256 MiB of uint8 (4,096 images at 256 px)
WINDOW_BYTES = 256 << 20
#: rows read per item, in bytes (at least one batch and one chunk)
READ_BYTES = 16 << 20


# -- preparing (any device) ---------------------------------------------------------
def to_float3(block: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[B,H,W]`` or ``[B,H,W,3]`` → float32 ``[B,3,H,W]`` in [0,1]."""
    x = as_tensor(block)
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


def as_tensor(block: np.ndarray | torch.Tensor) -> torch.Tensor:
    return block if isinstance(block, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(block))


def channels_first(block: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[B,H,W]`` → float ``[B,1,H,W]``; ``[B,H,W,3]`` → ``[B,3,H,W]`` (values 0..255)."""
    x = as_tensor(block)
    return (x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)).float()


def pad_square(x: torch.Tensor) -> torch.Tensor:
    """``[B,C,H,W]`` → ``[B,C,S,S]``, S = max(H, W): black (0) borders, the image centred."""
    h, w = x.shape[-2:]
    if h == w:
        return x
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return F.pad(x, (left, side - w - left, top, side - h - top))


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
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Per image (population std, so a gray image and its 3-channel copy give the same values)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, correction=0).clamp_min(1e-6)
    return (x - mean) / std


def finish(x: torch.Tensor, how: str, mean: tuple[float, ...], std: tuple[float, ...], scale: float,
           channels_last: bool) -> torch.Tensor:
    """1- or 3-channel float ``x`` (pixel values × ``scale`` are in [0,1]) → normalized 3 channels."""
    if how == "zscore":
        out = zscore(x).expand(-1, 3, -1, -1)
    else:
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        out = torch.addcmul(-m / s, x, scale / s)  # (x·scale − mean) / std, broadcasting 1 → 3 channels
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class Preprocess:
    """uint8 block ``[B,H,W]``/``[B,H,W,3]`` (numpy, or a tensor on any device) → resized,
    normalized float ``[B,3,S,S]`` on the block's device (evaluation).

    Same result as ``normalize(resize(to_float3(block)))`` up to float rounding, in fewer
    passes: a gray image is resized and scaled once, never copied to 3 channels first.
    """

    def __init__(self, size: int, how: str, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, channels_last: bool = False):
        self.size, self.how, self.mean, self.std = size, how, tuple(mean), tuple(std)
        self.channels_last = channels_last

    def __call__(self, block: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = resize(pad_square(channels_first(block)), self.size)  # values 0..255
        return finish(x, self.how, self.mean, self.std, 1 / 255, self.channels_last)


class Augment:
    """Training input for a uint8 batch on any device: random resized crop (area fraction in
    [``min_scale``, 1], aspect 3/4–4/3, torchvision's RandomResizedCrop rule), optional
    horizontal flip, optional intensity jitter, normalize; all in one pass over the batch.

    The crop and resize is one ``roi_align`` (bilinear, averaging ⌈crop/size⌉² samples per
    output pixel when shrinking). Draws come from :func:`draws` of (seed, epoch, row).
    """

    def __init__(self, size: int, how: str, min_scale: float = 0.35, flip: bool = False, jitter: float = 0.0,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 seed: int = 0, channels_last: bool = False):
        self.size, self.how, self.min_scale, self.flip, self.jitter = size, how, min_scale, flip, jitter
        self.mean, self.std, self.seed, self.channels_last = tuple(mean), tuple(std), seed, channels_last

    def __call__(self, block: torch.Tensor, rows: np.ndarray | torch.Tensor, epoch: int) -> torch.Tensor:
        from torchvision.ops import roi_align

        x = pad_square(channels_first(block))  # 0..255, on the block's device
        h, w = x.shape[-2:]
        u = draws(self.seed, epoch, np.asarray(torch.as_tensor(rows).cpu()), DRAWS)  # rows: on the CPU
        boxes = crop_boxes(u, h, w, self.min_scale)
        index = np.arange(len(x), dtype=np.float64)[:, None]
        rois = torch.from_numpy(np.hstack([index, boxes])).to(x.device, x.dtype)
        x = roi_align(x, rois, output_size=(self.size, self.size), spatial_scale=1.0, sampling_ratio=-1,
                      aligned=True)
        if self.flip:
            flips = torch.from_numpy(u[:, FLIP] < 0.5).to(x.device).view(-1, 1, 1, 1)
            x = torch.where(flips, x.flip(-1), x)
        if self.jitter:
            x = jitter_intensity(x / 255, torch.from_numpy(u[:, JITTER] * 2 - 1).to(x.device, x.dtype),
                                 self.jitter) * 255
        return finish(x, self.how, self.mean, self.std, 1 / 255, self.channels_last)


# the uniform draws per image: 10 crop attempts × (area, log-aspect), top, left, flip, 3 jitter
CROP_TRIES = 10
TOP, LEFT, FLIP = 2 * CROP_TRIES, 2 * CROP_TRIES + 1, 2 * CROP_TRIES + 2
JITTER = slice(2 * CROP_TRIES + 3, 2 * CROP_TRIES + 6)
DRAWS = 2 * CROP_TRIES + 6


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def draws(seed: int, epoch: int, rows: np.ndarray, n: int) -> np.ndarray:
    """``n`` uniform draws in [0, 1) per row, float64 ``[len(rows), n]``: a pure function of
    (seed, epoch, row, j), computed for the whole batch at once (counter-based, SplitMix64)."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        key = _mix(_mix(np.array([seed], dtype=np.uint64) + golden) ^ np.uint64(epoch & (2**64 - 1)))
        base = _mix(np.asarray(rows, dtype=np.uint64) * golden ^ key)
        z = _mix(base[:, None] + (np.arange(1, n + 1, dtype=np.uint64) * golden)[None, :])
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def crop_boxes(u: np.ndarray, h: int, w: int, min_scale: float) -> np.ndarray:
    """``[B,4]`` float boxes (x1, y1, x2, y2) in pixels, torchvision's RandomResizedCrop rule
    vectorized: up to 10 tries of (area in [min_scale, 1] of the image, log-uniform aspect in
    [3/4, 4/3]); the first that fits wins; else the centred crop of the clamped aspect."""
    b = len(u)
    if min_scale >= 1.0:
        return np.tile(np.array([0.0, 0.0, w, h]), (b, 1))
    area = h * w * (min_scale + (1 - min_scale) * u[:, 0:2 * CROP_TRIES:2])
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    aspect = np.exp(log_lo + (log_hi - log_lo) * u[:, 1:2 * CROP_TRIES:2])
    cw = np.round(np.sqrt(area * aspect))
    ch = np.round(np.sqrt(area / aspect))
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = np.argmax(fits, axis=1)
    pick = np.arange(b)
    cw, ch, ok = cw[pick, first], ch[pick, first], fits[pick, first]
    fw, fh = _fallback(h, w)
    cw, ch = np.where(ok, cw, fw), np.where(ok, ch, fh)
    top = np.where(ok, np.floor(u[:, TOP] * (h - ch + 1)), (h - ch) // 2)
    left = np.where(ok, np.floor(u[:, LEFT] * (w - cw + 1)), (w - cw) // 2)
    return np.stack([left, top, left + cw, top + ch], axis=1)


def _fallback(h: int, w: int) -> tuple[float, float]:
    ratio = w / h
    if ratio < 3 / 4:
        return float(w), float(round(w / (3 / 4)))
    if ratio > 4 / 3:
        return float(round(h * 4 / 3)), float(h)
    return float(w), float(h)


def jitter_intensity(x: torch.Tensor, u: torch.Tensor, strength: float) -> torch.Tensor:
    """Per image of ``x`` [B,C,H,W] in [0,1], with its draws ``u`` [B,3] in [-1,1]: gamma in
    [e^-s, e^s], then contrast ×[1-s, 1+s] about the image mean and brightness ±s/2, clipped
    to [0,1]: the intensity changes of gray medical images (no hue). Gamma survives
    per-image z-scoring; contrast and brightness matter with ``imagenet``."""
    view = (-1, 1, 1, 1)
    x = x.clamp_min(0).pow(torch.exp(u[:, 0] * strength).view(view))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + u[:, 1] * strength).view(view) + mean + (u[:, 2] * strength / 2).view(view)
    return x.clamp(0, 1)


# -- reading ------------------------------------------------------------------------
@dataclass
class Item:
    """One read: the store row ranges ``[lo, hi)`` to read in order, and which rows of the
    concatenation to keep (``pick``, positions; None = all) with their store ``rows`` and
    ``targets``."""

    ranges: list[tuple[int, int]]
    rows: np.ndarray
    pick: np.ndarray | None = None
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.rows)


def batches(path: str, items: list[Item], batch: int, *, workers: int = 0, device: str = "cpu",
            limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(images uint8 [b,H,W(,3)] on device, rows int64 on the CPU, targets int64 on device)``:
    the kept rows of ``items``, in their order, ``batch`` at a time (the last batch shorter);
    at most ``limit`` batches (the items past them are not read).

    ``workers`` threads of this process read the items' chunks ahead (in reads of at most
    ``READ_BYTES``, each chunk once); a batch is gathered from them in one copy (into pinned
    memory for CUDA) and moved to the device without blocking. Nothing crosses a process
    boundary, so no shared memory (/dev/shm) is used, and the batches are the same whatever
    ``workers`` is. ``workers`` 0 reads in the calling thread, one item at a time.
    """
    spans = _spans([len(item) for item in items], batch, limit)
    if not spans:
        return
    with open_store(path, validate=False) as store, _Pools(workers) as pools:
        reader = _ItemReader(store, items, pools, workers)
        gathered: deque = deque()
        depth = 2 if workers else 1  # batches gathered ahead of the one handed out
        pin = device.startswith("cuda")
        for j in range(len(spans)):
            while len(gathered) < depth and j + len(gathered) < len(spans):
                nxt = spans[j + len(gathered)]
                reader.submit_through(nxt[-1][0])
                gathered.append(pools.gather.submit(_gather, [(reader.pending[k], items[k], a, b) for k, a, b in nxt],
                                                    pin))
            images, rows, targets = gathered.popleft().result()
            yield images.to(device, non_blocking=True), rows, targets.to(device, non_blocking=True)
            reader.release_before(spans[j + 1][0][0] if j + 1 < len(spans) else len(items))


def _spans(lengths: list[int], batch: int, limit: int | None) -> list[list[tuple[int, int, int]]]:
    """Per batch, its ``(item, start, stop)`` segments (positions in the item's kept rows)."""
    spans: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    room = batch
    for k, n in enumerate(lengths):
        start = 0
        while start < n:
            take = min(room, n - start)
            current.append((k, start, start + take))
            start, room = start + take, room - take
            if room == 0:
                spans.append(current)
                if limit is not None and len(spans) >= limit:
                    return spans
                current, room = [], batch
    if current:
        spans.append(current)
    return spans


def item_reads(item: Item, per_read: int) -> list[tuple[int, int]]:
    """The store row ranges read for ``item``: its ranges cut at multiples of ``per_read`` rows
    (a whole number of chunks), so no read exceeds ``per_read`` rows."""
    reads = []
    for lo, hi in item.ranges:
        start = lo
        while start < hi:
            stop = min(hi, (start // per_read + 1) * per_read)
            reads.append((start, stop))
            start = stop
    return reads


class _Pools:
    """The read threads and the gather thread (separate, so a gather waiting for its reads
    never holds a thread a read needs); none with ``workers`` 0: work runs at submit."""

    def __init__(self, workers: int):
        self.workers = workers

    def __enter__(self) -> "_Pools":
        if self.workers:
            from concurrent.futures import ThreadPoolExecutor

            self.read = ThreadPoolExecutor(self.workers, thread_name_prefix="ldpo-read")
            self.gather = ThreadPoolExecutor(1, thread_name_prefix="ldpo-gather")
        else:
            self.read = self.gather = _Inline()
        return self

    def __exit__(self, *exc) -> None:
        for pool in {id(self.read): self.read, id(self.gather): self.gather}.values():
            pool.shutdown(wait=True, cancel_futures=True)


class _Inline:
    """An executor that runs each call at once, in the calling thread."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # noqa: BLE001 - handed to the caller by result(), as a thread pool does
            future.set_exception(err)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


class _Pending:
    """An item's rows being read: ``result()`` waits for them (``[n,H,W(,3)]`` uint8, store order)."""

    def __init__(self, futures: list, buffer: np.ndarray | None, nbytes: int):
        self.futures, self.buffer, self.nbytes = futures, buffer, nbytes

    def result(self) -> np.ndarray:
        values = [f.result() for f in self.futures]
        return values[0] if self.buffer is None else self.buffer


class _ItemReader:
    """Submits item reads in order: every item a submitted batch needs, plus the next one, plus
    as many more as fit in ``2 × workers × READ_BYTES``; drops an item's rows after its last batch."""

    def __init__(self, store: Store, items: list[Item], pools: _Pools, workers: int):
        self.store, self.items, self.pools = store, items, pools
        self.row_shape = tuple(store.shape("images")[1:])
        row_bytes = int(np.prod(self.row_shape))
        chunk = _chunk_rows(store)
        self.per_read = max(chunk, READ_BYTES // max(row_bytes, 1) // chunk * chunk)
        self.row_bytes, self.budget = row_bytes, 2 * workers * READ_BYTES
        self.pending: dict[int, _Pending] = {}
        self.next = 0
        self.ahead = workers > 0

    def submit_through(self, k: int) -> None:
        last = k + 1 if self.ahead else k
        while self.next < len(self.items) and (self.next <= last or self._held() + self._bytes(self.next)
                                                <= self.budget):
            self.pending[self.next] = self._submit(self.items[self.next])
            self.next += 1

    def release_before(self, k: int) -> None:
        for done in [j for j in self.pending if j < k]:
            del self.pending[done]

    def _held(self) -> int:
        return sum(p.nbytes for p in self.pending.values())

    def _bytes(self, k: int) -> int:
        return sum(hi - lo for lo, hi in self.items[k].ranges) * self.row_bytes

    def _submit(self, item: Item) -> _Pending:
        reads = item_reads(item, self.per_read)
        nbytes = sum(hi - lo for lo, hi in reads) * self.row_bytes
        if len(reads) == 1:
            return _Pending([self.pools.read.submit(self.store.read, "images", *reads[0])], None, nbytes)
        buffer = np.empty((sum(hi - lo for lo, hi in reads), *self.row_shape), dtype=np.uint8)
        futures, at = [], 0
        for lo, hi in reads:
            futures.append(self.pools.read.submit(_read_into, self.store, lo, hi, buffer[at:at + hi - lo]))
            at += hi - lo
        return _Pending(futures, buffer, nbytes)


def _read_into(store: Store, lo: int, hi: int, out: np.ndarray) -> None:
    out[...] = store.read("images", lo, hi)


def _gather(segments: list[tuple[_Pending, Item, int, int]], pin: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch from its items' rows: the images copied once (into pinned memory with ``pin``)."""
    n = sum(b - a for _, _, a, b in segments)
    first = segments[0][0].result()
    images = torch.empty((n, *first.shape[1:]), dtype=torch.uint8, pin_memory=pin)
    rows, targets, at = [], [], 0
    for pending, item, a, b in segments:
        block = torch.from_numpy(pending.result())
        if item.pick is None:
            images[at:at + b - a] = block[a:b]
        else:
            torch.index_select(block, 0, torch.from_numpy(item.pick[a:b]), out=images[at:at + b - a])
        rows.append(item.rows[a:b])
        targets.append(item.targets[a:b] if len(item.targets) else np.zeros(b - a, np.int64))
        at += b - a
    return images, torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(targets))


def chunk_rows(path: str) -> int:
    """Rows per chunk of the store's ``images`` (1 for stores written one image per chunk)."""
    with open_store(path, validate=False) as store:
        return _chunk_rows(store)


def _chunk_rows(store: Store) -> int:
    chunks = getattr(store.array("images"), "chunks", None)
    return int(chunks[0]) if chunks else 1


def read_rows(path: str, batch: int) -> int:
    """Rows per read: a whole number of chunks, at least one batch, about READ_BYTES when
    images are small (fewer, larger reads)."""
    with open_store(path, validate=False) as store:
        row_bytes, chunk = int(np.prod(store.shape("images")[1:])), _chunk_rows(store)
    rows = max(batch, READ_BYTES // max(row_bytes, 1))
    return -(-rows // chunk) * chunk


def range_items(lo: int, hi: int, per_item: int) -> list[Item]:
    """Rows ``[lo, hi)`` in items of ``per_item`` contiguous rows, aligned to multiples of it."""
    items, start = [], lo
    while start < hi:
        stop = min(hi, (start // per_item + 1) * per_item)
        items.append(Item([(start, stop)], np.arange(start, stop, dtype=np.int64)))
        start = stop
    return items


def subset_items(rows: np.ndarray, targets: np.ndarray, per_item: int, chunk: int) -> list[Item]:
    """Store ``rows`` (any order) with their targets, read in store order: the chunks that
    hold them, about ``per_item`` rows of chunks per item."""
    rows = np.asarray(rows, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    rows, targets = rows[order], targets[order]
    chunk_of = rows // chunk
    chunks = np.unique(chunk_of)
    per = max(1, per_item // chunk)
    items = []
    for group in np.array_split(chunks, -(-len(chunks) // per)) if len(chunks) else []:
        mine = np.flatnonzero(np.isin(chunk_of, group))
        items.append(_item_for(group, chunk, rows[mine], targets[mine]))
    return items


def _item_for(chunks: np.ndarray, chunk: int, rows: np.ndarray, targets: np.ndarray) -> Item:
    """The item reading ``chunks`` (merged into contiguous ranges) and keeping ``rows``, in the given order."""
    chunks = np.unique(chunks)
    breaks = np.flatnonzero(np.diff(chunks) != 1) + 1
    runs = np.split(chunks, breaks)
    starts = np.array([r[0] * chunk for r in runs], dtype=np.int64)
    ranges = [(int(r[0] * chunk), int((r[-1] + 1) * chunk)) for r in runs]
    ranges[-1] = (ranges[-1][0], max(ranges[-1][0], min(ranges[-1][1], int(rows.max()) + 1 if len(rows) else 0)))
    offsets = np.concatenate([[0], np.cumsum([hi - lo for lo, hi in ranges])[:-1]]).astype(np.int64)
    run = np.searchsorted(starts, rows, side="right") - 1
    pick = offsets[run] + rows - starts[run]
    return Item(ranges, rows, pick, targets)


def epoch_order(targets: np.ndarray, seed: int, epoch: int, balanced: bool = False) -> np.ndarray:
    """Positions into ``targets`` for one epoch, a function of (seed, epoch): a shuffle, or
    with ``balanced`` DeepCluster's UnifLabelSampler (every non-empty class drawn about N/K times)."""
    rng = np.random.default_rng([seed, epoch])
    n = len(targets)
    if not balanced:
        return rng.permutation(n)
    classes = np.unique(targets)
    per_class = n // len(classes) + 1
    picks = [rng.choice(members, per_class, replace=len(members) < per_class)
             for members in (np.flatnonzero(targets == c) for c in classes)]
    return rng.permutation(np.concatenate(picks))[:n]


@dataclass
class EpochPlan:
    """This process's items for one epoch, and the batches every process takes (the same count)."""

    items: list[Item]
    batches: int
    images: int


def epoch_items(rows: np.ndarray, targets: np.ndarray, *, seed: int, epoch: int, chunk: int, row_bytes: int,
                batch: int, balanced: bool = False, rank: int = 0, world: int = 1,
                window_bytes: int = WINDOW_BYTES) -> EpochPlan:
    """The epoch's training reads for process ``rank`` of ``world`` (see the module docstring).

    Windows are dealt to processes in turn (each process reads its own chunks); with fewer
    windows than processes, every process reads every window and keeps every world-th
    image. Every process runs the same number of batches: full batches of the smallest
    share (one shorter batch when a share is at most one batch), as DistributedSampler
    with drop_last does.
    """
    rows = np.asarray(rows, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    order = epoch_order(targets, seed, epoch, balanced)
    chunk_of = rows[order] // chunk
    chunks = np.unique(chunk_of)
    per_window = max(1, window_bytes // max(row_bytes * chunk, 1))
    per_window = min(per_window, max(1, -(-len(chunks) // world)))
    window_of_chunk = np.empty(int(chunks.max()) + 1 if len(chunks) else 0, dtype=np.int64)
    dealt = np.random.default_rng([seed, epoch, 1]).permutation(chunks)
    window_of_chunk[dealt] = np.arange(len(dealt)) // per_window
    window = window_of_chunk[chunk_of]
    grouped = order[np.argsort(window, kind="stable")]
    bounds = np.flatnonzero(np.diff(np.sort(window, kind="stable"))) + 1
    windows = np.split(grouped, bounds) if len(grouped) else []
    if len(windows) >= world:
        mine = windows[rank::world]
        shares = [sum(len(w) for w in windows[r::world]) for r in range(world)]
    else:
        mine = [w[rank::world] for w in windows]
        shares = [sum(len(w[r::world]) for w in windows) for r in range(world)]
    items = [_item_for(rows[w] // chunk, chunk, rows[w], targets[w]) for w in mine if len(w)]
    smallest = min(shares)
    batches = smallest // batch if smallest > batch else 1
    return EpochPlan(items, batches, min(shares[rank], batches * batch))


# -- patches (encode --method patches) ----------------------------------------------
def patch_grid(grids: Iterable[tuple[float, int]]) -> np.ndarray:
    """Square patch boxes as fractions of the (square) image side, ``[P,4]`` float64 (x1, y1, x2, y2):
    for each ``(scale, n)`` an ``n × n`` grid of patches of side ``scale``, evenly spaced from
    edge to edge (one centred patch when ``n`` is 1), scale by scale, row by row."""
    boxes = []
    for scale, n in grids:
        starts = np.linspace(0.0, 1.0 - scale, n) if n > 1 else np.array([(1.0 - scale) / 2])
        for top in starts:
            for left in starts:
                boxes.append((left, top, left + scale, top + scale))
    return np.asarray(boxes, dtype=np.float64)


def crop_patches(block: np.ndarray | torch.Tensor, boxes: np.ndarray, size: int, how: str,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """Every patch of ``boxes`` (fractions of the side, :func:`patch_grid`) of every image of a uint8
    block, as network input ``[B·P,3,size,size]`` on the block's device, image by image (patch p of
    image b at row b·P + p): the image padded square (:func:`pad_square`), then one ``roi_align``
    crop-and-resize for the whole batch (bilinear, averaging when shrinking, as :class:`Augment`),
    then normalized per patch like a whole image (:func:`finish`)."""
    from torchvision.ops import roi_align

    x = pad_square(channels_first(block))  # 0..255
    b, side = len(x), x.shape[-1]
    pixels = torch.as_tensor(boxes, dtype=x.dtype, device=x.device) * side  # [P,4]
    index = torch.arange(b, dtype=x.dtype, device=x.device).repeat_interleave(len(boxes)).unsqueeze(1)
    rois = torch.cat([index, pixels.repeat(b, 1)], dim=1)
    x = roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return finish(x, how, tuple(mean), tuple(std), 1 / 255, False)
