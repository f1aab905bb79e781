"""Hostile inputs, third pass (issue 30 items 10, 12, 15, 16, 17): records and headers are checked
before they are believed, sizes they claim are bounded before anything is allocated, and every
refusal is one line naming the file or option (exit 2, nothing written).

The inputs are tiny: a checkpoint whose record lies, a few-KB store that *declares* huge
shapes, a small deflated DICOM that *claims* a huge image. The memory each used to take is
measured outside the tests (``/usr/bin/time -v``, see the issue's closing note).
"""

from __future__ import annotations

import hashlib
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest


# -- a small workspace, built once and copied per case ---------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory, toy):
    """images.h5 and labels.csv (3 classes x 4 images, 32 px), feats.h5, and model.pt: an untrained
    3-class resnet18 checkpoint (a valid record; the cases below make it lie)."""
    from ldpo.common import models
    from ldpo.common.checkpoint import Checkpoint
    from ldpo.common.labels import read_labels, write_labels
    from ldpo.common.stores import open_store, write_store

    ws = tmp_path_factory.mktemp("bounds")
    toy_dir = toy(classes=3, per_class=4, size=32)
    shutil.copy(toy_dir / "images.h5", ws / "images.h5")
    truth = read_labels(toy_dir / "truth.csv")
    write_labels(ws / "labels.csv", truth.ids, truth.labels)
    with open_store(ws / "images.h5") as store:
        ids = store.ids
    rng = np.random.default_rng(0)
    write_store(ws / "feats.h5", ids, {"stage": "test"}, features=rng.normal(size=(len(ids), 8)).astype(np.float32))
    built = models.build(models.parse_init("random"), "resnet18", 3, 0, 32)
    Checkpoint(arch="resnet18", num_classes=3, classes=[0, 1, 2], state_dict=built.model.state_dict(),
               input_size=32, normalize="zscore", origin="random").save(ws / "model.pt")
    return ws


@pytest.fixture
def ws(base, tmp_path):
    work = tmp_path / "ws"
    shutil.copytree(base, work, symlinks=True)
    return work


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its SHA-256 (folders and special files by kind)."""
    found = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode):
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[str(path.relative_to(root))] = f"kind {stat.S_IFMT(mode)}"
    return found


def refused(cli, ws: Path, argv: list, named) -> str:
    """Run ``argv``: exit 2, one line ``COMMAND: error: …`` naming ``named``, nothing under ``ws`` changed."""
    command = argv[0] if argv[0] != "toy-data" else f"toy-data {argv[1]}"
    before = snapshot(ws)
    r = cli(*argv, "-q")
    assert r.code == 2, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.err and "Warning" not in r.err, r.err
    assert lines[0].startswith(f"{command}: error: "), lines[0]
    assert str(named) in lines[0], (str(named), lines[0])
    assert snapshot(ws) == before, "something was written or changed"
    return lines[0]


# -- item 10: a checkpoint's record is checked on load, before a model is built ----------------

def lying_checkpoint(ws: Path, name: str = "lie.pt", state_dict=None, **changes) -> Path:
    """model.pt with ``changes`` to its record (a value None removes the key)."""
    import torch

    data = torch.load(ws / "model.pt", weights_only=True)
    if state_dict is not None:
        data["state_dict"] = state_dict
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    torch.save(data, ws / name)
    return ws / name


def words_checkpoint(ws: Path) -> Path:
    """What finetune --vectors writes: 2 x 16 sigmoids regressing word vectors, target words."""
    from ldpo.common import models

    built = models.build(models.parse_init("random"), "resnet18", 32, 0, 32)
    return lying_checkpoint(ws, "words.pt", built.model.state_dict(), num_classes=32, classes=list(range(32)),
                            target="words", words={"dim": 16, "vectors_checksum": "0" * 64, "terms": []})


def test_assign_refuses_a_words_checkpoint(cli, ws):
    model = words_checkpoint(ws)
    line = refused(cli, ws, ["assign", ws / "images.h5", "--model", model, "--out", ws / "a.csv"], model)
    assert "'words' checkpoint" in line


def test_featurize_probs_refuses_a_words_checkpoint(cli, ws):
    model = words_checkpoint(ws)
    refused(cli, ws, ["featurize", ws / "images.h5", "--out", ws / "p.h5", "--init", f"checkpoint:{model}",
                      "--layer", "probs", "--device", "cpu"], model)


RECORDS = {
    "target-bogus": (dict(target="bogus"), "target 'bogus' is not one of"),
    "multi-without-thresholds": (dict(target="multi"), "needs one threshold per class (3), it has none"),
    "multi-thresholds-too-few": (dict(target="multi", thresholds=[0.5]), "it has 1"),
    "thresholds-out-of-range": (dict(target="multi", thresholds=[0.5, 7.0, 0.5]), "thresholds must be numbers in [0, 1]"),
    "future-format": (dict(format="ldpo-checkpoint-9"), "is newer than this ldpo reads"),
    "foreign-format": (dict(format="keras-7"), "is not one ldpo wrote"),
    "classes-fewer-than-num-classes": (dict(classes=[0, 1]), "num_classes is 3 but it lists 2 classes"),
    "classes-not-integers": (dict(classes=["a", "b", "c"]), "class 'a' is not a non-negative whole number"),
    "classes-repeated": (dict(classes=[1, 1, 2]), "class 1 is listed twice"),
    "num-classes-text": (dict(num_classes="three", classes=None), "num_classes 'three' is not a number"),
    "num-classes-zero": (dict(num_classes=0, classes=[]), "num_classes 0 is not a number of at least 1"),
    "input-size-zero": (dict(input_size=0), "input_size 0 is not a number of at least 1"),
    "input-size-text": (dict(input_size="big"), "input_size 'big' is not a number"),
    # the head's shape is read from the file: no model with a 100,000-way head is built first
    "num-classes-huge": (dict(num_classes=100_000, classes=None), "num_classes is 100000 but its head (fc) has 3"),
}


@pytest.mark.parametrize("case", list(RECORDS))
def test_a_lying_checkpoint_record_is_refused_on_load(cli, ws, case):
    changes, says = RECORDS[case]
    model = lying_checkpoint(ws, **changes)
    for argv in (["assign", ws / "images.h5", "--model", model, "--out", ws / "a.csv"],
                 ["featurize", ws / "images.h5", "--out", ws / "f.h5", "--init", f"checkpoint:{model}",
                  "--device", "cpu"]):
        line = refused(cli, ws, argv, model)
        assert says in line, line


def test_the_record_is_checked_before_any_tensor_of_its_size(ws):
    """num_classes 3,000,000 used to build a 512 x 3M head (7 GB) before load_state_dict refused it."""
    import tracemalloc

    from ldpo.common.checkpoint import Checkpoint
    from ldpo.common.errors import InputError

    model = lying_checkpoint(ws, num_classes=3_000_000, classes=None)
    tracemalloc.start()
    with pytest.raises(InputError, match="num_classes is 3000000 but its head"):
        Checkpoint.load(model)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200 << 20, peak  # the 3M-entry default class list alone would be ~100 MB


def test_a_valid_checkpoint_still_loads(ws):
    from ldpo.common.checkpoint import Checkpoint

    ckpt = Checkpoint.load(lying_checkpoint(ws, target="multi", thresholds=[0.2, 0.5, 1.0], classes=[4, 7, 9]))
    assert ckpt.classes == [4, 7, 9] and ckpt.thresholds == [0.2, 0.5, 1.0]
    old = Checkpoint.load(lying_checkpoint(ws, "old.pt", format=None, target=None, classes=None))
    assert old.target == "single" and old.classes == [0, 1, 2] and old.format is None
