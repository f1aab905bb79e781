"""Is finetune slow or stuck? One probe of the training loop against its parts, for tests/bench/device_check.sh.

    python tests/bench/stall_probe.py --store A.zarr --out probe/ --device cuda --amp --arch alexnet \\
        --input-size 224 --batch-size 256 --workers 8

On one images store (``--store``, e.g. ``toy-data archive --n 20000 --size 256``), in this process:

1. every thread's stack written to ``OUT/stacks.txt`` every ``--stack-every`` seconds
   (``faulthandler.dump_traceback_later``, repeating), so a stall shows where it waits;
2. the data path alone: one epoch's batches (finetune's order, ``--workers`` reader threads)
   onto the device, no model (images/s);
3. the bare training step (forward, cross-entropy, backward, SGD; random input on the
   device) twice: as PyTorch runs it by default, and under
   ``torch.use_deterministic_algorithms(True, warn_only=True)`` as ``finetune`` runs it; and
   the bare forward in inference mode (images/s);
4. ``finetune`` (``--split none``, ``--epochs``) through ``ldpo.stages.run``, with a
   ``torch.profiler`` table of ``--profile-steps`` training steps (after 5 steps' wait and
   2 of warm-up) in ``OUT/profile.txt`` (and its trace in ``OUT/trace.json``); the time of
   every optimizer step is kept, so the steady rate after the profiled steps is known.

``OUT/summary.json`` holds every figure, with the ratios of the targets table in
docs/performance.md: finetune's loop / bare training step, data path / bare training step.
The last line is exactly ``probe: datapath=A bare_train=B bare_train_deterministic=C
finetune_loop=D finetune_steady=E`` (images/s).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_iteration import amp_context, timed_loop  # noqa: E402 - the bench's bare loops, shared


def datapath_rate(args, labels: Path) -> float:
    """Images/s of one epoch's batches onto the device, finetune's order and reading, no model."""
    import numpy as np
    import torch

    from ldpo.common.images import imagedata
    from ldpo.common.files.labels import align, read_labels
    from ldpo.common.files.stores import open_store

    with open_store(args.store, expect="images") as store:
        ids, shape = store.ids, store.shape("images")
    per_row = align(read_labels(labels), ids, args.store)
    rows = np.flatnonzero(per_row >= 0)
    plan = imagedata.epoch_items(rows, per_row[rows], seed=0, epoch=0, chunk=imagedata.chunk_rows(args.store),
                                 row_bytes=int(np.prod(shape[1:])), batch=args.batch_size)
    count, start = 0, time.perf_counter()
    for x, _, _ in imagedata.batches(args.store, plan.items, args.batch_size, workers=args.workers,
                                     device=args.device, limit=plan.batches):
        count += len(x)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def bare_rates(args, classes: int) -> dict[str, float]:
    """The bare training step (default and deterministic) and the bare forward, images/s."""
    import torch
    import torch.nn.functional as F

    from ldpo.common.nets import models
    from ldpo.common.images.accel import autocast, tune

    built = models.build(models.Init("random"), args.arch, classes, seed=0, input_size=args.input_size)
    model = built.model.to(args.device)
    channels_last = tune(model, args.device, args.amp)
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=args.device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (args.batch_size,), device=args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def train():
        with autocast(args.device, args.amp):  # as finetune --amp
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def forward():
        with torch.inference_mode(), amp_context(args.device, args.amp):
            model(x)

    rates = {}
    for name, deterministic in (("bare_train", False), ("bare_train_deterministic", True)):
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        model.train()
        steps, took = timed_loop(train, args.device, args.bare_seconds)
        rates[name] = steps * args.batch_size / took
    torch.use_deterministic_algorithms(False)
    model.eval()
    steps, took = timed_loop(forward, args.device, args.bare_seconds)
    rates["bare_forward"] = steps * args.batch_size / took
    return rates


def profiled_finetune(args, labels: Path) -> dict:
    """finetune through ldpo.stages.run with a profiler over --profile-steps optimizer steps."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, profile, schedule

    from ldpo.stages import run

    out = args.out / "model.pt"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    times: list[float] = []
    prof = profile(activities=activities, schedule=schedule(wait=5, warmup=2, active=args.profile_steps, repeat=1),
                   record_shapes=False)

    def on_step(optimizer, *_):
        times.append(time.perf_counter())
        prof.step()

    handle = register_optimizer_step_post_hook(on_step)
    argv = ["finetune", args.store, str(labels), "--out", str(out), "--init", "random", "--arch", args.arch,
            "--input-size", str(args.input_size), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
            "--split", "none", "--new-head", "--workers", str(args.workers), "--device", args.device, "--no-progress",
            "-v", *(["--amp"] if args.amp else [])]
    start = time.perf_counter()
    try:
        with prof:
            code = run(argv)
    finally:
        handle.remove()
    wall = time.perf_counter() - start
    sort = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    (args.out / "profile.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=40) + "\n")
    prof.export_chrome_trace(str(args.out / "trace.json"))
    metrics = json.loads((args.out / "model.metrics.json").read_text()) if code == 0 else {"epochs": []}
    seconds = sum(e["seconds"] for e in metrics["epochs"])
    images = len(times) * args.batch_size
    after = times[5 + 2 + args.profile_steps:]  # the steps after the profiled ones
    steady = (len(after) - 1) * args.batch_size / (after[-1] - after[0]) if len(after) > 2 else None
    return {"code": code, "wall_s": round(wall, 2), "steps": len(times), "epoch_seconds": seconds,
            "finetune_loop": images / seconds if seconds else None, "finetune_steady": steady,
            "argv": " ".join(argv)}


def write_labels_for(store: str, out: Path, classes: int) -> Path:
    """``STORE.truth.csv`` when it exists (toy-data archive writes it), else ``classes`` labels by row."""
    truth = Path(f"{store}.truth.csv")
    if truth.is_file():
        return truth
    from ldpo.common.files.labels import write_labels
    from ldpo.common.files.stores import open_store

    with open_store(store, expect="images") as s:
        ids = s.ids
    path = out / "labels.csv"
    write_labels(path, ids, [i % classes for i in range(len(ids))])
    return path


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="images store (e.g. toy-data archive --n 20000 --size 256)")
    parser.add_argument("--out", type=Path, required=True, help="folder for stacks, profile, summary")
    parser.add_argument("--arch", default="alexnet")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--profile-steps", type=int, default=30)
    parser.add_argument("--bare-seconds", type=float, default=3.0)
    parser.add_argument("--stack-every", type=float, default=30.0)
    parser.add_argument("--classes", type=int, default=20, help="labels by row when the store has no truth CSV")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stacks = open(args.out / "stacks.txt", "w")  # noqa: SIM115 - open for the whole run
    faulthandler.dump_traceback_later(args.stack_every, repeat=True, file=stacks)
    try:
        labels = write_labels_for(args.store, args.out, args.classes)
        from ldpo.common.files.labels import read_labels

        classes = len(read_labels(labels).classes)
        summary: dict = {"device": args.device, "arch": args.arch, "input_size": args.input_size,
                         "batch_size": args.batch_size, "workers": args.workers, "amp": args.amp}
        summary["datapath"] = datapath_rate(args, labels)
        print(f"data path alone: {summary['datapath']:.0f} images/s", flush=True)
        summary.update(bare_rates(args, classes))
        print(f"bare training step {summary['bare_train']:.0f} images/s (deterministic algorithms: "
              f"{summary['bare_train_deterministic']:.0f}); bare forward {summary['bare_forward']:.0f}", flush=True)
        summary["finetune"] = profiled_finetune(args, labels)
        ft = summary["finetune"]
        loop, steady = ft["finetune_loop"] or 0.0, ft["finetune_steady"] or 0.0
        summary["ratios"] = {"finetune_loop/bare_train": loop / summary["bare_train"],
                             "finetune_steady/bare_train": steady / summary["bare_train"],
                             "datapath/bare_train": summary["datapath"] / summary["bare_train"]}
        print(f"finetune: exit {ft['code']}, {ft['steps']} steps, loop {loop:.0f} images/s, steady (after the "
              f"profiled steps) {steady:.0f} images/s; ratios {json.dumps(summary['ratios'])}", flush=True)
    finally:
        faulthandler.cancel_dump_traceback_later()
        stacks.close()
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"probe: datapath={summary['datapath']:.0f} bare_train={summary['bare_train']:.0f} "
          f"bare_train_deterministic={summary['bare_train_deterministic']:.0f} finetune_loop={loop:.0f} "
          f"finetune_steady={steady:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
