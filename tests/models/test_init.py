"""Seeded initialisation: deterministic, torch-default-equivalent, no global random state."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedpress.models import (
    CNN,
    MLP,
    ResNet18,
    SimpleConvNet,
    build_model,
    init_parameters,
    list_models,
)
from fedpress.rng import derive

CIFAR_ONLY = {"vgg11", "vgg16", "vgg19"}
# flare_fc (36 M params) is covered by its own tests; skipping it keeps this file fast.
NAMES = [n for n in list_models() if n != "flare_fc"]


def shape_for(name: str) -> tuple[int, ...]:
    return (3, 32, 32) if name in CIFAR_ONLY else (1, 28, 28)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_parameters_different_seed_different(name):
    shape = shape_for(name)
    a = build_model(name, shape, 10, derive(7, "init"))
    b = build_model(name, shape, 10, derive(7, "init"))
    c = build_model(name, shape, 10, derive(8, "init"))
    sa, sb, sc = state(a), state(b), state(c)
    assert sa.keys() == sb.keys() == sc.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    # every weight tensor differs between seeds (norm layers are constant by design)
    for key, p in a.named_parameters():
        if p.ndim > 1:
            assert not torch.equal(p, dict(c.named_parameters())[key]), key


def test_no_generator_means_seed_zero():
    a = build_model("mlp", (1, 28, 28), 10)
    b = build_model("mlp", (1, 28, 28), 10, derive(0, "init"))
    for (ka, pa), (kb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert ka == kb and torch.equal(pa, pb)


def test_building_models_leaves_global_rng_untouched():
    before = torch.get_rng_state()
    for name in NAMES:
        build_model(name, shape_for(name), 10, derive(1, "init"))
    MLP(10, [5], 2)  # direct construction, no generator given
    assert torch.equal(torch.get_rng_state(), before)


def test_torch_scheme_matches_torch_default_init_draw_for_draw():
    """A generator seeded s gives what torch's own init gives after torch.manual_seed(s)."""
    with torch.random.fork_rng(devices=[]):  # restores the global state afterwards
        torch.manual_seed(123)
        ref_linears = [nn.Linear(784, 32), nn.Linear(32, 32), nn.Linear(32, 10)]
        torch.manual_seed(123)
        ref_convs = [
            nn.Conv2d(1, 32, 5, padding=2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.Linear(3136, 512),
            nn.Linear(512, 10),
        ]
    mlp = MLP(784, [32, 32], 10, generator=torch.Generator().manual_seed(123))
    ours = [*mlp.hidden, mlp.head]
    cnn = CNN(generator=torch.Generator().manual_seed(123))
    ours_cnn = [cnn.conv1, cnn.conv2, cnn.fc1, cnn.fc2]
    for ref, got in zip(ref_linears + ref_convs, ours + ours_cnn, strict=True):
        assert torch.equal(ref.weight, got.weight)
        assert torch.equal(ref.bias, got.bias)


def test_torch_scheme_bounds():
    model = CNN(generator=derive(4, "init"))
    for layer in (model.conv2, model.fc1):
        fan_in = layer.weight[0].numel()
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt 5) == U(-1/sqrt(fan_in), ...)
        assert layer.weight.abs().max() <= bound
        assert layer.bias.abs().max() <= bound
        # uniform on [-b, b] has std b / sqrt(3)
        assert abs(layer.weight.std().item() - bound / math.sqrt(3)) < 0.05 * bound


def test_glorot_normal_scheme():
    model = build_model("flare_cnn", (1, 28, 28), 10, derive(5, "init"), init="glorot_normal")
    fc1 = model.fc1  # 1024 -> 512
    sigma = math.sqrt(2 / (1024 + 512))
    assert torch.count_nonzero(fc1.bias) == 0
    assert fc1.weight.abs().max() <= 2 * sigma / 0.87962566103423978 + 1e-6
    assert abs(fc1.weight.std().item() - sigma) < 0.03 * sigma  # truncated std is sigma


def test_zeros_scheme():
    model = build_model("logreg", (112,), 1, init="zeros")
    assert all(torch.count_nonzero(p) == 0 for p in model.parameters())


def test_norm_layers_and_buffers_are_initialised():
    model = ResNet18(generator=derive(6, "init"))
    bn = model.layer2[0].bn1
    assert torch.equal(bn.weight, torch.ones(128)) and torch.equal(bn.bias, torch.zeros(128))
    assert torch.equal(bn.running_mean, torch.zeros(128))
    assert torch.equal(bn.running_var, torch.ones(128))
    assert bn.num_batches_tracked.item() == 0
    gn = SimpleConvNet(generator=derive(6, "init")).norm
    assert torch.equal(gn.weight, torch.ones(32)) and torch.equal(gn.bias, torch.zeros(32))


def test_init_parameters_reinitialises_an_existing_model():
    model = MLP(8, [4], 2, generator=derive(1, "init"))
    init_parameters(model, derive(2, "init"))
    fresh = MLP(8, [4], 2, generator=derive(2, "init"))
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)


def test_init_parameters_rejects_unknown_layers_and_schemes():
    with pytest.raises(TypeError, match="Embedding"):
        init_parameters(nn.Sequential(nn.Embedding(4, 2)), derive(0, "init"))
    with pytest.raises(ValueError, match="glorot_normal"):
        init_parameters(nn.Linear(2, 2), derive(0, "init"), scheme="xavier")
    with pytest.raises(TypeError, match="Generator"):
        init_parameters(nn.Linear(2, 2), 42)  # type: ignore[arg-type]
