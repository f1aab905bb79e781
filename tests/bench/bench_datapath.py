"""Time the data path alone: an images store → device-ready uint8 batches, no model.

    python tests/bench/bench_datapath.py                       # 8,000 images of 256 px, 64 MiB windows, 2 workers
    python tests/bench/bench_datapath.py --store A.zarr --device cuda --workers 8 --batch 256
    git show main:common/images/imagedata.py > /tmp/old_imagedata.py
    python tests/bench/bench_datapath.py --baseline /tmp/old_imagedata.py   # before and after, interleaved

Two orders over the same store, the same ``--workers`` and batch size, through
``common/images/imagedata.py`` as the stages use it:

* ``featurize``: every row in store order (``inference.store_items``: reads of about
  ``READ_BYTES``), as featurize and assign read;
* ``finetune``: one training epoch's order (``epoch_items``: the chunks dealt at random into
  windows of ``--window-mib``, each window's images shuffled), as finetune reads.

The store must hold at least 4 windows (else the epoch order is mostly the one window's
shuffle). The archive comes from ``toy-data archive`` (``--n``, ``--size``) unless
``--store`` names one. A batch counts when it is on ``--device`` (CUDA: synchronized at the
end). Each order runs ``--repeats`` times, the orders (and with ``--baseline`` the two
modules) interleaved, and the best rate is kept: the load of a shared machine only slows.
The peak use of /dev/shm above its level at the start is sampled every 10 ms in each run.

``--baseline FILE`` times another ``imagedata.py`` too (e.g. main's), in the same process
and rounds; a module without ``batches`` is run through its DataLoader API (``loader``,
``on_device``, ``rebatch``). The last line is exactly ``datapath: featurize=X finetune=Y``
(images/s of this tree's data path).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sampler import Sampler  # noqa: E402 - the benches' background sampling, shared


def load_module(path: str):
    spec = importlib.util.spec_from_file_location(f"imagedata_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def stream(mod, path: str, items: list, batch: int, workers: int, device: str, limit: int | None):
    if hasattr(mod, "batches"):
        return mod.batches(path, items, batch, workers=workers, device=device, limit=limit)
    return mod.rebatch(mod.on_device(mod.loader(path, items, workers, device), device), batch, limit)


class ShmPeak(Sampler):
    """Peak bytes of /dev/shm in use above the level at entry, sampled every 10 ms."""

    def __init__(self, folder: str = "/dev/shm"):
        super().__init__(0.01)
        self.folder, self.peak = folder, 0

    def _used(self) -> int:
        try:
            return shutil.disk_usage(self.folder).used
        except OSError:
            return 0

    def sample(self) -> None:
        self.peak = max(self.peak, self._used() - self.base)

    def __enter__(self) -> "ShmPeak":
        self.base = self._used()
        return super().__enter__()


def timed(mod, path: str, items: list, args, limit: int | None) -> tuple[float, int]:
    """(images/s, peak /dev/shm bytes) of one pass."""
    import torch

    count = 0
    with ShmPeak() as shm:
        start = time.perf_counter()
        for images, _, _ in stream(mod, path, items, args.batch, args.workers, args.device, limit):
            count += len(images)
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return count / seconds, shm.peak


def orders(mod, path: str, args) -> dict[str, tuple[list, int | None]]:
    """The two orders' items (and batch limit) as the stages plan them, with ``mod``'s planners."""
    from ldpo.common.files.stores import open_store

    with open_store(path, validate=False) as store:
        shape = store.shape("images")
        chunk = int(getattr(store.array("images"), "chunks", (1,))[0] or 1)
    n, row_bytes = shape[0], int(np.prod(shape[1:]))
    per_read = mod.read_rows(path, args.batch)
    plan = mod.epoch_items(np.arange(n), np.arange(n) % 20, seed=args.seed, epoch=0, chunk=chunk,
                           row_bytes=row_bytes, batch=args.batch, window_bytes=int(args.window_mib * 2**20))
    return {"featurize": (mod.range_items(0, n, per_read), None), "finetune": (plan.items, plan.batches)}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=None, help="an images store (default: a new toy-data archive)")
    parser.add_argument("--n", type=int, default=8000, help="archive images (default 8000)")
    parser.add_argument("--size", type=int, default=256, help="archive image side in px (default 256)")
    parser.add_argument("--window-mib", type=float, default=64, help="training window, MiB (finetune --shuffle-window; "
                        "default 64: 8 windows in the default archive)")
    parser.add_argument("--workers", type=int, default=2, help="the stages' --workers (default 2)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64, the stages')")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3, help="passes per order (default 3; the best is kept)")
    parser.add_argument("--baseline", default=None, help="another imagedata.py to time beside this tree's")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from ldpo.common.images import imagedata
    from ldpo.common.files.stores import open_store

    modules = {"this tree": imagedata}
    if args.baseline:
        modules = {"baseline": load_module(args.baseline), **modules}
    with tempfile.TemporaryDirectory(prefix="bench-datapath-") as tmp:
        path = args.store
        if path is None:
            path = str(Path(tmp) / "archive.zarr")
            from ldpo.stages import run

            if run(["toy-data", "archive", "--n", str(args.n), "--size", str(args.size), "--out", path, "--workers",
                    str(max(args.workers, 1)), "-q"]) != 0:
                return 1
        with open_store(path, validate=False) as store:
            shape = store.shape("images")
        store_bytes = int(np.prod(shape))
        windows = store_bytes / (args.window_mib * 2**20)
        if windows < 4:
            print(f"{path}: {store_bytes / 2**20:.0f} MiB of images is {windows:.1f} windows of {args.window_mib} MiB; "
                  "the bench needs at least 4 (a larger --n or a smaller --window-mib)", file=sys.stderr)
            return 2
        print(f"store {path}: {shape[0]} images {shape[1:]}, {store_bytes / 2**20:.0f} MiB, {windows:.1f} windows of "
              f"{args.window_mib} MiB; workers {args.workers}, batch {args.batch}, device {args.device}", flush=True)
        plans = {name: orders(mod, path, args) for name, mod in modules.items()}
        best: dict[tuple[str, str], float] = {}
        shm: dict[tuple[str, str], int] = {}
        for rep in range(args.repeats):
            for order in ("featurize", "finetune"):
                for name, mod in modules.items():
                    items, limit = plans[name][order]
                    rate, peak = timed(mod, path, items, args, limit)
                    key = (name, order)
                    best[key] = max(best.get(key, 0.0), rate)
                    shm[key] = max(shm.get(key, 0), peak)
                    print(f"  pass {rep + 1} {name:9s} {order:9s} {rate:8.0f} images/s, /dev/shm peak "
                          f"{peak / 2**20:.1f} MiB", flush=True)
        for name in modules:
            f, t = best[(name, "featurize")], best[(name, "finetune")]
            print(f"{name}: featurize {f:.0f} images/s, finetune {t:.0f} images/s, finetune/featurize {t / f:.2f}; "
                  f"/dev/shm peak {max(shm[(name, 'featurize')], shm[(name, 'finetune')]) / 2**20:.1f} MiB")
    print(f"datapath: featurize={best[('this tree', 'featurize')]:.0f} finetune={best[('this tree', 'finetune')]:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
