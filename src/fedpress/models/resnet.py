"""ResNet-18 for 32x32 images (CIFAR), SparsyFed's model (spec §3.5).

torchvision's ResNet-18 with the ImageNet stem (7x7 stride-2 conv + max-pool) replaced by a
3x3 stride-1 conv and no max-pool, so a 32x32 image keeps its resolution into the first
stage. Four stages of two BasicBlocks (64, 128, 256, 512 channels; stride 2 from the second
stage on), global average pool, one Linear. 11,173,962 parameters for 10 classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedpress.models._init import check_init_scheme, init_parameters
from fedpress.models._norm import DEFAULT_GN_GROUPS, check_norm, make_norm
from fedpress.models._shapes import check_positive

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (2, 2, 2, 2)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; a 1x1 conv + norm on the shortcut when the
    shape changes (stride 2 or more channels), as in torchvision."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, gn_groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, planes, gn_groups)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes, gn_groups)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                make_norm(norm, planes, gn_groups),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, planes, H/stride, W/stride)
        out = self.bn2(self.conv2(out))  # (B, planes, H/stride, W/stride)
        return F.relu(out + self.shortcut(x))  # (B, planes, H/stride, W/stride)


class ResNet18(nn.Module):
    """CIFAR ResNet-18 with ``norm="bn"`` (BatchNorm, default) or ``"gn"`` (GroupNorm with
    min(gn_groups, channels) groups, 32 by default; no running buffers).

    Parameter names follow torchvision (conv1, bn1, layer1.0.conv1, ..., fc) except the
    projection shortcut, which is ``layerN.0.shortcut`` rather than ``downsample``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        norm: str = "bn",
        gn_groups: int = DEFAULT_GN_GROUPS,
        generator: torch.Generator | None = None,
        init: str = "torch",
    ) -> None:
        super().__init__()
        check_positive(in_channels, "in_channels", "ResNet18")
        check_positive(num_classes, "num_classes", "ResNet18")
        check_norm(norm, gn_groups, "ResNet18")
        check_init_scheme(init)
        self.norm = norm
        with torch.device("meta"):
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            self.bn1 = make_norm(norm, 64, gn_groups)
            in_planes = 64
            stages = []
            for i, (planes, blocks) in enumerate(zip(STAGE_WIDTHS, BLOCKS_PER_STAGE, strict=True)):
                first_stride = 1 if i == 0 else 2
                stage = []
                for b in range(blocks):
                    stride = first_stride if b == 0 else 1
                    stage.append(BasicBlock(in_planes, planes, stride, norm, gn_groups))
                    in_planes = planes
                stages.append(nn.Sequential(*stage))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.fc = nn.Linear(STAGE_WIDTHS[-1], num_classes)
        init_parameters(self, generator, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, 64, H, W)
        x = self.layer1(x)  # (B, 64, H, W)
        x = self.layer2(x)  # (B, 128, H/2, W/2)
        x = self.layer3(x)  # (B, 256, H/4, W/4)
        x = self.layer4(x)  # (B, 512, H/8, W/8)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 512)
        return self.fc(x)  # (B, num_classes) logits
