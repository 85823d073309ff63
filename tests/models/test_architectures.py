"""Architectures: output shapes, exact parameter counts derived by formula, per-model quirks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedpress.models import (
    FLARE_FC_WIDTH,
    VGG_CONFIGS,
    SimpleConvNet,
    build_model,
    num_parameters,
)
from fedpress.rng import derive

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
BATCH = 4

# (name, input shape, classes, options): every model on the inputs it is meant for.
CASES = [
    ("mlp", MNIST, 10, {}),
    ("logreg", MNIST, 10, {}),
    ("logreg", (112,), 1, {}),
    ("cnn", MNIST, 10, {}),
    ("cnn", CIFAR, 10, {}),
    ("lenet5", MNIST, 10, {}),
    ("lenet5", CIFAR, 10, {}),
    ("flare_cnn", MNIST, 10, {}),
    ("flare_fc", MNIST, 10, {}),
    ("simple_convnet", CIFAR, 10, {}),
    ("simple_convnet", MNIST, 10, {}),
    ("vgg11", CIFAR, 10, {}),
    ("vgg16", CIFAR, 100, {"norm": "gn"}),
    ("vgg19", CIFAR, 10, {"norm": "none", "classifier": "mlp"}),
    ("resnet18", CIFAR, 10, {}),
    ("resnet18", CIFAR, 100, {"norm": "gn"}),
    ("resnet18", MNIST, 10, {}),
]


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def linear(a: int, b: int, bias: bool = True) -> int:
    return a * b + (b if bias else 0)


def norm(c: int) -> int:  # BatchNorm / GroupNorm affine: weight + bias
    return 2 * c


def build(name, shape, classes, **options):
    return build_model(name, shape, classes, derive(0, "init"), **options)


@pytest.mark.parametrize(("name", "shape", "classes", "options"), CASES)
def test_output_shape(name, shape, classes, options):
    model = build(name, shape, classes, **options).eval()
    x = torch.randn(BATCH, *shape, generator=derive(1, "x"))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (BATCH, classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------- parameter counts


def test_simple_convnet_has_31594_parameters():
    # FLSim: 4 conv3x3(32, padding 2), ONE shared GroupNorm(32, 32), fc 288 -> 10 (spec §1.5).
    expected = conv(3, 32, 3) + 3 * conv(32, 32, 3) + norm(32) + linear(32 * 3 * 3, 10)
    assert expected == 31_594
    model = build("simple_convnet", CIFAR, 10)
    assert num_parameters(model) == 31_594
    # 126,376 B at fp32 is the size in QAFeL's spreadsheets.
    assert 4 * num_parameters(model) == 126_376
    # CelebA (2 classes): 117,128 B = 29,282 params (spec §1.5).
    assert num_parameters(build("simple_convnet", CIFAR, 2)) == 29_282


def test_simple_convnet_shares_one_groupnorm():
    model = SimpleConvNet()
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 1
    assert norms[0].num_groups == 32 and norms[0].num_channels == 32


def test_fedavg_cnn_parameter_count():
    # "same" 5x5 convs keep 28x28, two pools leave 7x7x64 = 3136 features.
    mnist = conv(1, 32, 5) + conv(32, 64, 5) + linear(64 * 7 * 7, 512) + linear(512, 10)
    assert mnist == 1_663_370  # the number in McMahan et al. 2017
    assert num_parameters(build("cnn", MNIST, 10)) == mnist
    cifar = conv(3, 32, 5) + conv(32, 64, 5) + linear(64 * 8 * 8, 512) + linear(512, 10)
    assert num_parameters(build("cnn", CIFAR, 10)) == cifar


def test_flare_cnn_parameter_count():
    # valid 5x5 convs: 28 -> 24 -> 12 -> 8 -> 4, flatten 1024 (spec §6.4).
    expected = conv(1, 32, 5) + conv(32, 64, 5) + linear(1024, 512) + linear(512, 10)
    assert expected == 582_026
    assert num_parameters(build("flare_cnn", MNIST, 10)) == expected


def test_flare_fc_parameter_count():
    w = FLARE_FC_WIDTH
    assert w == 4069  # as in the reference code, not 4096
    expected = linear(784, w) + 2 * linear(w, w) + linear(w, 10)
    assert num_parameters(build("flare_fc", MNIST, 10)) == expected
    assert abs(expected - 36.4e6) < 0.1e6


def test_mlp_and_lenet_parameter_counts():
    assert num_parameters(build("mlp", MNIST, 10)) == 199_210  # FedAvg's 2NN
    assert num_parameters(build("mlp", MNIST, 10, widths=[64])) == linear(784, 64) + linear(64, 10)
    lenet = conv(1, 6, 5) + conv(6, 16, 5) + linear(400, 120) + linear(120, 84) + linear(84, 10)
    assert num_parameters(build("lenet5", MNIST, 10)) == lenet == 61_706
    lenet_cifar = lenet - conv(1, 6, 5) + conv(3, 6, 5)
    assert num_parameters(build("lenet5", CIFAR, 10)) == lenet_cifar


def test_logreg_parameter_count():
    assert num_parameters(build("logreg", (112,), 1)) == 113
    assert num_parameters(build("logreg", (113,), 1, bias=False)) == 113
    assert num_parameters(build("logreg", MNIST, 10)) == linear(784, 10)


def resnet18_count(classes: int) -> int:
    total = conv(3, 64, 3, bias=False) + norm(64)
    cin = 64
    for stage, width in enumerate((64, 128, 256, 512)):
        for block in range(2):
            total += conv(cin, width, 3, bias=False) + norm(width)
            total += conv(width, width, 3, bias=False) + norm(width)
            if block == 0 and (stage > 0 or cin != width):
                total += conv(cin, width, 1, bias=False) + norm(width)  # projection shortcut
            cin = width
    return total + linear(512, classes)


def test_resnet18_parameter_count():
    assert resnet18_count(10) == 11_173_962
    assert num_parameters(build("resnet18", CIFAR, 10)) == 11_173_962
    # GroupNorm has the same affine parameters as BatchNorm, and no buffers.
    gn = build("resnet18", CIFAR, 100, norm="gn")
    assert num_parameters(gn) == resnet18_count(100)


def test_resnet18_cifar_stem_has_no_maxpool():
    model = build("resnet18", CIFAR, 10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize("depth", [11, 16, 19])
@pytest.mark.parametrize("norm_kind", ["bn", "none"])
def test_vgg_parameter_count(depth, norm_kind):
    total, cin = 0, 3
    for item in VGG_CONFIGS[depth]:
        if item == "M":
            continue
        if norm_kind == "bn":
            total += conv(cin, item, 3, bias=False) + norm(item)
        else:
            total += conv(cin, item, 3, bias=True)
        cin = item
    total += linear(512, 10)
    model = build(f"vgg{depth}", CIFAR, 10, norm=norm_kind)
    assert num_parameters(model) == total
    n_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert n_convs == depth - 3  # VGG-n: n - 3 convs + 3 FC layers in the original


def test_vgg_mlp_head_is_flare_style():
    model = build("vgg19", CIFAR, 10, norm="none", classifier="mlp", dropout=0.5)
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (512, 4096),
        (4096, 4096),
        (4096, 10),
    ]
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.classifier) == 2


# ---------------------------------------------------------------------- FLARE compat variants


def test_flare_cnn_compat_outputs_probabilities():
    x = torch.randn(BATCH, *MNIST, generator=derive(2, "x"))
    plain = build("flare_cnn", MNIST, 10).eval()
    compat = build("flare_cnn", MNIST, 10, compat=True).eval()
    with torch.no_grad():
        z, p = plain(x), compat(x)
    # same parameters (same generator), compat = softmax of the plain logits
    torch.testing.assert_close(p, torch.softmax(z, dim=1))
    torch.testing.assert_close(p.sum(1), torch.ones(BATCH))
    # cross-entropy on top applies the reference's second softmax: loss >= log(1 + 9/e)
    loss = nn.functional.cross_entropy(p, torch.zeros(BATCH, dtype=torch.long))
    assert loss.item() >= torch.log(torch.tensor(1 + 9 / torch.e)).item() - 1e-6


def test_flare_fc_compat_is_linear_and_default_is_not():
    g = derive(3, "x")
    a, b = torch.randn(2, *MNIST, generator=g), torch.randn(2, *MNIST, generator=g)
    zero = torch.zeros(2, *MNIST)
    for compat, linear_expected in ((True, True), (False, False)):
        model = build("flare_fc", MNIST, 10, compat=compat)
        with torch.no_grad():
            lhs = model(a + b)
            rhs = model(a) + model(b) - model(zero)
        assert torch.allclose(lhs, rhs, atol=1e-4) is linear_expected
