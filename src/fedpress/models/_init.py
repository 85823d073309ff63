"""Seeded parameter initialisation that never touches torch's global random state.

Every model in `fedpress.models` is built on the ``meta`` device (layers get shapes but no
storage, and torch's default initialisers, which draw from the global generator, never run)
and then materialised on the CPU by `init_parameters`, which draws every value from an
explicit `torch.Generator` (DESIGN rule 5: one seed, one result). The default scheme
reproduces torch's own default initialisation draw for draw, so a model built here with a
generator seeded ``s`` equals the same model built by torch after ``torch.manual_seed(s)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedpress.rng import derive

INIT_SCHEMES = ("torch", "glorot_normal", "zeros")
"""Names accepted by `init_parameters`:

* ``"torch"``: torch's default for Linear/Conv (kaiming_uniform with a = sqrt(5) for weights,
  uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for biases), drawn from the given generator.
* ``"glorot_normal"``: Keras' GlorotNormal (truncated normal on [-2 sigma, 2 sigma] whose
  truncated std is sqrt(2 / (fan_in + fan_out))) with zero biases, as in FLARE's TF models.
* ``"zeros"``: every weight and bias zero, the usual start of a convex problem
  (logistic regression); meaningless for deep networks, which would not break symmetry.

Normalisation layers are always weight 1, bias 0, running mean 0, running var 1.
"""

# Keras' truncated-normal initialisers divide by this so that the std *after* truncation at
# two standard deviations is the requested one (std of N(0,1) truncated to [-2, 2]).
_TRUNCATED_STD = 0.87962566103423978

_DEFAULT_SEED = 0


def default_generator() -> torch.Generator:
    """The generator used when none is given: seed 0, purpose "init" (deterministic)."""
    return derive(_DEFAULT_SEED, "init")


def check_init_scheme(scheme: str) -> str:
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init: unknown scheme {scheme!r}; allowed: {', '.join(INIT_SCHEMES)}")
    return scheme


def _init_weighted(layer: nn.Linear | nn.Conv2d, scheme: str, generator: torch.Generator) -> None:
    """Initialise a Linear/Conv layer in place (weight first, then bias, as torch does)."""
    weight, bias = layer.weight, layer.bias
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    if scheme == "torch":
        # Same two draws, in the same order, as nn.Linear/nn.Conv2d.reset_parameters.
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        if bias is not None:
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(bias, -bound, bound, generator=generator)
    elif scheme == "glorot_normal":
        std = math.sqrt(2.0 / (fan_in + fan_out)) / _TRUNCATED_STD
        nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std, generator=generator)
        if bias is not None:
            nn.init.zeros_(bias)
    else:  # "zeros"
        nn.init.zeros_(weight)
        if bias is not None:
            nn.init.zeros_(bias)


def init_parameters(
    model: nn.Module,
    generator: torch.Generator | None = None,
    scheme: str = "torch",
) -> nn.Module:
    """Give every parameter and buffer of `model` fresh values on the CPU, drawn from `generator`.

    Works on a model built on the ``meta`` device (it is materialised first) as well as on an
    ordinary one (its values are overwritten). Layers are visited in registration order, so
    the same generator state always gives the same parameters. A layer type this function
    does not know raises TypeError rather than being left with garbage memory.
    Returns `model` for chaining.
    """
    check_init_scheme(scheme)
    if generator is None:
        generator = default_generator()
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"init_parameters: generator must be a torch.Generator, got {generator!r}")
    if generator.device.type != "cpu":
        raise ValueError(
            f"init_parameters: generator must be a CPU generator, got {generator.device}"
        )

    model.to_empty(device="cpu")
    done: set[int] = set()
    with torch.no_grad():
        for name, layer in model.named_modules():
            own = list(layer.parameters(recurse=False)) + list(layer.buffers(recurse=False))
            if not own:
                continue
            if isinstance(layer, nn.Linear | nn.Conv2d):
                _init_weighted(layer, scheme, generator)
            elif isinstance(layer, nn.modules.batchnorm._BatchNorm | nn.GroupNorm):
                layer.reset_parameters()  # weight 1, bias 0 (+ running stats reset for BN)
            else:
                raise TypeError(
                    f"init_parameters: do not know how to initialise {name or 'model'!r} "
                    f"({type(layer).__name__})"
                )
            done.update(id(t) for t in own)

    missed = [
        n
        for n, t in list(model.named_parameters()) + list(model.named_buffers())
        if id(t) not in done
    ]
    if missed:  # e.g. a parameter registered directly on a container module
        raise TypeError(f"init_parameters: left uninitialised: {', '.join(missed)}")
    return model
