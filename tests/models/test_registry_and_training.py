"""Registry errors, torch.func.functional_call compatibility, training signal, norm buffers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from fedpress.models import build_model, list_models, model_options
from fedpress.rng import derive

EXPECTED_NAMES = {
    "mlp",
    "cnn",
    "lenet5",
    "vgg11",
    "vgg16",
    "vgg19",
    "resnet18",
    "simple_convnet",
    "flare_cnn",
    "flare_fc",
    "logreg",
}
MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


def test_list_models():
    assert set(list_models()) == EXPECTED_NAMES
    assert list_models() == sorted(list_models())


# ---------------------------------------------------------------------- errors


def test_unknown_model_name_is_named_with_allowed_values():
    with pytest.raises(ValueError, match="resnet50") as info:
        build_model("resnet50", CIFAR, 10)
    assert "resnet18" in str(info.value) and "simple_convnet" in str(info.value)


def test_unknown_option_is_named_with_allowed_values():
    with pytest.raises(ValueError, match="depth") as info:
        build_model("mlp", MNIST, 10, depth=3)
    assert "widths" in str(info.value)
    with pytest.raises(ValueError, match="norm"):
        build_model("cnn", MNIST, 10, norm="gn")  # the FedAvg CNN has no norm layers


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("resnet18", {"norm": "layer"}, "'layer'"),
        ("vgg11", {"norm": "batch"}, "'batch'"),
        ("vgg16", {"classifier": "deep"}, "'deep'"),
        ("mlp", {"init": "xavier"}, "'xavier'"),
        ("resnet18", {"gn_groups": 0}, "gn_groups"),
        ("resnet18", {"norm": "gn", "gn_groups": 48}, "groups"),
        ("simple_convnet", {"dropout": 1.5}, "dropout"),
        ("mlp", {"widths": 200}, "widths"),
        ("mlp", {"widths": [200, 0]}, "width"),
        ("lenet5", {"padding": -1}, "padding"),
    ],
)
def test_bad_option_values_raise_value_error(name, options, needle):
    shape = CIFAR if name in {"resnet18", "vgg11", "vgg16", "simple_convnet"} else MNIST
    with pytest.raises(ValueError, match=needle):
        build_model(name, shape, 10, **options)


def test_bad_shapes_classes_and_generator():
    with pytest.raises(ValueError, match="input_shape"):
        build_model("cnn", (784,), 10)
    with pytest.raises(ValueError, match="too small"):
        build_model("vgg16", MNIST, 10)  # five pools cannot fit in 28x28
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", MNIST, 0)
    with pytest.raises(TypeError, match="Generator"):
        build_model("mlp", MNIST, 10, generator=0)  # type: ignore[arg-type]


def test_model_options_lists_defaults():
    assert model_options("resnet18") == {"norm": "bn", "gn_groups": 32, "init": "torch"}
    assert model_options("simple_convnet")["dropout"] == 0.0


# ---------------------------------------------------------------------- functional_call

FUNCTIONAL_CASES = [
    ("mlp", MNIST, {}),
    ("logreg", MNIST, {}),
    ("cnn", MNIST, {}),
    ("lenet5", CIFAR, {}),
    ("flare_cnn", MNIST, {}),
    ("simple_convnet", CIFAR, {}),
    ("vgg11", CIFAR, {"norm": "gn"}),
    # ResNet18 is fully convolutional; 16x16 inputs keep these tests fast.
    ("resnet18", (3, 16, 16), {"norm": "gn"}),
    ("resnet18", (3, 16, 16), {"norm": "bn"}),
]


@pytest.mark.parametrize(("name", "shape", "options"), FUNCTIONAL_CASES)
def test_functional_call_matches_forward(name, shape, options):
    model = build_model(name, shape, 10, derive(0, "init"), **options).eval()
    x = torch.randn(4, *shape, generator=derive(1, "x"))
    params = {k: p.detach().clone() for k, p in model.named_parameters()}
    with torch.no_grad():
        expected = model(x)
        got = functional_call(model, params, (x,))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)

    # The dict really drives the computation: scaled parameters give the scaled model's output.
    scaled = {k: 0.5 * v for k, v in params.items()}
    twin = build_model(name, shape, 10, derive(0, "init"), **options).eval()
    with torch.no_grad():
        for k, p in twin.named_parameters():
            p.copy_(scaled[k])
        torch.testing.assert_close(functional_call(model, scaled, (x,)), twin(x))


@pytest.mark.parametrize(("name", "shape", "options"), FUNCTIONAL_CASES)
def test_functional_call_gives_a_gradient_for_every_parameter(name, shape, options):
    model = build_model(name, shape, 10, derive(0, "init"), **options)
    x = torch.randn(4, *shape, generator=derive(1, "x"))
    y = torch.arange(4) % 10
    params = {k: p.detach().clone().requires_grad_() for k, p in model.named_parameters()}
    loss = F.cross_entropy(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()))
    for (k, _), g in zip(params.items(), grads, strict=True):
        assert g is not None and torch.isfinite(g).all(), k
        assert g.abs().sum() > 0, k
    # the module's own parameters were not touched
    for k, p in model.named_parameters():
        assert p.grad is None, k


@pytest.mark.parametrize(
    ("name", "shape", "options"),
    [("simple_convnet", CIFAR, {}), ("resnet18", (3, 16, 16), {"norm": "gn"})],
)
def test_vmap_over_clients_matches_a_loop(name, shape, options):
    """The vectorized executor runs many clients' models as one vmap over stacked params."""
    models = [build_model(name, shape, 10, derive(i, "init"), **options) for i in range(3)]
    params, buffers = stack_module_state(models)
    x = torch.randn(3, 4, *shape, generator=derive(1, "x"))  # (clients, B, C, H, W)

    def forward(p, b, xb):
        return functional_call(models[0], (p, b), (xb,))

    with torch.no_grad():
        batched = vmap(forward)(params, buffers, x)  # (clients, B, 10)
        looped = torch.stack([m(xb) for m, xb in zip(models, x, strict=True)])
    torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------- training signal


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [
        ("mlp", MNIST, 10),
        ("logreg", (112,), 1),
        ("logreg", MNIST, 10),
        ("cnn", MNIST, 10),
        ("lenet5", MNIST, 10),
        ("flare_cnn", MNIST, 10),
        ("simple_convnet", CIFAR, 10),
    ],
)
def test_gradient_steps_reduce_loss(name, shape, classes):
    model = build_model(name, shape, classes, derive(0, "init"))
    g = derive(2, "batch")
    x = torch.randn(8, *shape, generator=g)
    if classes == 1:
        y = torch.randint(0, 2, (8, 1), generator=g).float()

        def loss_fn():
            return F.binary_cross_entropy_with_logits(model(x), y)
    else:
        y = torch.randint(0, classes, (8,), generator=g)

        def loss_fn():
            return F.cross_entropy(model(x), y)

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    first = loss_fn()
    for _ in range(3):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < first.item()


# ---------------------------------------------------------------------- norm buffers


@pytest.mark.parametrize(
    ("name", "options"),
    [("resnet18", {"norm": "gn"}), ("vgg11", {"norm": "gn"}), ("simple_convnet", {})],
)
def test_groupnorm_variants_have_no_buffers(name, options):
    model = build_model(name, CIFAR, 10, derive(0, "init"), **options)
    assert list(model.buffers()) == []
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_batchnorm_variant_has_running_buffers():
    model = build_model("resnet18", CIFAR, 10, derive(0, "init"))
    names = {k for k, _ in model.named_buffers()}
    assert "bn1.running_mean" in names and "layer4.1.bn2.running_var" in names


def test_groupnorm_uses_32_groups_by_default():
    model = build_model("resnet18", CIFAR, 10, derive(0, "init"), norm="gn")
    assert model.bn1.num_groups == 32
    two = build_model("resnet18", CIFAR, 10, derive(0, "init"), norm="gn", gn_groups=2)
    assert two.layer4[1].bn2.num_groups == 2
