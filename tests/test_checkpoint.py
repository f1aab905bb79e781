"""The checkpoint dataclass: what finetune writes round-trips, old files load, bad ones are refused;
the cheap modules (and ``finetune --help``) import no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from ldpo.common.nets import models
from ldpo.common.nets.checkpoint import CHECKPOINT_FORMAT, Checkpoint
from ldpo.common.errors import InputError
from ldpo.common.files.labels import write_labels
from ldpo.common.files.stores import write_store


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy):
    """A checkpoint written by finetune itself (1 epoch, 32 px), and its folder."""
    from ldpo.stages import run
    from ldpo.common.files.labels import read_labels
    from ldpo.common.files.stores import open_store

    folder = toy(classes=5, per_class=12, size=64)
    out = tmp_path_factory.mktemp("ckpt")
    truth = read_labels(folder / "truth.csv")
    rows = np.arange(0, 60, 3)
    with open_store(folder / "images.h5") as store:
        ids = [store.ids[r] for r in rows]
        write_store(out / "images.h5", ids, {"stage": "test"}, images=store.take("images", rows))
    write_labels(out / "labels.csv", ids, truth.labels[rows] * 2 + 1)  # label values that are not 0..K-1
    code = run(["finetune", str(out / "images.h5"), str(out / "labels.csv"), "--out", str(out / "model.pt"),
                "--input-size", "32", "--batch-size", "10", "--epochs", "1", "--split", "none", "--no-progress",
                "--seed", "3", "-q"])
    assert code == 0
    return out / "model.pt"


def test_what_finetune_writes_round_trips_key_for_key(trained):
    data = torch.load(trained, map_location="cpu", weights_only=True)
    ckpt = Checkpoint.load(trained)
    assert list(ckpt.to_dict()) == list(data) and ckpt.extra == {}  # the same keys, in finetune's order
    assert ckpt.to_dict() == {k: v for k, v in data.items() if k != "state_dict"} | {"state_dict": ckpt.state_dict}
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in data["state_dict"].items())
    assert ckpt.format == CHECKPOINT_FORMAT and ckpt.classes == [1, 3, 5, 7, 9] and ckpt.origin == "random"
    built = models.build(models.Init("checkpoint", str(trained)))
    assert (built.arch, built.classes, built.input_size, built.normalize, built.head, built.trained_options) == \
           (ckpt.arch, ckpt.classes, ckpt.input_size, ckpt.normalize, ckpt.head, ckpt.options)


def test_saved_and_loaded_again_it_builds_the_same_model(trained, tmp_path):
    ckpt = Checkpoint.load(trained)
    ckpt.save(tmp_path / "again.pt")
    a = models.build(models.Init("checkpoint", str(trained)), seed=1).model.eval()
    b = models.build(models.Init("checkpoint", str(tmp_path / "again.pt")), seed=1).model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    assert not list(tmp_path.glob(".*"))  # written under a temporary name, then renamed


def test_an_old_file_without_the_later_keys_loads_with_the_old_assumptions(tmp_path):
    built = models.build(models.Init("random"), "resnet18", 3, seed=1, input_size=32)
    torch.save({"arch": "resnet18", "num_classes": 3, "state_dict": built.model.state_dict()}, tmp_path / "old.pt")
    ckpt = Checkpoint.load(tmp_path / "old.pt")
    assert (ckpt.classes, ckpt.origin, ckpt.head, ckpt.target, ckpt.thresholds, ckpt.format) == \
           ([0, 1, 2], "weights", "linear", "single", None, None)
    assert "format" not in ckpt.to_dict()  # written back as it was: no tag it never had
    again = models.build(models.Init("checkpoint", str(tmp_path / "old.pt")), seed=1, store_side=48)
    assert again.origin == "weights" and again.input_size == 224 and again.normalize == "imagenet"  # weights recipe


def test_multi_label_thresholds_and_unknown_keys_survive(tmp_path):
    data = {"format": CHECKPOINT_FORMAT, "target": "multi", "thresholds": [0.25, 0.5], "arch": "resnet18",
            "num_classes": 2, "classes": [4, 6], "state_dict": {}, "from_the_future": {"a": 1}}
    ckpt = Checkpoint.from_dict(data)
    assert ckpt.target == "multi" and ckpt.thresholds == [0.25, 0.5] and ckpt.extra == {"from_the_future": {"a": 1}}
    out = ckpt.to_dict()
    assert list(out)[:4] == ["format", "target", "thresholds", "arch"] and out["from_the_future"] == {"a": 1}


@pytest.mark.parametrize("data,problem", [
    ({"arch": "resnet18", "state_dict": {}}, "not a finetune checkpoint (no num_classes)"),
    ({"format": "ldpo-finetune-partial-1", "options": {}}, "no arch, num_classes, state_dict"),
    ({"arch": "resnet18", "num_classes": "many", "state_dict": {}}, "num_classes 'many' is not a number"),
    ({"arch": "lenet", "num_classes": 2, "state_dict": {}}, "unknown architecture 'lenet'"),
])
def test_what_is_not_a_checkpoint_is_one_line_naming_the_file(tmp_path, data, problem):
    torch.save(data, tmp_path / "x.pt")
    with pytest.raises(InputError) as err:
        Checkpoint.load(tmp_path / "x.pt")
    assert str(err.value).startswith(f"{tmp_path / 'x.pt'}: ") and problem in str(err.value)


def _imports_torch(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", f"import sys; {code}; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def test_the_registry_and_the_checkpoint_modules_import_no_torch():
    # a command's --help (and the loop's plumbing) may read the records and the checkpoint format
    assert _imports_torch("import ldpo.common.nets.archs, ldpo.common.nets.checkpoint; "
                          "ldpo.common.nets.archs.check_arch('resnet18')") == "False"


def test_finetune_help_imports_no_torch():
    # finetune imports torch (and models) inside its functions only: --help stays fast (~0.1 s, not ~2 s)
    assert _imports_torch("from ldpo.stages import run; assert run(['finetune', '--help']) == 0") == "False"
