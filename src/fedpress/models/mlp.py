"""Fully connected models: MLP (FedAvg's 2NN and FedComLoc's MNIST MLP), FLARE's FC network,
and logistic regression (QAFeL's convex experiment).

All of them flatten each sample first, so they take images (B, C, H, W) or vectors (B, F).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedpress.models._init import check_init_scheme, init_parameters
from fedpress.models._shapes import check_positive

FLARE_FC_WIDTH = 4069
"""Hidden width of FLARE's FC network. 4069 (not 4096) is what the reference code uses."""


class MLP(nn.Module):
    """Flatten, then Linear layers of the given widths with ReLU between, then a Linear head.

    ``MLP(784, [200, 200], 10)`` is the "2NN" of the FedAvg paper (199,210 parameters).
    ``activation=False`` drops the ReLUs, giving a purely linear network; that is only there
    to reproduce FLARE's reference FC model (see `FlareFC`).
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        num_classes: int,
        *,
        activation: bool = True,
        generator: torch.Generator | None = None,
        init: str = "torch",
    ) -> None:
        super().__init__()
        check_positive(in_features, "in_features", "MLP")
        check_positive(num_classes, "num_classes", "MLP")
        for w in widths:
            check_positive(w, "each width", "MLP")
        check_init_scheme(init)
        self.activation = activation
        sizes = [in_features, *widths]
        with torch.device("meta"):  # shapes only; values come from `generator` below
            self.hidden = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            )
            self.head = nn.Linear(sizes[-1], num_classes)
        init_parameters(self, generator, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, in_features)
        for layer in self.hidden:
            x = layer(x)  # (B, width)
            if self.activation:
                x = F.relu(x)
        return self.head(x)  # (B, num_classes) logits


class FlareFC(MLP):
    """FLARE's MNIST FC network (spec §6.4): 784 -> 4069 -> 4069 -> 4069 -> 10, ~36.4 M params.

    The reference Keras model has no activations between its Dense layers (a linear model
    with a softmax on top). By default this class puts ReLUs between them, as the paper's
    description implies; ``compat=True`` reproduces the reference exactly (no activations)
    so FLARE's reported numbers can be compared like for like (spec §6.6 item 2).
    """

    def __init__(
        self,
        in_features: int = 784,
        num_classes: int = 10,
        *,
        compat: bool = False,
        generator: torch.Generator | None = None,
        init: str = "torch",
    ) -> None:
        super().__init__(
            in_features,
            [FLARE_FC_WIDTH] * 3,
            num_classes,
            activation=not compat,
            generator=generator,
            init=init,
        )
        self.compat = compat


class LogReg(nn.Module):
    """Logistic regression: one Linear layer on the flattened input.

    ``num_classes=1`` gives a single logit per sample for the binary logistic loss
    (``F.binary_cross_entropy_with_logits``), as in QAFeL's LIBSVM experiment;
    ``num_classes >= 2`` gives multinomial logits for cross-entropy. ``bias=False`` is for data
    that already carries a constant-1 column (QAFeL appends one to mushrooms' 112 features),
    so the parameter vector is exactly the paper's x.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 1,
        *,
        bias: bool = True,
        generator: torch.Generator | None = None,
        init: str = "torch",
    ) -> None:
        super().__init__()
        check_positive(in_features, "in_features", "LogReg")
        check_positive(num_classes, "num_classes", "LogReg")
        check_init_scheme(init)
        with torch.device("meta"):
            self.linear = nn.Linear(in_features, num_classes, bias=bias)
        init_parameters(self, generator, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))  # (B, num_classes) logits
