"""runtime/stacked.py: the written-out forward of k clients at once equals each client's own."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fedpress.models import build_model
from fedpress.runtime.stacked import StackedForward


def stacked_params(module: nn.Module, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: p.detach().unsqueeze(0) + 0.1 * torch.randn((k, *p.shape), generator=g)
            for name, p in module.named_parameters()}


@pytest.mark.parametrize("name, shape", [("lenet5", (1, 28, 28)), ("lenet5", (3, 32, 32)), ("cnn", (1, 28, 28)),
                                         ("mlp", (1, 28, 28)), ("flare_cnn", (1, 28, 28))])
def test_each_clients_logits_are_its_own_models(name, shape):
    module = build_model(name, shape, 10, torch.Generator().manual_seed(1))
    forward = StackedForward.of(module)
    assert forward is not None
    k, batch = 4, 5
    params = stacked_params(module, k)
    x = torch.randn(k, batch, *shape, generator=torch.Generator().manual_seed(2))
    logits = forward(params, x)  # (k, batch, 10)
    assert logits.shape == (k, batch, 10)
    for c in range(k):
        own = functional_call(module, {n: p[c] for n, p in params.items()}, (x[c],))
        # equal up to the summation order of a grouped convolution and a batched matmul: sums of
        # thousands of fp32 products, so a few ulps of logits of size ~1 (measured: at most 1.6e-5)
        torch.testing.assert_close(logits[c], own, rtol=1e-4, atol=1e-4)


def test_gradients_are_each_clients_own():
    module = build_model("lenet5", (1, 16, 16), 4, torch.Generator().manual_seed(1))
    forward = StackedForward.of(module)
    params = {n: p.requires_grad_(True) for n, p in stacked_params(module, 3).items()}
    x = torch.randn(3, 6, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(forward(params, x).square().sum(), list(params.values()))
    for c in range(3):
        own = {n: p[c].detach().requires_grad_(True) for n, p in params.items()}
        expected = torch.autograd.grad(functional_call(module, own, (x[c],)).square().sum(), list(own.values()))
        for got, want in zip(grads, expected, strict=True):
            torch.testing.assert_close(got[c], want, rtol=1e-4, atol=1e-5)


class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).flatten(1))


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) + self.fc(x * 2)


@pytest.mark.parametrize("module", [WithBatchNorm(), Branching(), nn.Sequential(nn.Conv2d(2, 4, 3, groups=2)),
                                    nn.Sequential(nn.Flatten(0), nn.Linear(4, 2)), nn.Sequential(nn.Tanh())])
def test_what_it_does_not_write_out_is_left_to_vmap(module):
    assert StackedForward.of(module) is None
