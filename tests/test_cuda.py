"""The CUDA paths: the same results as on the CPU, within stated tolerances.

They run only where a CUDA device is visible (a GPU node, the device machine) and skip
elsewhere, saying so. Tolerances: features on CUDA have a cosine ≥ 0.999 to the CPU's
(cuDNN and TF32 sum in another order), ≥ 0.99 with --amp (bfloat16); a training batch
prepared on the device equals the CPU's within 1e-4; k-means and RIM on the GPU recover
well-separated blobs as on the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ldpo.common.images import imagedata
from ldpo.common.files.labels import read_labels
from ldpo.common.numerics.metrics import nmi
from ldpo.common.files.stores import open_store, write_store

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible: the CUDA paths "
                                "run on a GPU machine (see README, Performance)")


@pytest.fixture
def small(toy, tmp_path):
    folder = toy(classes=5, per_class=12, size=64)
    return folder / "images.h5", folder / "truth.csv"


def features(path):
    with open_store(path) as store:
        return store.read("features")


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_featurize_on_cuda_matches_the_cpu(cli, small, tmp_path):
    images, _ = small
    common = ["--input-size", "64", "--seed", "2", "--batch-size", "16", "-q"]
    assert cli("featurize", images, "--out", tmp_path / "cpu.h5", "--device", "cpu", *common).code == 0
    cpu = features(tmp_path / "cpu.h5")
    for flags, least in [((), 0.999), (("--amp",), 0.99)]:
        out = tmp_path / f"cuda{len(flags)}.h5"
        r = cli("featurize", images, "--out", out, "--device", "cuda", "--workers", "2", *flags, *common)
        assert r.code == 0, r.err
        assert cosine(features(out), cpu).min() >= least, flags


def test_device_side_augment_matches_the_cpu():
    block = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (32, 80, 80), dtype=np.uint8))
    augment = imagedata.Augment(64, "imagenet", min_scale=0.35, flip=True, jitter=0.3, seed=5)
    on_cpu = augment(block, np.arange(32), 3)
    on_gpu = augment(block.cuda(), torch.arange(32).cuda(), 3)
    assert on_gpu.is_cuda and torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-4)


def test_finetune_on_cuda_learns_and_loads_on_the_cpu(cli, small, tmp_path):
    images, truth = small
    out = tmp_path / "model.pt"
    r = cli("finetune", images, truth, "--out", out, "--device", "cuda", "--epochs", "4", "--input-size", "64",
            "--batch-size", "16", "--split", "none", "--amp", "--workers", "2", "-q")
    assert r.code == 0, r.err
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    losses = [e["train_loss"] for e in ckpt["metrics"]["epochs"]]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    assert all(v.device.type == "cpu" for v in ckpt["state_dict"].values())


def test_finetune_neighbours_on_cuda(cli, small, tmp_path):
    images, truth = small
    feats = tmp_path / "f.h5"
    assert cli("featurize", images, "--out", feats, "--layer", "multiscale", "--device", "cuda", "-q").code == 0
    r = cli("finetune", images, truth, "--out", tmp_path / "m.pt", "--device", "cuda", "--epochs", "2",
            "--input-size", "64", "--batch-size", "16", "--split", "none", "--neighbours", feats, "-q")
    assert r.code == 0, r.err
    epochs = torch.load(tmp_path / "m.pt", map_location="cpu", weights_only=True)["metrics"]["epochs"]
    assert all(np.isfinite(e["neighbour_loss"]) and e["neighbour_loss"] > 0 for e in epochs)


def blobs(n=600, k=6, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 3
    truth = np.arange(n) % k
    return (centres[truth] + rng.standard_normal((n, d))).astype(np.float32), truth


@pytest.mark.parametrize("method", [["--method", "kmeans", "--k", "6"], ["--method", "rim", "--k", "30"],
                                    ["--method", "scan", "--k", "6"],
                                    ["--method", "scan", "--k", "6", "--train-rows", "300"]])
def test_cluster_on_cuda_recovers_blobs(cli, tmp_path, method):
    x, truth = blobs()
    path = tmp_path / "f.h5"
    write_store(path, [f"i{i}" for i in range(len(x))], {"stage": "test"}, features=x)
    r = cli("cluster", path, "--out", tmp_path / "l.csv", "--device", "cuda", *method, "-q")
    assert r.code == 0, r.err
    assert nmi(read_labels(tmp_path / "l.csv").labels, truth) > 0.9


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP with nccl needs two GPUs")
def test_two_nccl_processes_write_one_checkpoint(small, tmp_path):
    images, truth = small
    out = tmp_path / "ddp" / "model.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ldpo.stages.finetune", str(images), str(truth), "--out", str(out), "--epochs", "1",
           "--split", "none", "--device", "cuda", "--input-size", "32", "--batch-size", "8", "--no-progress"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(out, map_location="cpu", weights_only=True)["options"]["world"] == 2
