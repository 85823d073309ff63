"""VGG-11/16/19 for 32x32 images (CIFAR), as in the common CIFAR re-implementations.

The convolutional trunk is the standard one (Simonyan & Zisserman 2015, configs A, D, E):
3x3 convs with padding 1, a 2x2 max-pool after each stage, five stages, so a 32x32 image
ends as 512x1x1. The default head is a single Linear(512, classes), as in CIFAR variants;
``classifier="mlp"`` gives the ImageNet-style 4096-4096 head that FLARE's Keras VGG-19 uses
(spec §6.4: Dense 4096 -> Dropout 0.5 -> Dense 4096 -> Dropout 0.5 -> Dense classes).
"""

from __future__ import annotations

import torch
from torch import nn

from fedpress.models._init import check_init_scheme, init_parameters
from fedpress.models._norm import DEFAULT_GN_GROUPS, check_norm, make_norm
from fedpress.models._shapes import check_positive, check_spatial, pool_out

POOL = "M"
# fmt: off
VGG_CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    16: (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
         512, 512, 512, POOL, 512, 512, 512, POOL),
    19: (64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL,
         512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL),
}
# fmt: on
CLASSIFIERS = ("linear", "mlp")


class VGG(nn.Module):
    """VGG-`depth` (11, 16 or 19): conv3x3 [-> norm] -> ReLU stages, max-pools, then a head.

    With ``norm="bn"`` or ``"gn"`` the convs have no bias (the norm's shift replaces it);
    with ``norm="none"`` they do, as in the original VGG and FLARE's Keras model.
    ``dropout`` applies only to the "mlp" head and draws from torch's global generator when
    > 0 (FLARE used 0.5).
    """

    def __init__(
        self,
        depth: int = 16,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: tuple[int, int] = (32, 32),
        *,
        norm: str = "bn",
        gn_groups: int = DEFAULT_GN_GROUPS,
        classifier: str = "linear",
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        init: str = "torch",
    ) -> None:
        super().__init__()
        name = f"VGG{depth}"
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG: unknown depth {depth!r}; allowed: 11, 16, 19")
        check_positive(in_channels, "in_channels", name)
        check_positive(num_classes, "num_classes", name)
        check_norm(norm, gn_groups, name)
        if classifier not in CLASSIFIERS:
            raise ValueError(
                f"{name}: unknown classifier {classifier!r}; allowed: {', '.join(CLASSIFIERS)}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout!r}")
        check_init_scheme(init)
        h, w = (int(s) for s in image_size)
        out_h, out_w = h, w
        for _ in range(VGG_CONFIGS[depth].count(POOL)):
            out_h, out_w = pool_out(out_h), pool_out(out_w)
        check_spatial((out_h, out_w), name, (h, w))

        self.depth = depth
        with torch.device("meta"):
            layers: list[nn.Module] = []
            channels = in_channels
            for item in VGG_CONFIGS[depth]:
                if item == POOL:
                    layers.append(nn.MaxPool2d(2))
                    continue
                layers += [
                    nn.Conv2d(channels, item, 3, padding=1, bias=norm == "none"),
                    make_norm(norm, item, gn_groups),
                    nn.ReLU(),
                ]
                channels = item
            self.features = nn.Sequential(*layers)
            flat = channels * out_h * out_w
            if classifier == "linear":
                self.classifier = nn.Sequential(nn.Linear(flat, num_classes))
            else:
                self.classifier = nn.Sequential(
                    nn.Linear(flat, 4096),
                    nn.ReLU(),
                    nn.Dropout(dropout),
                    nn.Linear(4096, 4096),
                    nn.ReLU(),
                    nn.Dropout(dropout),
                    nn.Linear(4096, num_classes),
                )
        init_parameters(self, generator, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 512, H/32, W/32): (B, 512, 1, 1) on CIFAR
        return self.classifier(x.flatten(1))  # (B, num_classes) logits
