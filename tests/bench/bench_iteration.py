"""Benchmark one full LDPO iteration on a synthetic archive, stage by stage, against bare PyTorch.

    python tests/bench/bench_iteration.py --n 2000 --size 64 --arch resnet18 --input-size 64 --epochs 1 --k 20 --device cpu
    python tests/bench/bench_iteration.py --n 216000 --size 256 --arch alexnet --layer fc7 --input-size 224 --device cuda --amp --workers 8

The archive comes from ``toy-data archive`` (``--n``, ``--size``, ``--classes``) unless
``--store`` names an images store. Then one iteration runs in this process through
``ldpo.stages.run``, as the loop's iteration t >= 1 does:

1. ``finetune`` from random init on the previous labels for ``--epochs`` epochs (``--split
   none``: every image trains, so the training loop is all there is to time);
2. ``featurize`` the archive with the fine-tuned checkpoint (``--layer``, float32 features);
3. ``cluster``: PCA to ``--pca`` dimensions, L2, k-means with ``--k`` clusters;
4. ``converge``: the new labels against the previous ones.

The previous labels are the archive's truth (standing in for iteration 0's clustering),
or with ``--prev cluster`` (the default when the store has no truth CSV beside it) a first
featurize + cluster from random init, made before the timed iteration.

Per stage it prints the wall time and images/s, peak host RSS and peak device memory. For
``finetune`` and ``featurize`` it also times, in this process just before and just after
the stage (the mean of the two: the load of a shared machine drifts), the same network
on random input already on the device, with the stage's batch size, input size and
``--amp``: a bare training step (forward, cross-entropy, backward, SGD step;
PyTorch defaults, no deterministic mode) and a bare ``model(x)`` forward in inference
mode, each for at least ``--bare-seconds`` after a warm-up step. The ratio is the stage's
loop rate over the bare rate: finetune's training loop is the sum of its per-epoch
``seconds`` in metrics.json; featurize's loop is the rate it logs (else its wall time).
The stage-wall ratios (model building, checkpoint writing included) are printed beside.

Peak host RSS per stage: this process's VmHWM, reset before each stage by writing 5 to
/proc/self/clear_refs, or the sampled peak (every 20 ms) of this process's VmRSS plus its
child processes' (DataLoader workers), whichever is larger. Peak device memory is
``torch.cuda.max_memory_allocated`` (reset before each stage), "n/a" on the CPU.

The last line is exactly ``ratios: featurize=X.XX finetune=Y.YY``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sampler import Sampler  # noqa: E402 - the benches' background sampling, shared

ROOT = Path(__file__).resolve().parents[2]


# -- measuring ---------------------------------------------------------------------------

def _status_kib(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    """Descendant process ids (DataLoader workers and theirs)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


class PeakMemory(Sampler):
    """Peak host RSS (MiB) and device memory (MiB or None) of a block."""

    def __init__(self, device: str, interval: float = 0.02):
        super().__init__(interval)
        self.device = device
        self.sampled_kib = 0
        self.rss_mib = 0.0
        self.device_mib: float | None = None

    def sample(self) -> None:
        pid = os.getpid()
        total = _status_kib(pid, "VmRSS") + sum(_status_kib(c, "VmRSS") for c in _children(pid))
        self.sampled_kib = max(self.sampled_kib, total)

    def __enter__(self) -> "PeakMemory":
        import torch

        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        import torch

        super().__exit__(*exc)
        self.rss_mib = max(_status_kib("self", "VmHWM"), self.sampled_kib) / 1024
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.device_mib = torch.cuda.max_memory_allocated() / 2**20

    def text(self) -> str:
        dev = "n/a" if self.device_mib is None else f"{self.device_mib:.0f} MiB"
        return f"peak RSS {self.rss_mib:.0f} MiB, peak device {dev}"


@dataclass
class StageRun:
    name: str
    seconds: float
    stdout: str
    stderr: str
    code: int
    memory: PeakMemory
    extra: dict = field(default_factory=dict)


def run_stage(argv: list[str], device: str, verbose: bool, ok=(0,)) -> StageRun:
    """``ldpo ARGV`` in this process: its wall time, captured output and peak memory."""
    from ldpo.stages import run

    out, err = io.StringIO(), io.StringIO()
    with PeakMemory(device) as memory, contextlib.redirect_stdout(out), \
            (contextlib.nullcontext() if verbose else contextlib.redirect_stderr(err)):
        start = time.perf_counter()
        code = run(argv)
        seconds = time.perf_counter() - start
    if code not in ok:
        sys.stderr.write(err.getvalue()[-4000:])
        raise SystemExit(f"bench_iteration: `ldpo {' '.join(argv)}` exited {code}")
    return StageRun(argv[0], seconds, out.getvalue(), err.getvalue(), code, memory)


def timed_loop(step, device: str, min_seconds: float, min_steps: int = 3) -> tuple[int, float]:
    """Run ``step()`` once to warm up, then until both ``min_steps`` and ``min_seconds``: (steps, seconds)."""
    import torch

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    sync()
    steps, start = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < min_seconds:
        step()
        steps += 1
        if steps % 5 == 0 or steps < min_steps:
            sync()
    sync()
    return steps, time.perf_counter() - start


def amp_context(device: str, amp: bool):
    import torch

    return torch.autocast(device_type=device, dtype=torch.bfloat16 if device == "cpu" else torch.float16,
                          enabled=amp)


def bare_forward(checkpoint: Path, batch: int, device: str, amp: bool, seconds: float) -> float:
    """Images/s of ``model(x)`` of the checkpoint's network, inference mode, random input on the device."""
    import torch

    from ldpo.common.nets import models

    torch.use_deterministic_algorithms(False)
    built = models.build(models.parse_init(f"checkpoint:{checkpoint}"))
    model = built.model.eval().to(device)
    x = torch.randn(batch, 3, built.input_size, built.input_size, device=device)

    def step():
        with torch.inference_mode(), amp_context(device, amp):
            model(x)

    steps, took = timed_loop(step, device, seconds)
    return steps * batch / took


def bare_train_step(arch: str, classes: int, input_size: int, batch: int, device: str, amp: bool,
                    seconds: float) -> float:
    """Images/s of forward + cross-entropy + backward + SGD step on random input on the device."""
    import torch
    import torch.nn.functional as F

    from ldpo.common.nets import models

    torch.use_deterministic_algorithms(False)
    built = models.build(models.Init("random"), arch, classes, seed=0, input_size=input_size)
    model = built.model.train().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device, enabled=amp and device == "cuda")
    x = torch.randn(batch, 3, input_size, input_size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)

    def step():
        with amp_context(device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    steps, took = timed_loop(step, device, seconds)
    return steps * batch / took


# -- the iteration -----------------------------------------------------------------------

def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_iteration: --device cuda: no CUDA device is visible")
    return name


def make_archive(args, work: Path) -> tuple[Path, Path | None]:
    store = work / "archive.zarr"
    argv = ["toy-data", "archive", "--n", str(args.n), "--size", str(args.size), "--classes", str(args.classes),
            "--out", str(store), "--seed", str(args.seed), "--workers", str(args.workers), "--no-progress"]
    if args.chunk_rows is not None:
        argv += ["--chunk-rows", str(args.chunk_rows)]
    made = run_stage(argv, "cpu", args.verbose)
    print(f"archive   : {args.n} images of {args.size} px, {args.classes} classes: {made.seconds:.1f} s "
          f"({args.n / made.seconds:.0f} images/s)  [ldpo {' '.join(argv)}]")
    return store, Path(f"{store}.truth.csv")


def common(args, device: str) -> list[str]:
    return ["--device", device, "--workers", str(args.workers), "--seed", str(args.seed), "--no-progress"]


def first_labels(args, store: Path, work: Path, device: str) -> Path:
    """Iteration 0 (untimed): featurize from random init and cluster, for --prev cluster."""
    feats, labels = work / "features-0.h5", work / "labels-0.csv"
    size = ["--input-size", str(args.input_size)] if args.input_size else []
    run_stage(["featurize", str(store), "--out", str(feats), "--init", "random", "--arch", args.arch,
               "--batch-size", str(args.batch_size), *size, *common(args, device)], device, args.verbose)
    run_stage(["cluster", str(feats), "--out", str(labels), "--k", str(args.k), "--pca", str(args.pca),
               *common(args, device)], device, args.verbose)
    feats.unlink()
    return labels


def loop_rate(text: str) -> float | None:
    """The rate featurize logs for its extraction loop (``(123.4 img/s)``), if it does."""
    found = re.findall(r"\(([\d.]+) img/s\)", text)
    return float(found[-1]) if found else None


def finetune(args, store: Path, prev: Path, work: Path, device: str) -> StageRun:
    model = work / "model.pt"
    size = ["--input-size", str(args.input_size)] if args.input_size else []
    argv = ["finetune", str(store), str(prev), "--out", str(model), "--init", "random", "--arch", args.arch,
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--split", "none", "--new-head",
            *size, *(["--amp"] if args.amp else []), *common(args, device)]
    done = run_stage(argv, device, args.verbose)
    metrics = json.loads((work / "model.metrics.json").read_text())
    per_epoch = args.n // args.batch_size * args.batch_size if args.n > args.batch_size else args.n
    loop_seconds = sum(e["seconds"] for e in metrics["epochs"])
    done.extra.update(images=per_epoch * args.epochs, loop_rate=per_epoch * args.epochs / loop_seconds,
                      argv=argv)
    return done


def featurize(args, store: Path, work: Path, device: str) -> StageRun:
    argv = ["featurize", str(store), "--out", str(work / "features.h5"), "--init", f"checkpoint:{work / 'model.pt'}",
            "--batch-size", str(args.batch_size), *(["--layer", args.layer] if args.layer else []),
            *(["--amp"] if args.amp else []), *common(args, device)]
    done = run_stage(argv, device, args.verbose)
    rate = loop_rate(done.stderr)
    done.extra.update(argv=argv, loop_rate=rate or args.n / done.seconds, logged=rate is not None)
    return done


def cluster(args, work: Path, device: str) -> StageRun:
    argv = ["cluster", str(work / "features.h5"), "--out", str(work / "labels.csv"), "--k", str(args.k),
            "--pca", str(args.pca), *common(args, device)]
    done = run_stage(argv, device, args.verbose)
    done.extra.update(argv=argv)
    return done


def converge(args, prev: Path, truth: Path | None, work: Path, device: str) -> StageRun:
    argv = ["converge", str(work / "labels.csv"), "--prev", str(prev),
            *(["--truth", str(truth)] if truth else []), "--no-progress"]
    done = run_stage(argv, device, args.verbose, ok=(0, 1))
    done.extra.update(argv=argv)
    return done


def features_shape(path: Path) -> tuple[int, int]:
    from ldpo.common.files.stores import open_store

    with open_store(path) as store:
        return store.shape("features")


# -- main --------------------------------------------------------------------------------

def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="archive images (default 2000)")
    parser.add_argument("--size", type=int, default=64, help="archive image side in px (default 64)")
    parser.add_argument("--classes", type=int, default=None, help="archive generator classes (default: --k)")
    parser.add_argument("--arch", default="resnet18", help="network (default resnet18): alexnet, resnet50, ...")
    parser.add_argument("--layer", default=None, help="featurize layer (default: the architecture's, e.g. avgpool)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=1, help="finetune epochs (default 1)")
    parser.add_argument("--k", type=int, default=20, help="k-means clusters (default 20)")
    parser.add_argument("--pca", type=int, default=256, help="cluster's PCA dimensions (default 256; 0 = none)")
    parser.add_argument("--input-size", type=int, default=None, help="network input px (default: the stages')")
    parser.add_argument("--batch-size", type=int, default=64, help="finetune and featurize batch (default 64)")
    parser.add_argument("--workers", type=int, default=0, help="stages' --workers (default 0)")
    parser.add_argument("--amp", action="store_true", help="mixed precision in the stages and the bare loops")
    parser.add_argument("--store", default=None, help="an existing images store instead of a new archive")
    parser.add_argument("--prev", choices=["truth", "cluster"], default=None,
                        help="previous labels: the archive's truth (default when it has one) or a first clustering")
    parser.add_argument("--chunk-rows", type=int, default=None, help="toy-data archive --chunk-rows")
    parser.add_argument("--bare-seconds", type=float, default=5.0, help="least time per bare loop (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="keep the files here (default: a temporary folder, removed)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the stages' logs")
    args = parser.parse_args(argv)
    for name in ("n", "size", "epochs", "k", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers < 0 or args.pca < 0:
        parser.error("--workers and --pca must be at least 0")
    args.classes = args.classes or args.k
    return args


def store_truth(store: Path) -> Path | None:
    truth = Path(f"{store}.truth.csv")
    return truth if truth.exists() else None


def line(name: str, done: StageRun, text: str) -> None:
    print(f"{name:<10}: {done.seconds:7.1f} s  {text} | {done.memory.text()}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    device = resolve_device(args.device)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-iteration-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        where = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} threads"
        print(f"device {device} ({where}), {args.arch}{' ' + args.layer if args.layer else ''}, batch "
              f"{args.batch_size}, workers {args.workers}{', amp' if args.amp else ''}")
        if args.store:
            store, truth = Path(args.store), store_truth(Path(args.store))
            from ldpo.common.files.stores import open_store

            with open_store(store, expect="images") as images:
                args.n, args.size = len(images), max(images.shape("images")[1:3])
        else:
            store, truth = make_archive(args, work)
        how = args.prev or ("truth" if truth else "cluster")
        if how == "truth" and not truth:
            raise SystemExit(f"bench_iteration: --prev truth: {store} has no {store}.truth.csv beside it")
        prev = truth if how == "truth" else first_labels(args, store, work, device)
        print(f"previous labels: {'the archive truth' if how == 'truth' else 'a first clustering'} ({prev})")
        return iteration(args, store, prev, truth, work, device)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def iteration(args, store: Path, prev: Path, truth: Path | None, work: Path, device: str) -> int:
    from ldpo.common.nets import models
    from ldpo.common.files.labels import read_labels

    classes = len(read_labels(prev).classes)
    input_size = models.build(models.Init("random"), args.arch, classes, input_size=args.input_size,
                              store_side=args.size).input_size

    def train_rate() -> float:
        return bare_train_step(args.arch, classes, input_size, args.batch_size, device, args.amp, args.bare_seconds)

    train_before = train_rate()
    tuned = finetune(args, store, prev, work, device)
    train_after = train_rate()
    bare_train = (train_before + train_after) / 2
    ft_ratio = tuned.extra["loop_rate"] / bare_train
    stage_rate = tuned.extra["images"] / tuned.seconds
    line("finetune", tuned, f"{stage_rate:8.1f} img/s (training loop {tuned.extra['loop_rate']:.1f}) | bare train "
         f"step {bare_train:.1f} img/s (before {train_before:.1f}, after {train_after:.1f}): ratio {ft_ratio:.2f} "
         f"(stage wall {stage_rate / bare_train:.2f})")

    def forward_rate() -> float:
        return bare_forward(work / "model.pt", args.batch_size, device, args.amp, args.bare_seconds)

    forward_before = forward_rate()
    feats = featurize(args, store, work, device)
    forward_after = forward_rate()
    bare_fwd = (forward_before + forward_after) / 2
    fz_ratio = feats.extra["loop_rate"] / bare_fwd
    stage_rate, loop = args.n / feats.seconds, "logged loop" if feats.extra["logged"] else "wall"
    line("featurize", feats, f"{stage_rate:8.1f} img/s ({loop} {feats.extra['loop_rate']:.1f}) | bare model(x) "
         f"{bare_fwd:.1f} img/s (before {forward_before:.1f}, after {forward_after:.1f}): ratio {fz_ratio:.2f} "
         f"(stage wall {stage_rate / bare_fwd:.2f})")
    n, d = features_shape(work / "features.h5")
    clustered = cluster(args, work, device)
    line("cluster", clustered, f"{n / clustered.seconds:8.1f} img/s ({n} x {d} features, PCA {args.pca or 'none'}, "
         f"k={args.k})")
    verdict = converge(args, prev, truth, work, device)
    line("converge", verdict, verdict.stdout.strip().splitlines()[0] if verdict.stdout.strip() else "")
    total = tuned.seconds + feats.seconds + clustered.seconds + verdict.seconds
    print(f"iteration : {total:7.1f} s wall ({args.n} images: finetune {args.epochs} epoch(s) at {input_size} px + "
          f"featurize + cluster + converge; bare loops not counted)")
    for done in (tuned, feats, clustered, verdict):
        print(f"  ldpo {' '.join(done.extra['argv'])}")
    print(f"ratios: featurize={fz_ratio:.2f} finetune={ft_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
