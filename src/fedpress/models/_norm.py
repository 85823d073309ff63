"""Normalisation layer choice shared by VGG and ResNet18.

BatchNorm is what the centralised baselines use, but its running statistics are buffers
that are not trained and that averaging across non-IID clients handles badly; GroupNorm has
no buffers at all, so the whole model state is its parameters (and it works under
`torch.func.vmap`, which the vectorized executor needs). Hsieh et al. (2020) recommend GN
for federated training.
"""

from __future__ import annotations

from torch import nn

NORMS = ("bn", "gn", "none")
DEFAULT_GN_GROUPS = 32
"""GroupNorm's default number of groups (Wu & He 2018), capped at the channel count."""


def check_norm(norm: str, gn_groups: int, model: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"{model}: unknown norm {norm!r}; allowed: {', '.join(NORMS)}")
    if not isinstance(gn_groups, int) or isinstance(gn_groups, bool) or gn_groups < 1:
        raise ValueError(f"{model}: gn_groups must be a positive int, got {gn_groups!r}")


def make_norm(norm: str, channels: int, gn_groups: int = DEFAULT_GN_GROUPS) -> nn.Module:
    """BatchNorm2d, GroupNorm(min(gn_groups, channels), channels), or Identity for "none"."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "gn":
        groups = min(gn_groups, channels)
        if channels % groups:
            raise ValueError(f"GroupNorm: {channels} channels do not split into {groups} groups")
        return nn.GroupNorm(groups, channels)
    return nn.Identity()
