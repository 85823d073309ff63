"""Powerpropagation and SparsyFed's activation pruning against hand computations."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedpress.local import FlatModel, LocalPlan, TrainSpec, train
from fedpress.models import build_model
from fedpress.models.powerprop import (
    PowerpropConv2d,
    PowerpropLinear,
    effective_weight,
    powerpropagate,
)


def linear(beta=1.25, pruning=False, weight=None):
    layer = PowerpropLinear(3, 2, beta=beta, activation_pruning=pruning).to_empty(device="cpu")
    with torch.no_grad():
        layer.weight.copy_(weight if weight is not None else torch.tensor([[0.5, -2.0, 0.0], [1.5, 0.25, -0.75]]))
        layer.bias.zero_()
    return layer


def test_forward_uses_sign_v_abs_v_to_the_beta():
    layer = linear()
    a = torch.tensor([[1.0, 2.0, 3.0]])
    w = torch.sign(layer.weight) * layer.weight.abs() ** 1.25
    assert torch.allclose(layer(a), a @ w.T)


def test_gradient_factor_is_beta_abs_v_to_the_beta_minus_one():
    layer = linear()
    a = torch.tensor([[1.0, 2.0, 3.0]])
    layer(a).sum().backward()
    # dL/dw_ij = a_j (sum over the two outputs' unit gradients); dL/dv = dL/dw * beta |v|^(beta-1)
    expected = a.expand(2, 3) * 1.25 * layer.weight.detach().abs() ** 0.25
    assert torch.allclose(layer.weight.grad, expected)
    assert layer.weight.grad[0, 2] == 0  # the zero weight gets no gradient


def test_zeros_stay_zero_under_sgd_with_weight_decay():
    model = build_model("mlp", (8,), 3, torch.Generator().manual_seed(0), widths=[16])
    powerpropagate(model, 1.25, torch.Generator().manual_seed(1), activation_pruning=False)
    fm = FlatModel.of(model)
    x0 = fm.initial()
    zero = torch.zeros_like(x0, dtype=torch.bool)
    zero[: fm.num_params // 2 : 3] = True
    x0[zero] = 0.0
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    out = train(fm, LocalPlan(x0), x, y, TrainSpec(lr=0.1, batch_size=16, epochs=3, weight_decay=1e-3), g).x
    assert torch.equal(out[zero], torch.zeros(int(zero.sum())))
    assert not torch.equal(out[~zero], x0[~zero])


def test_initialisation_gives_the_standard_effective_weight_distribution():
    layer = nn.Linear(400, 300)
    holder = nn.Sequential(layer)
    powerpropagate(holder, 2.0, torch.Generator().manual_seed(0))
    w = effective_weight(holder[0].weight.detach(), 2.0)
    assert abs(float(w.std()) - math.sqrt(1 / 400)) < 0.05 * math.sqrt(1 / 400)
    assert float(w.abs().max()) <= 2 * math.sqrt(1 / 400) / 0.87962566 + 1e-6
    assert torch.equal(holder[0].bias.detach(), torch.zeros(300))
    assert isinstance(holder[0], PowerpropLinear)


def test_linear_weight_gradient_uses_the_pruned_input_and_input_gradient_the_dense_weight():
    weight = torch.tensor([[0.5, -2.0, 0.0, 1.0], [1.5, 0.0, -0.75, 0.0]])  # density 5/8
    layer = PowerpropLinear(4, 2, beta=1.0, activation_pruning=True).to_empty(device="cpu")
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.zero_()
    a = torch.tensor([[0.1, -4.0, 0.3, 2.0], [-0.2, 1.0, 3.0, 0.05]], requires_grad=True)
    y = layer(a)
    assert torch.allclose(y, a @ weight.T)  # the forward is dense
    y.sum().backward()
    keep = math.ceil(5 / 8 * 8)  # 5 of the 8 activations survive
    kept = a.detach().abs() >= a.detach().abs().reshape(-1).topk(keep).values.min()
    assert int(kept.sum()) == keep
    a_sparse = a.detach() * kept
    assert torch.allclose(layer.weight.grad, torch.ones(2, 2).T @ a_sparse)
    assert torch.allclose(a.grad, torch.ones(2, 2) @ weight)


def test_conv_threshold_comes_from_the_first_minibatch_of_a_client():
    conv = PowerpropConv2d(2, 3, 3, padding=1, beta=1.0).to_empty(device="cpu")
    with torch.no_grad():
        conv.weight.copy_(torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(0)))
        conv.weight[0] = 0.0  # density 2/3
        conv.bias.zero_()
    first = torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    conv(first).sum().backward()
    theta = conv._theta[1]
    assert theta == first.abs().reshape(-1).topk(math.ceil(2 / 3 * first.numel())).values.min()
    second = 10 * torch.randn(4, 2, 5, 5, generator=torch.Generator().manual_seed(2))
    conv.weight.grad = None
    conv(second).sum().backward()
    assert conv._theta[1] is theta  # reused for the client's later minibatches
    expected = torch.nn.grad.conv2d_weight(second * (second.abs() >= theta), conv.weight.shape,
                                           torch.ones(4, 3, 5, 5), padding=1)
    assert torch.allclose(conv.weight.grad, expected, atol=1e-5)
    conv.weight = nn.Parameter(conv.weight.detach().clone())  # a new client binds a new tensor
    conv(second).sum().backward()
    assert conv._theta[1] != theta


def test_dense_layers_and_evaluation_do_not_prune():
    layer = linear(pruning=True, weight=torch.ones(2, 3))  # density 1: round 1 prunes nothing
    a = torch.tensor([[1.0, -2.0, 3.0]])
    layer(a).sum().backward()
    assert torch.allclose(layer.weight.grad, 1.25 * a.expand(2, 3))
    layer.eval()
    assert torch.allclose(layer(a), F.linear(a, effective_weight(layer.weight, 1.25)))
