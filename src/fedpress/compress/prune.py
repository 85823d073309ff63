"""Magnitude pruning and the sparsity measurements SparsyFed reports (spec §3.2, §3.7).

Pruning is global over a pool of tensors (SparsyFed pools every conv and linear weight,
never biases or normalisation parameters), like torch.nn.utils.prune.global_unstructured
with L1Unstructured: the round(s * N) smallest magnitudes of the N pooled entries become
zero, ties broken towards the higher index (the kept set is top_k_indices's).
"""

from __future__ import annotations

import torch

from fedpress.compress.select import top_k_indices
from fedpress.layout import Layout


def pool_mask(layout: Layout, names) -> torch.Tensor:
    """(d,) bool: True on the coordinates of the named tensors."""
    names = set(names)
    unknown = names - set(layout.names)
    if unknown:
        raise ValueError(f"pool_mask: no tensors named {sorted(unknown)} in the layout")
    mask = torch.zeros(layout.numel, dtype=torch.bool)
    for e in layout:
        if e.name in names:
            mask[e.offset : e.stop] = True
    return mask


def magnitude_prune(x: torch.Tensor, pool: torch.Tensor, sparsity: float) -> torch.Tensor:
    """x with the round(sparsity * N) smallest |x_j| of the N pooled coordinates set to zero.
    Coordinates outside the pool are untouched. Returns a new tensor."""
    if not 0 <= sparsity <= 1:
        raise ValueError(f"magnitude_prune: sparsity must be in [0, 1], got {sparsity}")
    where = pool.nonzero().squeeze(1)  # (N,) pooled coordinates
    n = where.numel()
    keep = n - round(sparsity * n)
    kept = where[top_k_indices(x[where].abs(), keep)]
    out = x.clone()
    out[where] = 0.0
    out[kept] = x[kept]
    return out


def density(x: torch.Tensor, pool: torch.Tensor) -> float:
    """Fraction of non-zero pooled coordinates."""
    n = int(pool.sum())
    return float((x[pool] != 0).sum()) / n if n else 0.0


def regrowth(before: torch.Tensor, after: torch.Tensor, pool: torch.Tensor) -> int:
    """Pooled coordinates that were zero in `before` and are non-zero in `after` (spec §3.7 item 6)."""
    return int(((before == 0) & (after != 0) & pool).sum())


def mask_iou(a: torch.Tensor, b: torch.Tensor, pool: torch.Tensor) -> float:
    """|supp(a) & supp(b)| / |supp(a) | supp(b)| over the pool: how much two masks agree."""
    sa, sb = (a != 0) & pool, (b != 0) & pool
    union = int((sa | sb).sum())
    return float((sa & sb).sum()) / union if union else 1.0
