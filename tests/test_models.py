"""The model registry: layer shapes, seeded random init, weights files, input transforms, sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldpo.common.images import imagedata
from ldpo.common.nets import models
from ldpo.common.errors import InputError

# (arch, input px) -> layer -> per-image shape; small inputs keep the big nets cheap.
SHAPES = {
    ("alexnet", 64): {"conv5": (9, 256), "fc6": (4096,), "fc7": (4096,), "probs": (1000,),
                      "multiscale": (64 + 192 + 384 + 256 + 256,)},
    ("alexnet_bn", 64): {"conv5": (9, 256), "fc6": (4096,), "fc7": (4096,), "probs": (1000,),
                         "multiscale": (64 + 192 + 384 + 256 + 256,)},
    ("googlenet", 64): {"inc5b": (4, 1024), "pool5": (1024,), "probs": (1000,), "multiscale": (192 + 480 + 832 + 1024,)},
    ("vgg16_bn", 32): {"conv5": (4, 512), "fc7": (4096,), "probs": (1000,), "multiscale": (64 + 128 + 256 + 512 + 512,)},
    ("resnet18", 64): {"layer4": (4, 512), "avgpool": (512,), "probs": (1000,), "multiscale": (64 + 128 + 256 + 512,)},
    ("resnet50", 64): {"layer4": (4, 2048), "avgpool": (2048,), "probs": (1000,), "multiscale": (256 + 512 + 1024 + 2048,)},
}


@pytest.mark.parametrize("arch,size", list(SHAPES))
def test_every_layer_has_its_documented_shape(arch, size):
    assert set(SHAPES[arch, size]) == set(models.LAYERS[arch])
    built = models.build(models.Init("random"), arch, None, seed=0, input_size=size)
    x = torch.rand(2, 3, size, size)
    for layer, shape in SHAPES[arch, size].items():
        extractor = models.Extractor(built.model, arch, layer).eval()
        with torch.inference_mode():
            out = extractor(x)
        assert tuple(out.shape) == (2, *shape), (arch, layer)
        if layer == "probs":
            assert torch.allclose(out.sum(1), torch.ones(2), atol=1e-5)
        extractor.detach_hook()


def test_multiscale_is_every_stage_pooled_and_normalized():
    """Each stage's block of ``multiscale`` is that stage's global average, L2-normalized: for ResNet-18
    the last block is avgpool's output normalized, and every block has unit length."""
    built = models.build(models.Init("random"), "resnet18", None, seed=0, input_size=64)
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        stages = models.Extractor(built.model, "resnet18", "multiscale").eval()
        multi = stages(x)
        stages.detach_hook()
        avgpool = models.Extractor(built.model, "resnet18", "avgpool").eval()(x)
    blocks = torch.split(multi, [64, 128, 256, 512], dim=1)
    for block in blocks:
        assert torch.allclose(block.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(blocks[-1], torch.nn.functional.normalize(avgpool, dim=1), atol=1e-5)
    assert not torch.allclose(blocks[0][0], blocks[0][1])  # images differ at the shallowest stage too


def test_paper_sizes_at_224_px():
    alexnet = models.build(models.Init("random"), "alexnet", None).model
    assert models.Extractor(alexnet, "alexnet", "conv5").output_shape(224) == (13 * 13, 256)
    googlenet = models.build(models.Init("random"), "googlenet", None).model
    assert models.Extractor(googlenet, "googlenet", "inc5b").output_shape(224) == (7 * 7, 1024)


def test_input_below_the_minimum_is_an_input_error():
    with pytest.raises(InputError, match="at least 63"):
        models.build(models.Init("random"), "alexnet", None, input_size=62)
    net = models.build(models.Init("random"), "alexnet_bn", None, input_size=63).model
    assert models.Extractor(net, "alexnet_bn", "fc7").output_shape(63) == (4096,)
    with pytest.raises(InputError, match="conv5"):
        models.check_layer("alexnet", "avgpool")


def backbone(model, arch):
    head = models.HEAD[arch] + "."
    return {k: v for k, v in model.state_dict().items() if not k.startswith(head)}


@pytest.mark.parametrize("arch", ["resnet18", "alexnet_bn"])
def test_random_backbone_depends_on_the_seed_only_not_on_the_head(arch):
    a = models.build(models.Init("random"), arch, None, seed=7).model  # featurize: 1000-way head
    b = models.build(models.Init("random"), arch, 5, seed=7).model  # finetune: 5 classes
    c = models.build(models.Init("random"), arch, 5, seed=8).model
    ka, kb = backbone(a, arch), backbone(b, arch)
    assert ka.keys() == kb.keys()
    assert all(torch.equal(ka[k], kb[k]) for k in ka)
    assert models.num_outputs(b, arch) == 5
    assert not all(torch.equal(ka[k], v) for k, v in backbone(c, arch).items())
    assert torch.equal(models.build(models.Init("random"), arch, 5, seed=7).model.state_dict()[models.HEAD[arch] + ".weight"],
                       b.state_dict()[models.HEAD[arch] + ".weight"])


def test_weights_file_loads_exactly_and_alexnet_bn_takes_plain_alexnet_weights(tmp_path):
    from torchvision.models import alexnet

    torch.manual_seed(3)
    reference = alexnet().state_dict()
    path = tmp_path / "alexnet.pth"
    torch.save(reference, path)
    built = models.build(models.parse_init(f"weights:{path}"), None, None, seed=0)
    assert built.arch == "alexnet" and built.checksum
    assert all(torch.equal(v, reference[k]) for k, v in built.model.state_dict().items())
    bn = models.build(models.parse_init(f"weights:{path}"), "alexnet_bn", 4, seed=0).model
    assert torch.equal(bn.features[0].weight, reference["features.0.weight"])
    assert isinstance(bn.features[1], torch.nn.BatchNorm2d) and models.num_outputs(bn, "alexnet_bn") == 4
    with pytest.raises(InputError, match="does not fit resnet18"):
        models.build(models.parse_init(f"weights:{path}"), "resnet18", None)


@pytest.mark.parametrize("text", ["imagenet", "weights:https://download.pytorch.org/models/alexnet.pth",
                                  "weights:download"])
def test_nothing_is_downloaded(text):
    with pytest.raises(InputError, match="nothing is downloaded"):
        models.parse_init(text)


def test_bad_init_texts(tmp_path):
    with pytest.raises(InputError, match="no such checkpoint"):
        models.parse_init(f"checkpoint:{tmp_path / 'nope.pt'}")
    with pytest.raises(InputError, match="use random"):
        models.parse_init("scratch")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot load"):
        models.build(models.parse_init(f"checkpoint:{junk}"))


def test_grayscale_becomes_three_channels_and_zscore_is_per_image():
    gray = np.random.default_rng(0).integers(0, 256, (2, 40, 40), dtype=np.uint8)
    x = imagedata.to_float3(gray)
    assert x.shape == (2, 3, 40, 40) and torch.equal(x[:, 0], x[:, 2])
    assert torch.allclose(x[1, 1], torch.from_numpy(gray[1]).float() / 255)
    rgb = np.stack([gray] * 3, axis=-1)
    assert torch.equal(imagedata.to_float3(rgb), x)
    dark = (gray * np.array([1.0, 0.2])[:, None, None]).astype(np.uint8)
    z = imagedata.Preprocess(32, "zscore")(dark)
    assert z.shape == (2, 3, 32, 32) and torch.equal(z[:, 0], z[:, 1])
    assert torch.allclose(z.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(z.std(dim=(1, 2, 3), correction=0), torch.ones(2), atol=1e-4)
    for how, block in [("imagenet", gray), ("imagenet", rgb), ("zscore", rgb)]:  # the fast path = the plain one
        plain = imagedata.normalize(imagedata.resize(imagedata.to_float3(block), 32), how)
        assert torch.allclose(imagedata.Preprocess(32, how)(block), plain, atol=1e-4)
    imnet = imagedata.Preprocess(40, "imagenet")(np.full((1, 40, 40), 124, np.uint8))
    assert torch.allclose(imnet[0, 0], torch.full((40, 40), (124 / 255 - 0.485) / 0.229), atol=1e-5)


def test_new_head_replaces_a_head_of_the_same_size(tmp_path):
    """The loop fine-tunes on a new clustering each iteration: same K, new meaning."""
    built = models.build(models.Init("random"), "resnet18", 4, seed=1)
    weight = built.model.fc.weight.detach().clone()
    with torch.no_grad():
        built.model.fc.weight.add_(1.0)  # as if trained
    path = tmp_path / "m.pt"
    torch.save({"arch": "resnet18", "num_classes": 4, "classes": [0, 1, 2, 3], "input_size": 64,
                "normalize": "imagenet", "state_dict": built.model.state_dict(), "options": {}}, path)
    kept = models.build(models.Init("checkpoint", str(path)), None, 4, seed=1).model
    fresh = models.build(models.Init("checkpoint", str(path)), None, 4, seed=1, new_head=True).model
    assert torch.equal(kept.fc.weight, weight + 1.0)
    assert torch.equal(fresh.fc.weight, weight)  # drawn anew from the head seed
    assert torch.equal(fresh.layer4[0].conv1.weight, kept.layer4[0].conv1.weight)  # backbone kept


def test_sobel_sees_edges_not_intensity():
    flat = torch.full((1, 3, 16, 16), 0.7)
    assert models.sobel(flat).abs().max() < 1e-6  # no edges in a flat image, whatever its brightness
    step = torch.zeros(1, 3, 16, 16)
    step[..., 8:] = 1.0  # a vertical edge
    out = models.sobel(step)
    assert out[:, 0].abs().max() > 1 and out[:, 1].abs().max() < 1e-6  # x-gradient only
    assert torch.allclose(models.sobel(step * 3 + 5), models.sobel(step) * 3)  # offset gone, scale kept
    gray = models.sobel(step, keep_gray=True)
    assert torch.allclose(gray[:, 0], step[:, 0]) and torch.allclose(gray[:, 1], out[:, 0])


def test_input_filter_runs_before_the_first_layer_and_is_recorded():
    init = models.parse_init("random")
    plain = models.build(init, "resnet18", 4, seed=1, input_size=32)
    sobel = models.build(init, "resnet18", 4, seed=1, input_size=32, input_filter="sobel")
    assert plain.input_filter == "none" and sobel.input_filter == "sobel"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(sobel.model.eval()(x), plain.model.eval()(models.sobel(x)), atol=1e-5)
        assert not torch.allclose(sobel.model(x), plain.model(x), atol=1e-3)
    assert sobel.model.state_dict().keys() == plain.model.state_dict().keys()  # nothing added to the weights
    with pytest.raises(InputError, match="--input-filter"):
        models.build(init, "resnet18", 4, input_filter="laplace")


def test_the_recipe_decides_defaults_by_the_origin_of_the_weights(tmp_path):
    random = models.build(models.parse_init("random"), None, 3, store_side=48)
    assert (random.arch, random.input_size, random.normalize, random.origin) == ("resnet18", 48, "zscore", "random")
    big = models.build(models.parse_init("random"), "resnet18", 3, store_side=512)
    assert big.input_size == 224  # capped: the store's side only when it is smaller
    tiny = models.build(models.parse_init("random"), "alexnet_bn", 3, store_side=32)
    assert tiny.input_size == models.MIN_INPUT["alexnet_bn"]  # never below what the net needs
    torch.save(models.build(models.parse_init("random"), "alexnet", 1000).model.state_dict(), tmp_path / "a.pth")
    weights = models.build(models.parse_init(f"weights:{tmp_path / 'a.pth'}"), None, 3, store_side=48)
    assert (weights.arch, weights.input_size, weights.normalize, weights.origin) == ("alexnet", 224, "imagenet",
                                                                                     "weights")
    assert models.RECIPES["random"].lr == 0.01 and models.RECIPES["weights"].head_lr_mult == 10
    assert models.resolve_layer("googlenet", "local") == "inc5b" and models.resolve_layer("resnet50", None) == "avgpool"


def test_weights_with_another_head_keep_the_backbone(tmp_path):
    source = models.build(models.parse_init("random"), "resnet18", 15, seed=4)
    torch.save(source.model.state_dict(), tmp_path / "src.pth")
    built = models.build(models.parse_init(f"weights:{tmp_path / 'src.pth'}"), "resnet18", 7, seed=9)
    assert models.num_outputs(built.model, "resnet18") == 7
    assert torch.equal(built.model.state_dict()["layer4.1.conv2.weight"], source.model.state_dict()["layer4.1.conv2.weight"])
    broken = {k: v for k, v in source.model.state_dict().items() if not k.startswith("layer4.1.")}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(InputError, match=r"keys missing, e\.g\. \['layer4\.1\."):
        models.build(models.parse_init(f"weights:{tmp_path / 'broken.pth'}"), "resnet18", 7)


def test_centroid_head_is_the_nearest_centroid_classifier():
    built = models.build(models.parse_init("random"), "resnet18", 3, seed=0, input_size=32)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 512)) * 3
    targets = torch.from_numpy(rng.integers(0, 3, 300))
    feats = torch.from_numpy(centres[targets.numpy()] + rng.normal(size=(300, 512))).float()
    models.set_head_to_centroids(built.model, "resnet18", feats, targets)
    head = built.model.fc
    with torch.no_grad():
        logits = head(feats)
    means = torch.stack([feats[targets == c].mean(0) for c in range(3)])
    nearest = torch.cdist(feats, means).argmin(1)
    assert torch.equal(logits.argmax(1), nearest) and (nearest == targets).float().mean() > 0.99
    assert 0.5 < float(logits.std()) < 50  # logit gaps of order one, not saturated


def test_intensity_jitter_stays_in_range_and_follows_its_draws():
    x = torch.rand(2, 3, 16, 16)
    u = torch.tensor([[0.5, -0.2, 0.1], [-1.0, 1.0, -1.0]])
    a = imagedata.jitter_intensity(x, u, 0.3)
    assert torch.equal(a, imagedata.jitter_intensity(x, u, 0.3)) and not torch.equal(a, x)
    assert torch.allclose(imagedata.jitter_intensity(x, torch.zeros(2, 3), 0.3), x, atol=1e-6)  # draws 0: unchanged
    assert a.min() >= 0 and a.max() <= 1
    brighter = imagedata.jitter_intensity(x, torch.tensor([[0.0, 0.0, 1.0]] * 2), 0.3)
    assert (brighter.mean() - x.mean()).item() > 0.1
