import pytest
import torch

from fedpress.compress.prune import density, magnitude_prune, mask_iou, pool_mask, regrowth
from fedpress.layout import Layout

LAYOUT = Layout.from_shapes({"conv.weight": (4, 5), "conv.bias": (4,), "fc.weight": (3, 10), "bn.weight": (3,)})


def test_global_pruning_hits_the_exact_count_and_leaves_the_rest():
    pool = pool_mask(LAYOUT, ["conv.weight", "fc.weight"])  # N = 50
    x = torch.randn(LAYOUT.numel, generator=torch.Generator().manual_seed(0))
    for s in (0.0, 0.5, 0.9, 0.95, 0.99, 1.0):
        out = magnitude_prune(x, pool, s)
        assert int((out[pool] == 0).sum()) == round(s * 50)
        assert torch.equal(out[~pool], x[~pool])  # biases and norm parameters are never pruned
        kept = out[pool] != 0
        if kept.any() and (~kept).any():  # global ranking: every kept magnitude beats every pruned one
            assert x[pool][kept].abs().min() >= x[pool][~kept].abs().max()


def test_ties_are_deterministic_and_exact():
    pool = pool_mask(LAYOUT, ["fc.weight"])
    x = torch.ones(LAYOUT.numel)
    out = magnitude_prune(x, pool, 0.9)
    assert int((out[pool] != 0).sum()) == 3
    assert torch.equal(out, magnitude_prune(x, pool, 0.9))


def test_measurements_by_hand():
    pool = pool_mask(LAYOUT, ["conv.weight"])
    a = torch.zeros(LAYOUT.numel)
    b = torch.zeros(LAYOUT.numel)
    a[[0, 1, 2, 3]] = 1.0
    b[[2, 3, 4]] = 1.0
    b[21] = 5.0  # a bias: outside the pool
    assert density(a, pool) == 4 / 20
    assert regrowth(a, b, pool) == 1  # coordinate 4
    assert mask_iou(a, b, pool) == 2 / 5
    assert mask_iou(torch.zeros(LAYOUT.numel), torch.zeros(LAYOUT.numel), pool) == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="no tensors named"):
        pool_mask(LAYOUT, ["fc.bias"])
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_prune(torch.zeros(LAYOUT.numel), pool_mask(LAYOUT, ["fc.weight"]), 1.5)
