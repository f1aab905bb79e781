"""The architecture registry: a new architecture is one record, and every public function takes it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ldpo.common.nets import archs, models
from ldpo.common.nets.archs import Arch, Layer
from ldpo.common.nets.checkpoint import Checkpoint
from ldpo.common.errors import InputError


class Tiny(nn.Module):
    """A conv, a global pool and a 1000-way head: the smallest thing that looks like a CNN."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(6, 1000)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)))


#: the ONE record the new architecture needs
TINY = Arch("tiny-test", lambda size, transform_input: Tiny(),
            {"conv": Layer("body.3", "local"), "pool": Layer("pool", "global"), "probs": Layer("", "probs"),
             "multiscale": Layer("body.1,body.3", "multiscale")},
            default_layer="pool", local_layer="conv", head="fc", min_input=4)


@pytest.fixture
def tiny():
    models.register_arch(TINY)
    yield TINY.name
    models.unregister_arch(TINY.name)


def test_a_registered_record_is_built_and_featurized_through_the_public_functions(tiny):
    assert models.check_arch(tiny) == tiny and tiny in models.ARCHS and set(models.LAYERS[tiny]) == set(TINY.layers)
    built = models.build(models.Init("random"), tiny, None, seed=2, input_size=12, normalize="zscore")
    assert built.arch == tiny and models.num_outputs(built.model, tiny) == 1000 and built.head == "linear"
    x = torch.rand(3, 3, 12, 12)
    shapes = {"pool": (3, 6), "conv": (3, 144, 6), "probs": (3, 1000), "multiscale": (3, 8 + 6)}
    with torch.no_grad():
        for layer, shape in shapes.items():
            extractor = models.Extractor(built.model, tiny, layer).eval()
            assert tuple(extractor(x).shape) == shape, layer
            extractor.detach_hook()
        pooled = models.Extractor(built.model, tiny, models.resolve_layer(tiny, None)).eval()
        got, _ = pooled(x), pooled.detach_hook()
        whole = built.model.pool(built.model.body(x))
    assert torch.allclose(got, whole)  # the hook stops at the named module and returns its output
    assert models.resolve_layer(tiny, "local") == "conv"
    assert models.Extractor(built.model, tiny, "conv").output_shape(4) == (16, 6)
    with pytest.raises(InputError, match="needs at least 4 px"):
        models.build(models.Init("random"), tiny, None, input_size=3)
    with pytest.raises(InputError, match="has layers conv, pool"):
        models.check_layer(tiny, "avgpool")
    assert tiny in archs.names_text() and f"{tiny} conv|pool" in archs.layers_text()  # --help texts follow


def test_its_head_is_replaced_seeded_and_read_where_the_record_says(tiny):
    a = models.build(models.Init("random"), tiny, None, seed=7).model
    b = models.build(models.Init("random"), tiny, 5, seed=7).model
    c = models.build(models.Init("random"), tiny, 5, seed=7).model
    backbone = [k for k in a.state_dict() if not k.startswith("fc.")]
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in backbone)  # the backbone: the seed alone
    assert torch.equal(b.fc.weight, c.fc.weight) and models.num_outputs(b, tiny) == 5
    x = torch.rand(4, 3, 8, 8)
    assert torch.allclose(models.head_inputs(b, tiny, x), b.pool(b.body(x)))
    assert models.head_parameters(b, tiny) == list(b.fc.parameters())
    models.set_head_to_centroids(b, tiny, torch.rand(10, 6), torch.arange(10) % 5)
    assert models.Extractor(b, tiny, "probs").eval()(x).shape == (4, 5)
    mlp = models.build(models.Init("random"), tiny, 3, seed=7, head="mlp")
    assert mlp.head == "mlp" and models.head_in_features(mlp.model, tiny) == 6
    assert models.num_outputs(mlp.model, tiny) == 3 and models.head_kind(mlp.model, tiny) == "mlp"


def test_its_weights_files_and_checkpoints_load(tiny, tmp_path):
    source = models.build(models.Init("random"), tiny, 4, seed=3, input_size=8)
    torch.save({"model": {f"module.{k}": v for k, v in source.model.state_dict().items()}}, tmp_path / "w.pth")
    fitted = models.build(models.parse_init(f"weights:{tmp_path / 'w.pth'}"), tiny, 9, seed=5).model
    assert models.num_outputs(fitted, tiny) == 9  # the file's 4-class head is dropped
    assert all(torch.equal(v, source.model.state_dict()[k]) for k, v in fitted.state_dict().items()
               if not k.startswith("fc."))
    Checkpoint(arch=tiny, num_classes=4, classes=[3, 5, 8, 9], state_dict=source.model.state_dict(),
               input_size=10, normalize="zscore", origin="random").save(tmp_path / "model.pt")
    again = models.build(models.parse_init(f"checkpoint:{tmp_path / 'model.pt'}"), seed=11)
    assert again.arch == tiny and again.classes == [3, 5, 8, 9] and again.input_size == 10
    assert all(torch.equal(v, source.model.state_dict()[k]) for k, v in again.model.state_dict().items())


def test_the_registry_refuses_a_taken_name_timm_names_and_records_without_their_layers(tiny):
    with pytest.raises(ValueError, match="already registered"):
        models.register_arch(TINY)
    with pytest.raises(ValueError, match="reserved"):
        models.register_arch(Arch("timm:x", Tiny, {"pool": Layer("pool", "global")}, "pool", "pool", "fc", 4))
    with pytest.raises(ValueError, match="'conv' is not one of"):
        Arch("bad", Tiny, {"pool": Layer("pool", "global")}, default_layer="pool", local_layer="conv",
             head="fc", min_input=4)


def test_unregistered_it_is_unknown_again():
    assert "tiny-test" not in models.ARCHS and "tiny-test" not in models.LAYERS
    with pytest.raises(InputError, match="unknown architecture"):
        models.check_arch("tiny-test")


def test_the_old_tables_are_views_of_the_records():
    for name, record in models.REGISTRY.items():
        assert models.LAYERS[name] is record.layers and models.HEAD[name] == record.head
        assert models.DEFAULT_LAYER[name] == models.resolve_layer(name, None) == record.default_layer
        assert models.DEFAULT_LOCAL_LAYER[name] == models.resolve_layer(name, "local")
        assert models.MIN_INPUT[name] == models.min_input(name) == record.min_input
    assert models.arch_record("timm:resnet18").layers is models.TIMM_LAYERS
    assert models.recipe_for("random", "resnet50") == models.RECIPES["random"]
