"""Small convolutional networks used by the papers fedpress reproduces.

* `CNN`: the MNIST CNN of the FedAvg paper (McMahan et al. 2017), 1,663,370 parameters.
* `FlareCNN`: FLARE's MNIST CNN (spec §6.4), the same idea with unpadded convs, 582,026 params.
* `LeNet5`: the classic LeNet-5 layout with ReLU and max-pooling.
* `SimpleConvNet`: FLSim's CIFAR-10 network used by QAFeL (spec §1.5, §5.4), 31,594 params.

Each computes its flatten size from the input's spatial size, so the same class serves
1x28x28 (MNIST) and 3x32x32 (CIFAR) inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedpress.models._init import check_init_scheme, init_parameters
from fedpress.models._shapes import check_positive, check_spatial, conv_out, pool_out


def _check_common(name: str, in_channels: int, num_classes: int, image_size, init: str):
    check_positive(in_channels, "in_channels", name)
    check_positive(num_classes, "num_classes", name)
    h, w = (int(s) for s in image_size)
    check_init_scheme(init)
    return h, w


class CNN(nn.Module):
    """FedAvg's CNN: conv5x5(32) -> ReLU -> pool2 -> conv5x5(64) -> ReLU -> pool2 -> fc512 -> fc.

    Convolutions are padded by 2 ("same"), which is what makes the paper's parameter count
    come out: on MNIST the flatten size is 64*7*7 = 3136 and the total 1,663,370.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: tuple[int, int] = (28, 28),
        *,
        generator: torch.Generator | None = None,
        init: str = "torch",
    ) -> None:
        super().__init__()
        h, w = _check_common("CNN", in_channels, num_classes, image_size, init)
        out_h, out_w = pool_out(pool_out(h)), pool_out(pool_out(w))  # "same" convs keep size
        check_spatial((out_h, out_w), "CNN", (h, w))
        with torch.device("meta"):
            self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
            self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
            self.fc1 = nn.Linear(64 * out_h * out_w, 512)
            self.fc2 = nn.Linear(512, num_classes)
        init_parameters(self, generator, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 32, H/2, W/2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, H/4, W/4)
        x = F.relu(self.fc1(x.flatten(1)))  # (B, 512)
        return self.fc2(x)  # (B, num_classes) logits


class FlareCNN(nn.Module):
    """FLARE's MNIST CNN (spec §6.4): Conv(32, 5x5) -> pool -> Conv(64, 5x5) -> pool -> 512 -> 10.

    The Keras reference uses unpadded ("valid") convs: 28 -> 24 -> 12 -> 8 -> 4, so the
    flatten size is 64*4*4 = 1024 and the total 582,026 parameters.

    The reference applies softmax twice (a softmax Dense layer, then another Softmax), which
    is why its test loss sits near 1.5 at 96 % accuracy. ``compat=True`` reproduces that: the
    forward returns softmax(z) as its "logits", and the usual cross-entropy applies the second
    softmax. The default returns plain logits (spec §6.6 item 2).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: tuple[int, int] = (28, 28),
        *,
        compat: bool = False,
        generator: torch.Generator | None = None,
        init: str = "torch",
    ) -> None:
        super().__init__()
        h, w = _check_common("FlareCNN", in_channels, num_classes, image_size, init)
        out_h = pool_out(conv_out(pool_out(conv_out(h, 5)), 5))
        out_w = pool_out(conv_out(pool_out(conv_out(w, 5)), 5))
        check_spatial((out_h, out_w), "FlareCNN", (h, w))
        self.compat = compat
        with torch.device("meta"):
            self.conv1 = nn.Conv2d(in_channels, 32, 5)
            self.conv2 = nn.Conv2d(32, 64, 5)
            self.fc1 = nn.Linear(64 * out_h * out_w, 512)
            self.fc2 = nn.Linear(512, num_classes)
        init_parameters(self, generator, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 32, 12, 12) on MNIST
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, 4, 4) on MNIST
        x = F.relu(self.fc1(x.flatten(1)))  # (B, 512)
        z = self.fc2(x)  # (B, num_classes)
        return F.softmax(z, dim=1) if self.compat else z


class LeNet5(nn.Module):
    """LeNet-5 layout: conv5x5(6) -> pool -> conv5x5(16) -> pool -> fc120 -> fc84 -> fc, ReLU.

    LeNet-5 was designed for 32x32 inputs, where the second pool leaves 16x5x5 = 400 features.
    For smaller images (MNIST's 28x28) the first conv is padded by 2 so the network sees the
    same geometry; ``padding`` overrides that choice.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: tuple[int, int] = (28, 28),
        *,
        padding: int | None = None,
        generator: torch.Generator | None = None,
        init: str = "torch",
    ) -> None:
        super().__init__()
        h, w = _check_common("LeNet5", in_channels, num_classes, image_size, init)
        if padding is None:
            padding = 2 if min(h, w) < 32 else 0
        if not isinstance(padding, int) or padding < 0:
            raise ValueError(f"LeNet5: padding must be a non-negative int, got {padding!r}")
        out_h = pool_out(conv_out(pool_out(conv_out(h, 5, padding)), 5))
        out_w = pool_out(conv_out(pool_out(conv_out(w, 5, padding)), 5))
        check_spatial((out_h, out_w), "LeNet5", (h, w))
        with torch.device("meta"):
            self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=padding)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * out_h * out_w, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, num_classes)
        init_parameters(self, generator, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 6, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 16, 5, 5)
        x = F.relu(self.fc1(x.flatten(1)))  # (B, 120)
        x = F.relu(self.fc2(x))  # (B, 84)
        return self.fc3(x)  # (B, num_classes) logits


class SimpleConvNet(nn.Module):
    """FLSim's SimpleConvNet, QAFeL's CIFAR-10 (and CelebA) model: 31,594 params on CIFAR-10.

    Four blocks of conv3x3(32, stride 1, padding 2) -> GroupNorm -> ReLU -> maxpool2, then
    fc 288 -> classes. The four blocks share **one** GroupNorm(32, 32) module (FLSim builds a
    single ``gn_relu`` and applies it after every conv), so the norm contributes only 64
    parameters. The count is what QAFeL's message sizes are built from (spec §1.5):
    896 + 3 * 9,248 + 64 + 2,890 = 31,594; with 2 classes (CelebA) 29,282.

    Padding 2 grows each map by 2 before the pool: 32 -> 34 -> 17 -> 19 -> 9 -> 11 -> 5 -> 7
    -> 3, hence 32*3*3 = 288 features (28x28 inputs also end at 3x3).
    ``dropout`` (after each block, as in FLSim; 0.1 in QAFeL's CelebA runs) draws from torch's
    global generator when > 0, like any torch dropout.
    """

    channels = 32

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: tuple[int, int] = (32, 32),
        *,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        init: str = "torch",
    ) -> None:
        super().__init__()
        h, w = _check_common("SimpleConvNet", in_channels, num_classes, image_size, init)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SimpleConvNet: dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        out_h, out_w = h, w
        for _ in range(4):
            out_h, out_w = pool_out(conv_out(out_h, 3, 2)), pool_out(conv_out(out_w, 3, 2))
        check_spatial((out_h, out_w), "SimpleConvNet", (h, w))
        c = self.channels
        with torch.device("meta"):
            self.convs = nn.ModuleList(
                nn.Conv2d(in_channels if i == 0 else c, c, 3, stride=1, padding=2) for i in range(4)
            )
            self.norm = nn.GroupNorm(c, c)  # shared by all four blocks
            self.fc = nn.Linear(c * out_h * out_w, num_classes)
        init_parameters(self, generator, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.max_pool2d(F.relu(self.norm(conv(x))), 2)  # (B, 32, (S+2)//2, (S+2)//2)
            if self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
        return self.fc(x.flatten(1))  # (B, 288) -> (B, num_classes) logits
