"""finetune's trainer: settings and resume, distributed helpers, and the training loop."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...common.cli import progress
from ...common.errors import InputError

from .options import NOT_IN_SIGNATURE, PARTIAL_FORMAT, metrics_path, partial_path
from .targets import TARGETS

if TYPE_CHECKING:
    from .options import Options
    from .data import Data

log = logging.getLogger("ldpo")


class Diverged(InputError):
    """Non-finite loss or weights: exit 2, nothing written."""


# -- settings and resume --------------------------------------------------------------
def resolve_settings(opts: Options, built, world: int) -> dict[str, Any]:
    """The options with every default resolved: the checkpoint's ``options`` and the resume signature."""
    from ...common.nets import models

    settings = {k: v for k, v in asdict(opts).items() if k not in NOT_IN_SIGNATURE}
    lr_given, mult_given = opts.lr is not None, opts.head_lr_mult is not None
    settings.update(arch=built.arch, input_size=built.input_size, normalize=built.normalize, world=world,
                    input_filter=built.input_filter,
                    lr=opts.lr if lr_given else models.RECIPES[built.origin].lr,
                    head_lr_mult=opts.head_lr_mult if mult_given else models.RECIPES[built.origin].head_lr_mult,
                    images=str(Path(opts.images).resolve()), labels=str(Path(opts.labels).resolve()),
                    init_checksum=built.checksum)
    log.info("finetune: %s from --init %s, lr %g%s, head ×%g%s, %d epochs at %d px", built.arch, built.init,
             settings["lr"], "" if lr_given else " (default for this init)", settings["head_lr_mult"],
             "" if mult_given else " (default)", opts.epochs, built.input_size)
    return settings


def finished(out: str, settings: dict[str, Any], rank: int = 0) -> bool:
    """True when ``out`` is a finished checkpoint made with the same options."""
    from ...common.nets.checkpoint import Checkpoint

    if not Path(out).is_file():
        return False
    ckpt = Checkpoint.load(out)
    if ckpt.options != settings:
        log.warning("%s exists but was made with other options: training again", out)
        return False
    if rank == 0:
        write_json(metrics_path(out), ckpt.metrics)
    return True


def write_json(path: Path, data: Any) -> None:
    from ...common.files.stores import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def torch_save(path: Path, data: dict[str, Any]) -> None:
    import torch

    from ...common.files.stores import atomic_path

    with atomic_path(path) as tmp:
        torch.save(data, tmp)


# -- distributed ----------------------------------------------------------------------
def start_distributed(device: str) -> tuple[int, int, str]:
    """``(rank, world, device)``; a process group when launched by torchrun with WORLD_SIZE > 1."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return dist.get_rank(), world, device


def stop_distributed(world: int) -> None:
    import torch.distributed as dist

    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], world: int, device: str) -> list[float]:
    import torch
    import torch.distributed as dist

    if world <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# -- training -------------------------------------------------------------------------
class Trainer:
    def __init__(self, opts: Options, built, data: Data, settings: dict[str, Any], rank: int, world: int,
                 device: str):
        import torch

        from ...common.nets.models import head_parameters

        self.opts, self.built, self.data, self.settings = opts, built, data, settings
        self.rank, self.world, self.device = rank, world, device
        self.kind = device.split(":")[0]
        model = built.model.to(device)
        head = {id(p) for p in head_parameters(model, built.arch)}
        backbone = [p for p in model.parameters() if id(p) not in head]
        if opts.freeze_backbone:
            for p in backbone:
                p.requires_grad_(False)
        groups = [{"params": [] if opts.freeze_backbone else backbone, "lr": settings["lr"]},
                  {"params": [p for p in model.parameters() if id(p) in head],
                   "lr": settings["lr"] * settings["head_lr_mult"]}]
        self.optimizer = torch.optim.SGD(groups, lr=settings["lr"], momentum=opts.momentum,
                                         weight_decay=opts.weight_decay)
        if opts.schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=opts.epochs)
        else:
            self.scheduler = torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0, total_iters=0)
        from ...common.images.accel import tune

        self.channels_last = tune(model, device, opts.amp)
        self.model = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(model, device_ids=[device] if self.kind == "cuda" else None)
        self.net = model  # unwrapped, for state_dicts
        self.target = TARGETS[data.target](data, device)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0

    # -- data ---------------------------------------------------------------------------
    def augment(self):
        from ...common.images.imagedata import Augment

        b, o = self.built, self.opts
        return Augment(b.input_size, b.normalize, o.crop_scale, o.flip, o.jitter, b.mean, b.std, seed=o.seed,
                       channels_last=self.channels_last)

    def preprocess(self):
        from ...common.images.imagedata import Preprocess

        b = self.built
        return Preprocess(b.input_size, b.normalize, b.mean, b.std, channels_last=self.channels_last)

    def epoch_plan(self, epoch: int):
        from ...common.images import imagedata

        rows, targets = self.data.train
        return imagedata.epoch_items(rows, targets, seed=self.opts.seed, epoch=epoch, chunk=self.data.chunk,
                                     row_bytes=self.data.row_bytes, batch=self.opts.batch_size,
                                     balanced=self.opts.balanced, rank=self.rank, world=self.world,
                                     window_bytes=self.opts.shuffle_window << 20)

    def batches(self, items, limit: int | None = None):
        """``(images uint8, rows, targets)`` on the device, ``--batch-size`` at a time."""
        from ...common.images import imagedata

        return imagedata.batches(self.opts.images, items, self.opts.batch_size, workers=self.opts.workers,
                                 device=self.device, limit=limit)

    def infer(self, items):
        """``(rows, targets, outputs)`` of the network in evaluation mode (common/images/inference.py)."""
        from ...common.images.inference import infer

        return infer(self.net, self.opts.images, items, self.preprocess(), batch=self.opts.batch_size,
                     workers=self.opts.workers, device=self.device, amp=self.opts.amp, show=False)

    def part_items(self, part: tuple[np.ndarray, np.ndarray], share: bool = True):
        """A split part's reads; with ``share`` this process's strided share (every image counted once)."""
        from ...common.images import imagedata

        rows, targets = part
        if share:
            rows, targets = rows[self.rank::self.world], targets[self.rank::self.world]
        per_item = imagedata.read_rows(self.opts.images, self.opts.batch_size)
        return imagedata.subset_items(rows, targets, per_item, self.data.chunk)

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        if self.opts.resume:
            self.load_partial()
        if self.opts.head_init == "centroids" and self.start_epoch == 0:
            self.head_from_centroids()
        stop_after = int(os.environ.get("LDPO_STOP_AFTER_EPOCH", "0") or 0)
        for epoch in range(self.start_epoch, self.opts.epochs):
            start = time.perf_counter()
            try:
                loss, top1 = self.train_epoch(epoch)
                self.check_weights(epoch)
            except Diverged:
                if self.rank == 0:  # its resume state leads back here: nothing of the run is kept
                    partial_path(self.opts.out).unlink(missing_ok=True)
                raise
            self.scheduler.step()
            figures = self.target.epoch_figures(self, top1)
            if self.data.neighbours is not None:
                figures["neighbour_loss"] = self.near_mean
            self.history.append({"epoch": epoch + 1, "train_loss": loss, **figures,
                                 "lr": self.optimizer.param_groups[0]["lr"],
                                 "seconds": round(time.perf_counter() - start, 2)})
            log.info("epoch %d/%d: train loss %.4f, %s", epoch + 1, self.opts.epochs, loss,
                     ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in figures.items() if v is not None))
            self.save_partial(epoch + 1)
            if stop_after and epoch + 1 == stop_after and epoch + 1 < self.opts.epochs:
                raise KeyboardInterrupt  # LDPO_STOP_AFTER_EPOCH: a simulated kill, for tests
        self.finish()

    def head_from_centroids(self) -> None:
        """--head-init centroids: the head starts as the nearest-centroid classifier of the
        training labels in the network's own (pre-training) features, so the first steps
        refine the clusters rather than fight a random head."""
        import torch

        from ...common.images.accel import autocast
        from ...common.nets.models import head_inputs, set_head_to_centroids

        prep = self.preprocess()
        self.net.eval()
        feats, labels = [], []
        with torch.inference_mode(), progress(total=len(self.data.train[0]), desc="head from centroids",
                                              unit="img", disable=self.rank > 0) as bar:
            for x, _, y in self.batches(self.part_items(self.data.train, share=False)):
                with autocast(self.device, self.opts.amp):
                    feats.append(head_inputs(self.net, self.built.arch, prep(x)).float())
                labels.append(y)
                bar.update(len(y))
        scale = set_head_to_centroids(self.net, self.built.arch, torch.cat(feats), torch.cat(labels))
        log.info("head: nearest-centroid classifier of %d classes (scale %.3g)", len(self.data.classes), scale)

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        import torch

        from ...common.images.accel import autocast

        near = self.neighbour_plan(epoch) if self.data.neighbours is not None else None
        self.set_train_mode()
        plan, augment = self.epoch_plan(epoch), self.augment()
        # sums stay on the device: no host sync per batch (a GPU runs ahead of the Python loop)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.near_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        bar = progress(total=plan.images, desc=f"epoch {epoch + 1}", unit="img", disable=self.rank > 0)
        for x, rows, y in self.batches(plan.items, plan.batches):
            x = augment(x, rows, epoch)
            with autocast(self.device, self.opts.amp):
                out = self.model(x)
                loss = self.target.loss(out.float(), y, rows)
                if near is not None:
                    agree = self.neighbour_term(out.float(), rows, *near)
                    self.near_sum += agree.detach() * len(y)
                    loss = loss + self.opts.neighbour_weight * agree
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += self.target.hits(out, y, rows)
            count += len(y)
            bar.update(len(y))
        bar.close()
        loss_sum, correct, count, near_sum = all_sum([loss_sum.item(), correct.item(), count, self.near_sum.item()],
                                                     self.world, self.device)
        self.near_mean = near_sum / max(count, 1) if near is not None else None
        if not np.isfinite(loss_sum):  # a non-finite loss in any batch makes the sum non-finite
            raise Diverged(f"{self.opts.out}: training diverged (loss {loss_sum} in epoch {epoch + 1}); "
                           "nothing written: lower --lr")
        return loss_sum / max(count, 1), correct / max(count, 1)

    def neighbour_plan(self, epoch: int):
        """--neighbours: ``(choice, q)`` for one epoch: each training image's neighbour (one of its mined
        neighbours, drawn from (seed, epoch); store-row indexed, -1 = none) and the softmax of every chosen
        neighbour from an unaugmented pass of the network as it is at the start of the epoch (rows x classes).
        The neighbour's side is fixed for the epoch (SCAN back-propagates through both images; here the data
        path reads store chunks in order, and a neighbour can be anywhere in the store)."""
        import torch

        nb, rows = self.data.neighbours, self.data.train[0]
        draw = np.random.default_rng([self.opts.seed, epoch, 2]).integers(0, nb.shape[1], len(rows))
        chosen = nb[rows, draw]
        need = np.unique(chosen[chosen >= 0])
        choice = np.full(len(nb), -1, dtype=np.int64)  # store row -> its neighbour's row of q
        choice[rows] = np.where(chosen >= 0, np.searchsorted(need, chosen), -1)
        q = np.zeros((len(need), len(self.data.classes)), dtype=np.float32)
        self.net.eval()
        for got, _, out in self.infer(self.part_items((need, np.zeros(len(need), np.int64)), share=False)):
            q[np.searchsorted(need, got.cpu().numpy())] = torch.softmax(out.float(), dim=1).cpu().numpy()
        return torch.from_numpy(choice).to(self.device), torch.from_numpy(q).to(self.device)

    @staticmethod
    def neighbour_term(logits, rows, choice, q):
        """SCAN's consistency term: mean over the batch's images that have a neighbour of
        -log <softmax(image), q(neighbour)> (0 when none has; no host sync)."""
        import torch

        picked = choice[rows]
        has = (picked >= 0).float()
        dot = (torch.softmax(logits, dim=1) * q[picked.clamp_min(0)]).sum(dim=1)
        return -(torch.log(dot.clamp_min(1e-7)) * has).sum() / has.sum().clamp_min(1.0)

    def set_train_mode(self) -> None:
        """Training mode; with --freeze-backbone only the head trains: the backbone stays in eval
        mode, so its BatchNorm statistics (and dropout) stay as loaded."""
        from ...common.nets.models import head_module

        self.model.train()
        if self.opts.freeze_backbone:
            self.net.eval()
            head_module(self.net, self.built.arch).train()

    def check_weights(self, epoch: int) -> None:
        """Non-finite weights (a diverged step the loss did not show yet) stop training, nothing saved."""
        import torch

        bad = sum(int((~torch.isfinite(p)).sum()) for p in self.net.parameters())
        if bad:
            total = sum(p.numel() for p in self.net.parameters())
            raise Diverged(f"{self.opts.out}: training diverged ({bad} of {total} weights not finite after "
                             f"epoch {epoch + 1}); nothing written: lower --lr")

    def evaluate(self, part: tuple[np.ndarray, np.ndarray]) -> tuple[float | None, float | None]:
        """Top-1 and top-5 (top-min(5,K)) accuracy on a split part; (None, None) when it is empty."""


        if len(part[0]) == 0:
            return None, None
        self.model.eval()
        k = min(5, len(self.data.classes))
        top1 = top5 = count = 0.0
        for _, y, out in self.infer(self.part_items(part)):
            best = out.topk(k, dim=1).indices
            top1 += (best[:, 0] == y).sum().item()
            top5 += (best == y[:, None]).any(dim=1).sum().item()
            count += len(y)
        top1, top5, count = all_sum([top1, top5, count], self.world, self.device)
        return top1 / count, top5 / count

    def collect(self, part: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """--multi-label: sigmoid probabilities [n,K] and truth [n,K] of a whole split part (every
        process scores all of it: average precision needs every image's score)."""
        import torch


        self.model.eval()
        probs, truth = [], []
        for rows, _, logits in self.infer(self.part_items(part, share=False)):
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
            truth.append(self.data.truth[rows.numpy()])
        return np.concatenate(probs), np.concatenate(truth)

    # -- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}

    def save_partial(self, epochs_done: int) -> None:
        import torch

        if self.rank:
            return
        torch_save(partial_path(self.opts.out), {
            "format": PARTIAL_FORMAT, "options": self.settings, "epochs_done": epochs_done,
            "state_dict": self.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all() if self.kind == "cuda" else [],
            "history": self.history})

    def load_partial(self) -> None:
        import torch

        from ...common.nets.models import load_file

        path = partial_path(self.opts.out)
        if not path.is_file():
            log.info("--resume: no %s, starting from the first epoch", path)
            return
        state = load_file(str(path), "partial finetune checkpoint")
        if state.get("format") != PARTIAL_FORMAT:
            raise InputError(f"{path}: not a partial finetune checkpoint")
        if state["options"] != self.settings:
            differ = sorted(k for k in set(state["options"]) | set(self.settings)
                            if state["options"].get(k) != self.settings.get(k))
            raise InputError(f"{path}: made with other options ({', '.join(differ)}); "
                             "rerun with the same options or delete it")
        self.net.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.history = list(state["history"])
        self.start_epoch = int(state["epochs_done"])
        log.info("--resume: continuing %s after epoch %d", path, self.start_epoch)

    def finish(self) -> None:
        last = self.history[-1] if self.history else {}
        scored, extra = self.target.final(self, last)
        metrics = {"epochs": self.history, "classes": len(self.data.classes), "target": self.target.kind, **scored}
        metrics["final"].update(n_train=len(self.data.train[0]), n_val=len(self.data.val[0]),
                                n_test=len(self.data.test[0]))
        if self.rank:
            return
        from ...common.nets.checkpoint import Checkpoint

        Checkpoint(arch=self.built.arch, num_classes=len(self.data.classes), classes=self.data.classes,
                   state_dict=self.state_dict(), target=self.target.kind, options=self.settings, metrics=metrics,
                   input_size=self.built.input_size, normalize=self.built.normalize,
                   transform_input=self.built.transform_input, input_filter=self.built.input_filter,
                   origin=self.built.origin, head=self.built.head, mean=list(self.built.mean),
                   std=list(self.built.std), init=str(self.built.init), **extra).save(self.opts.out)
        write_json(metrics_path(self.opts.out), metrics)
        partial_path(self.opts.out).unlink(missing_ok=True)
        from ...common.files.stores import remove_stale_temporaries

        for done in (self.opts.out, metrics_path(self.opts.out), partial_path(self.opts.out)):
            remove_stale_temporaries(done)  # what a killed save left (a partial checkpoint's temporary: 80+ MB)
        log.info("wrote %s and %s", self.opts.out, metrics_path(self.opts.out))

