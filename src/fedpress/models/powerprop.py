"""Powerpropagation layers with SparsyFed's activation pruning (spec §1.9, §3.2), and the
SWAT layers of its ZeroFL baseline (§3.4).

A layer keeps the underlying parameter v and computes its weight as
    w = sign(v) |v|^beta                                   (Schwarz et al. 2021)
so dL/dv = dL/dw * beta |v|^(beta - 1): small weights get small gradients and an exact
zero stays zero under SGD when beta > 1. The forward pass is dense. With activation
pruning on, the weight gradient is computed from a sparsified copy of the layer's input,
kept at the layer's current weight density 1 - s_l (s_l = fraction of exact zeros in w):
    Linear: the ceil(keep * numel(a)) largest |a| of the minibatch, recomputed every step
    Conv2d: the threshold theta = that many-th largest |a| on the first minibatch a client
            trains on, reused for its later minibatches (the reference code's shortcut)
The input gradient always uses the dense weight, the bias gradient the dense output grad.
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn

KEEP_FLOOR = 1e-7  # the official copy floors the kept fraction (spec §3.2)


def effective_weight(v: torch.Tensor, beta: float) -> torch.Tensor:
    """w = sign(v) |v|^beta; for beta = 1 exactly v, whose gradient at 0 is 1, not sign'(0) = 0."""
    return v if beta == 1 else torch.sign(v) * v.abs().pow(beta)


def weight_density(w: torch.Tensor) -> float:
    """1 - s_l: the fraction of non-zero weights, floored at KEEP_FLOOR."""
    return max(float((w != 0).sum()) / max(w.numel(), 1), KEEP_FLOOR)


def top_fraction_threshold(a: torch.Tensor, keep: float) -> torch.Tensor:
    """The ceil(keep * numel)-th largest |a|: keeping |a| >= it keeps that fraction (ties aside)."""
    k = min(a.numel(), max(1, math.ceil(keep * a.numel())))
    return torch.topk(a.detach().abs().reshape(-1), k, sorted=False).values.min()


class _SparseInputLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, w, b, a_sparse):
        ctx.save_for_backward(a_sparse, w)
        ctx.has_bias = b is not None
        return F.linear(a, w, b)

    @staticmethod
    def backward(ctx, grad_y):
        a_sparse, w = ctx.saved_tensors
        grad_a = grad_y @ w  # dense weight
        grad_w = grad_y.reshape(-1, grad_y.shape[-1]).T @ a_sparse.reshape(-1, a_sparse.shape[-1])
        grad_b = grad_y.reshape(-1, grad_y.shape[-1]).sum(0) if ctx.has_bias else None
        return grad_a, grad_w, grad_b, None


class _SparseInputConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, w, b, a_sparse, stride, padding, dilation, groups):
        ctx.save_for_backward(a_sparse, w)
        ctx.conf = (a.shape, stride, padding, dilation, groups, b is not None)
        return F.conv2d(a, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_y):
        a_sparse, w = ctx.saved_tensors
        shape, stride, padding, dilation, groups, has_bias = ctx.conf
        grad_a = torch.nn.grad.conv2d_input(shape, w, grad_y, stride, padding, dilation, groups)
        grad_w = torch.nn.grad.conv2d_weight(a_sparse, w.shape, grad_y, stride, padding, dilation, groups)
        grad_b = grad_y.sum((0, 2, 3)) if has_bias else None
        return grad_a, grad_w, grad_b, None, None, None, None, None


class PowerpropLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, beta: float = 1.25,
                 activation_pruning: bool = True):
        super().__init__(in_features, out_features, bias, device="meta")
        self.beta, self.activation_pruning = beta, activation_pruning

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        w = effective_weight(self.weight, self.beta)
        if not (self.training and self.activation_pruning and torch.is_grad_enabled()):
            return F.linear(a, w, self.bias)
        keep = weight_density(w)
        if keep >= 1.0:  # a dense layer (round 1) prunes nothing
            return F.linear(a, w, self.bias)
        a_sparse = a.detach() * (a.detach().abs() >= top_fraction_threshold(a, keep))
        return _SparseInputLinear.apply(a, w, self.bias, a_sparse)


class PowerpropConv2d(nn.Conv2d):
    def __init__(self, *args, beta: float = 1.25, activation_pruning: bool = True, **kwargs):
        super().__init__(*args, **kwargs, device="meta")
        self.beta, self.activation_pruning = beta, activation_pruning
        self._theta: tuple[weakref.ref, torch.Tensor] | None = None

    def threshold(self, a: torch.Tensor, keep: float) -> torch.Tensor:
        """theta from the first minibatch trained with this weight tensor, then reused.

        The cache is keyed to the parameter object itself: local training binds fresh
        tensors for every client, so each client derives its own threshold and nothing
        carries over between clients or rounds.
        """
        owner = self._theta[0]() if self._theta is not None else None
        if owner is not self.weight:
            self._theta = (weakref.ref(self.weight), top_fraction_threshold(a, keep))
        return self._theta[1]

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        w = effective_weight(self.weight, self.beta)
        if not (self.training and self.activation_pruning and torch.is_grad_enabled()):
            return self._conv_forward(a, w, self.bias)
        keep = weight_density(w)
        if keep >= 1.0:
            return self._conv_forward(a, w, self.bias)
        if self.padding_mode != "zeros":
            raise ValueError("PowerpropConv2d with activation pruning supports padding_mode='zeros' only")
        a_sparse = a.detach() * (a.detach().abs() >= self.threshold(a, keep))
        return _SparseInputConv2d.apply(a, w, self.bias, a_sparse, self.stride, self.padding, self.dilation,
                                        self.groups)


def powerprop_init_(v: torch.Tensor, beta: float, fan_in: int, generator: torch.Generator) -> None:
    """Spec §1.9: u ~ truncated normal on [-2 sigma, 2 sigma] with sigma = sqrt(1/fan_in) / 0.87962566
    (so the truncated std is sqrt(1/fan_in)), then v = sign(u) |u|^(1/beta): the effective
    weights w = sign(v)|v|^beta have the standard distribution."""
    sigma = math.sqrt(1.0 / fan_in) / 0.87962566
    with torch.no_grad():
        u = torch.nn.init.trunc_normal_(torch.empty_like(v), 0.0, sigma, -2 * sigma, 2 * sigma, generator=generator)
        v.copy_(torch.sign(u) * u.abs().pow(1.0 / beta))


def powerpropagate(module: nn.Module, beta: float, generator: torch.Generator, *,
                   activation_pruning: bool = True) -> nn.Module:
    """Replace every nn.Linear and nn.Conv2d of `module` (in place) by its Powerprop version,
    initialised as in spec §1.9 from `generator`; biases zero; other layers untouched."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear | nn.Conv2d) and not isinstance(child, PowerpropLinear | PowerpropConv2d):
            if isinstance(child, nn.Linear):
                new = PowerpropLinear(child.in_features, child.out_features, child.bias is not None, beta=beta,
                                      activation_pruning=activation_pruning)
            else:
                new = PowerpropConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                      child.padding, child.dilation, child.groups, child.bias is not None,
                                      child.padding_mode, beta=beta, activation_pruning=activation_pruning)
            new = new.to_empty(device="cpu")
            fan_in = new.weight[0].numel()
            powerprop_init_(new.weight, beta, fan_in, generator)
            if new.bias is not None:
                with torch.no_grad():
                    new.bias.zero_()
            setattr(module, name, new)
        else:
            powerpropagate(child, beta, generator, activation_pruning=activation_pruning)
    return module


# ---------------------------------------------------------------------------- ZeroFL's SWAT layers


def _keep_top(w: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """w with entries below the threshold zeroed in the forward value, identity gradient
    (SWAT trains the dense weights through a sparse forward: straight-through)."""
    return w + (w * (w.detach().abs() >= threshold) - w).detach()


class SwatLinear(nn.Linear):
    """ZeroFL / SWAT (spec §3.4): forward with the weights top-k sparsified to `sparsity`,
    weight gradient from the input top-k sparsified to `sparsity`, applied to all weights."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, sparsity: float = 0.9):
        super().__init__(in_features, out_features, bias, device="meta")
        self.sparsity = sparsity

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return F.linear(a, self.weight, self.bias)
        keep = max(1 - self.sparsity, KEEP_FLOOR)
        w = _keep_top(self.weight, top_fraction_threshold(self.weight, keep))
        a_sparse = a.detach() * (a.detach().abs() >= top_fraction_threshold(a, keep))
        return _SparseInputLinear.apply(a, w, self.bias, a_sparse)


class SwatConv2d(nn.Conv2d):
    """SWAT for convolutions: weight and activation thresholds from the first minibatch a
    client trains on (keyed to its parameter object, as PowerpropConv2d), then reused."""

    def __init__(self, *args, sparsity: float = 0.9, **kwargs):
        super().__init__(*args, **kwargs, device="meta")
        self.sparsity = sparsity
        self._theta: tuple[weakref.ref, torch.Tensor, torch.Tensor] | None = None

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return self._conv_forward(a, self.weight, self.bias)
        keep = max(1 - self.sparsity, KEEP_FLOOR)
        owner = self._theta[0]() if self._theta is not None else None
        if owner is not self.weight:
            self._theta = (weakref.ref(self.weight), top_fraction_threshold(self.weight, keep),
                           top_fraction_threshold(a, keep))
        _, theta_w, theta_a = self._theta
        w = _keep_top(self.weight, theta_w)
        a_sparse = a.detach() * (a.detach().abs() >= theta_a)
        return _SparseInputConv2d.apply(a, w, self.bias, a_sparse, self.stride, self.padding, self.dilation,
                                        self.groups)


def swatify(module: nn.Module, sparsity: float, *, skip_first_conv: bool = True) -> nn.Module:
    """Replace Linear and Conv2d layers (in place) by SWAT layers keeping their parameters;
    ZeroFL leaves the first convolution dense."""
    first_conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None) if skip_first_conv else None

    def replace(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if child is first_conv or isinstance(child, SwatLinear | SwatConv2d):
                continue
            if isinstance(child, nn.Linear):
                new = SwatLinear(child.in_features, child.out_features, child.bias is not None, sparsity=sparsity)
            elif isinstance(child, nn.Conv2d):
                new = SwatConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                 child.padding, child.dilation, child.groups, child.bias is not None,
                                 child.padding_mode, sparsity=sparsity)
            else:
                replace(child)
                continue
            new = new.to_empty(device="cpu")
            with torch.no_grad():
                new.weight.copy_(child.weight)
                if child.bias is not None:
                    new.bias.copy_(child.bias)
            setattr(parent, name, new)

    replace(module)
    return module
