"""timm backbones (``--arch timm:NAME``) and every common weights layout, from local files only.

Every weights file is built here from a randomly initialised model (``pretrained=False``):
nothing is downloaded.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ldpo.common.nets import models
from ldpo.common.files.labels import write_labels
from ldpo.common.files.stores import open_store, write_store

timm = pytest.importorskip("timm")

RESNET = "timm:resnet18"
VIT = "timm:vit_tiny_patch16_224"  # mean/std 0.5 in its config: shows the config is used
TINY = ["--batch-size", "4", "--no-progress", "--seed", "1"]


def random_timm(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(models.timm_name(arch), pretrained=False, **kwargs).eval()


@pytest.fixture(scope="module")
def resnet_state():
    return random_timm(RESNET, seed=11).state_dict()


@pytest.fixture
def images(tmp_path):
    """8 gray 32 px images in 2 classes, and their labels."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 32, 32), dtype=np.uint8)
    pixels[4:] //= 3  # class 1 is darker
    ids = [f"im{i}" for i in range(8)]
    write_store(tmp_path / "images.h5", ids, {"stage": "test"}, images=pixels)
    write_labels(tmp_path / "labels.csv", ids, np.array([0] * 4 + [1] * 4))
    return tmp_path / "images.h5", tmp_path / "labels.csv"


def same_weights(model, reference, skip=("fc.",)):
    """``model`` (a module or a state_dict) has ``reference``'s tensors, the head (``skip``) aside."""
    own = model if isinstance(model, dict) else model.state_dict()
    keys = [k for k in reference if not k.startswith(skip)]
    return bool(keys) and all(torch.equal(own[k], reference[k]) for k in keys)


# -- families and layers ------------------------------------------------------------
@pytest.mark.parametrize("arch,size,tokens,width", [
    ("timm:resnet18", 64, 4, 512), ("timm:convnext_atto", 64, 4, 320),
    ("timm:vit_tiny_patch16_224", 64, 16, 192)])
def test_pooled_is_what_the_classifier_sees_and_last_is_a_token_grid(arch, size, tokens, width):
    built = models.build(models.Init("random"), arch, 3, seed=0, input_size=size)
    x = torch.rand(2, 3, size, size)
    pooled = models.Extractor(built.model, arch, models.resolve_layer(arch, None)).eval()
    local = models.Extractor(built.model, arch, models.resolve_layer(arch, "local")).eval()
    with torch.inference_mode():
        f, t = pooled(x), local(x)
        assert torch.allclose(f, models.head_inputs(built.model, arch, x), atol=1e-5)
        probs = models.Extractor(built.model, arch, "probs").eval()(x)
    assert f.shape == (2, width) and t.shape == (2, tokens, width) and probs.shape == (2, 3)
    assert models.num_outputs(built.model, arch) == 3 and built.classes == [0, 1, 2]


@pytest.mark.parametrize("arch,stages", [("timm:resnet18", 5), ("timm:convnext_atto", 4),
                                         ("timm:vit_tiny_patch16_224", 12)])
def test_multiscale_pools_every_intermediate_of_a_timm_model(arch, stages):
    built = models.build(models.Init("random"), arch, 3, seed=0, input_size=64)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        multi = models.Extractor(built.model, arch, "multiscale").eval()(x)
        maps = built.model.forward_intermediates(x, intermediates_only=True)
    assert len(maps) == stages and multi.shape == (2, sum(m.shape[1] for m in maps))
    assert torch.allclose(multi.norm(dim=1), torch.full((2,), float(stages)).sqrt(), atol=1e-4)


def test_backbone_depends_on_the_seed_only_and_unknown_names_are_refused():
    a = models.build(models.Init("random"), RESNET, None, seed=4, input_size=32).model
    b = models.build(models.Init("random"), RESNET, 7, seed=4, input_size=32).model
    assert same_weights(b, a.state_dict()) and models.num_outputs(b, RESNET) == 7
    with pytest.raises(models.InputError, match="timm has no model"):
        models.check_arch("timm:no_such_net")
    with pytest.raises(models.InputError, match="or timm:NAME"):
        models.check_arch("resnet19")
    with pytest.raises(models.InputError, match="only for timm:NAME"):
        models.build(models.Init("random"), "resnet18", None, normalize="timm")
    with pytest.raises(models.InputError, match="at least 32 px"):
        models.build(models.Init("random"), RESNET, None, input_size=16)


# -- weights layouts ------------------------------------------------------------------
def layouts(state):
    """Every layout a user brings, each with the same backbone weights."""
    from safetensors.torch import save_file

    def prefixed(p):
        return {p + k: v for k, v in state.items()}

    return {
        "plain.pth": lambda path: torch.save(state, path),
        "model.safetensors": lambda path: save_file({k: v.contiguous() for k, v in state.items()}, str(path)),
        "wrapped.pth": lambda path: torch.save({"state_dict": state, "epoch": 3}, path),
        "ddp.pth": lambda path: torch.save({"model": prefixed("module."), "optimizer": {}}, path),
        "ssl.pth": lambda path: torch.save({"state_dict": {**prefixed("module.backbone."),
                                                           "module.projector.0.weight": torch.zeros(8, 512)}}, path),
        "dino.pth": lambda path: torch.save({"teacher": prefixed("backbone."), "student": {}}, path),
    }


@pytest.mark.parametrize("name", list(layouts({})))
def test_every_weights_layout_loads_exactly(tmp_path, resnet_state, name):
    path = tmp_path / name
    layouts(resnet_state)[name](path)
    built = models.build(models.parse_init(f"weights:{path}"), RESNET, 4, seed=0, input_size=32)
    assert same_weights(built.model, resnet_state)
    assert built.normalize == "timm" and built.origin == "weights" and built.checksum


def test_torchvision_files_with_ddp_prefixes_load_too(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(2)
    reference = resnet18().state_dict()
    path = tmp_path / "tv-ddp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in reference.items()}}, path)
    model = models.build(models.parse_init(f"weights:{path}"), "resnet18", None).model
    assert same_weights(model, reference, skip=())


def test_a_mismatch_exits_2_naming_missing_and_unexpected_keys(cli, images, tmp_path):
    path = tmp_path / "convnext.safetensors"
    from safetensors.torch import save_file

    save_file(random_timm("timm:convnext_atto").state_dict(), str(path))
    r = cli("featurize", images[0], "--out", tmp_path / "f.h5", "--arch", RESNET, "--init", f"weights:{path}",
            "--input-size", "32", "-q")
    line = r.err.strip().splitlines()
    assert r.code == 2 and len(line) == 1 and line[0].startswith("featurize: error:"), r.err
    assert "does not fit timm:resnet18" in line[0] and "keys missing, e.g." in line[0] and "unexpected, e.g." in line[0]
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    r = cli("featurize", images[0], "--out", tmp_path / "f.h5", "--arch", RESNET, "--init", f"weights:{junk}", "-q")
    assert r.code == 2 and "cannot read as safetensors" in r.err
    assert not (tmp_path / "f.h5").exists()


def test_a_head_of_another_size_is_dropped_and_logged(tmp_path, caplog):
    state = random_timm(RESNET, seed=3, num_classes=10).state_dict()
    path = tmp_path / "ten.pth"
    torch.save(state, path)
    with caplog.at_level("INFO", logger="ldpo"):
        built = models.build(models.parse_init(f"weights:{path}"), RESNET, None, input_size=32)
    assert "10-class head is dropped" in caplog.text
    assert same_weights(built.model, state)


def test_vit_weights_at_their_own_size_are_resampled_to_the_input_size(tmp_path):
    state = random_timm(VIT, seed=5).state_dict()  # built for 224 px: 14x14 position grid
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    built = models.build(models.parse_init(f"weights:{path}"), VIT, None, input_size=32)
    assert built.input_size == 32 and built.mean == (0.5, 0.5, 0.5) and built.std == (0.5, 0.5, 0.5)
    assert built.model.pos_embed.shape[1] == 1 + 2 * 2
    assert same_weights(built.model, state, skip=("pos_embed",))
    default = models.build(models.parse_init(f"weights:{path}"), VIT, None)
    assert default.input_size == 224  # timm's pretrained config


# -- the stages -----------------------------------------------------------------------
def test_featurize_records_backbone_checksum_layer_and_timm_normalization(cli, images, tmp_path):
    path = tmp_path / "vit.safetensors"
    from safetensors.torch import save_file

    save_file(random_timm(VIT, seed=5).state_dict(), str(path))
    for layer, name, shape in [(None, "features", (8, 192)), ("local", "local", (8, 4, 192))]:
        out = tmp_path / f"{name}.h5"
        args = ["--layer", layer] if layer else []
        r = cli("featurize", images[0], "--out", out, "--arch", VIT, "--init", f"weights:{path}",
                "--input-size", "32", *args, *TINY)
        assert r.code == 0, r.err
        with open_store(out) as store:
            assert store.array(name).shape == shape
            attrs = store.attrs
        assert attrs["arch"] == VIT and attrs["layer"] == ("last" if layer else "pooled")
        assert attrs["checkpoint"] == models.file_checksum(str(path)) and attrs["normalize"] == "timm"
        assert list(attrs["mean"]) == [0.5, 0.5, 0.5]


def test_finetune_a_timm_model_then_featurize_its_checkpoint(cli, images, tmp_path, resnet_state):
    weights = tmp_path / "r18.pth"
    torch.save(resnet_state, weights)
    out = tmp_path / "model.pt"
    r = cli("finetune", *images, "--out", out, "--arch", RESNET, "--init", f"weights:{weights}", "--epochs", "1",
            "--split", "none", "--input-size", "32", *TINY)
    assert r.code == 0, r.err
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["arch"] == RESNET and ckpt["num_classes"] == 2 and ckpt["normalize"] == "timm"
    assert ckpt["options"]["lr"] == 0.001 and ckpt["options"]["head_lr_mult"] == 10.0  # the weights recipe
    assert ckpt["state_dict"]["fc.weight"].shape == (2, 512)
    probs = tmp_path / "probs.h5"
    assert cli("featurize", images[0], "--out", probs, "--init", f"checkpoint:{out}", "--layer", "probs",
               *TINY).code == 0
    with open_store(probs) as store:
        p, attrs = store.read("features"), store.attrs
    assert p.shape == (8, 2) and np.allclose(p.sum(1), 1, atol=1e-5) and attrs["arch"] == RESNET
    assert attrs["input_size"] == 32 and attrs["normalize"] == "timm"
    # and it can be fine-tuned again (the loop's next iteration), as weights too
    assert cli("finetune", *images, "--out", tmp_path / "again.pt", "--init", f"checkpoint:{out}", "--new-head",
               "--epochs", "1", "--split", "none", *TINY).code == 0
    assert same_weights(models.build(models.parse_init(f"weights:{out}"), RESNET, None, input_size=32).model,
                        ckpt["state_dict"])


def test_freeze_backbone_keeps_a_timm_backbone_as_loaded(cli, images, tmp_path, resnet_state):
    weights = tmp_path / "r18.pth"
    torch.save(resnet_state, weights)
    out = tmp_path / "frozen.pt"
    r = cli("finetune", *images, "--out", out, "--arch", RESNET, "--init", f"weights:{weights}", "--epochs", "2",
            "--split", "none", "--input-size", "32", "--freeze-backbone", *TINY)
    assert r.code == 0, r.err
    after = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    assert same_weights(after, resnet_state)
    assert not torch.equal(after["fc.weight"][:2], resnet_state["fc.weight"][:2])


# -- gray images ------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [RESNET, VIT])
def test_replicating_gray_equals_summing_the_first_conv_over_channels(arch):
    """The documented rule: gray replicated to 3 channels = a 1-channel first conv whose
    weights are the sum over the input channels (exact when channels are normalized alike)."""
    kwargs = {"img_size": 32} if arch == VIT else {}
    three = random_timm(arch, seed=9, **kwargs)
    one = random_timm(arch, seed=9, in_chans=1, **kwargs)
    first = three.pretrained_cfg["first_conv"]
    state = dict(three.state_dict())
    state[first + ".weight"] = state[first + ".weight"].sum(dim=1, keepdim=True)
    one.load_state_dict(state)
    gray = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 32, 32), dtype=np.uint8).copy())
    from ldpo.common.images.imagedata import Preprocess

    x3 = Preprocess(32, "zscore")(gray.numpy())  # ldpo's input: gray replicated, then normalized
    x1 = x3[:, :1]
    with torch.inference_mode():
        f3 = three.forward_head(three.forward_features(x3), pre_logits=True)
        f1 = one.forward_head(one.forward_features(x1), pre_logits=True)
    assert torch.allclose(f3, f1, atol=1e-4, rtol=1e-4)


# -- nothing downloads ------------------------------------------------------------------
def test_the_hub_is_offline_and_a_download_attempt_exits_2(cli, images, tmp_path, monkeypatch):
    models.import_timm()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    import huggingface_hub

    def downloading(*args, **kwargs):
        return huggingface_hub.hf_hub_download("timm/resnet18.a1_in1k", "model.safetensors")

    monkeypatch.setattr(timm, "create_model", downloading)
    r = cli("featurize", images[0], "--out", tmp_path / "f.h5", "--arch", RESNET, "--input-size", "32", "-q")
    assert r.code == 2 and "tried to download" in r.err and "--init weights:PATH" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1


def test_two_gloo_processes_finetune_a_timm_model(images, tmp_path, resnet_state):
    import subprocess
    import sys

    weights = tmp_path / "r18.pth"
    torch.save(resnet_state, weights)
    out = tmp_path / "ddp" / "model.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "-m", "ldpo.stages.finetune", str(images[0]), str(images[1]), "--out", str(out), "--epochs", "1",
           "--split", "none", "--device", "cpu", "--arch", RESNET, "--init", f"weights:{weights}",
           "--input-size", "32", "--freeze-backbone", *TINY]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["options"]["world"] == 2 and ckpt["arch"] == RESNET and ckpt["num_classes"] == 2
    assert same_weights(ckpt["state_dict"], resnet_state)


def test_an_mlp_head_trains_on_a_frozen_backbone_and_travels_with_the_checkpoint(cli, images, tmp_path,
                                                                                   resnet_state):
    weights = tmp_path / "r18.pth"
    torch.save(resnet_state, weights)
    out = tmp_path / "mlp.pt"
    args = ["--epochs", "1", "--split", "none", *TINY]
    r = cli("finetune", *images, "--out", out, "--arch", RESNET, "--init", f"weights:{weights}", "--input-size", "32",
            "--head", "mlp", "--freeze-backbone", *args)
    assert r.code == 0, r.err
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["head"] == "mlp" and ckpt["state_dict"]["fc.0.weight"].shape == (models.MLP_HIDDEN, 512)
    assert ckpt["state_dict"]["fc.2.weight"].shape == (2, models.MLP_HIDDEN)
    assert same_weights(ckpt["state_dict"], resnet_state)
    probs = tmp_path / "probs.h5"
    assert cli("featurize", images[0], "--out", probs, "--init", f"checkpoint:{out}", "--layer", "probs",
               *TINY).code == 0
    with open_store(probs) as store:
        assert store.read("features").shape == (8, 2)
    again = tmp_path / "again.pt"  # the next iteration keeps the kind of head unless told
    assert cli("finetune", *images, "--out", again, "--init", f"checkpoint:{out}", "--new-head", *args).code == 0
    assert torch.load(again, map_location="cpu", weights_only=True)["head"] == "mlp"
    r = cli("finetune", *images, "--out", tmp_path / "c.pt", "--head", "mlp", "--head-init", "centroids", *args)
    assert r.code == 2 and "needs a linear head" in r.err
