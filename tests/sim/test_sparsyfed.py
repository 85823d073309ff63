"""SparsyFed's core rules through the simulator (the study and its ZeroFL / FLASH baselines
are issue 5's remaining work)."""

import torch

from fedpress.algorithms.sparsyfed import prunable
from fedpress.models.powerprop import PowerpropLinear
from fedpress.runtime.executor import Sequential
from fedpress.sim import run, setup
from fedpress.sim.rounds import run_round
from tests.sim.conftest import tiny_config
from tests.sim.test_run import fresh_progress


def sparsy(**kw):
    return tiny_config(**{"algorithm.name": "sparsyfed", "algorithm.sparsity": 0.8, "train.lr": 0.2,
                          "train.momentum": 0.0, **kw})


def test_model_is_reparameterised_and_uploads_hit_the_exact_sparsity(synthetic):
    cfg = sparsy(rounds=2)
    exp = setup(cfg)
    assert all(isinstance(m, PowerpropLinear) for m in exp.model.module.modules() if isinstance(m, torch.nn.Linear))
    pool = prunable(exp.model)
    n = int(pool.sum())
    assert int((exp.x0[pool] == 0).sum()) == 0  # round 1 starts dense
    from fedpress.algorithms import ClientContext
    from fedpress.local import LocalPlan, LocalResult

    x = torch.randn(exp.model.layout.numel, generator=torch.Generator().manual_seed(0))
    plan = LocalPlan(exp.x0)
    msg, _ = exp.algorithm.client_end(None, plan, LocalResult(x, 1, 0.0), ClientContext(0, 0, 10, 0, exp.model))
    sent = torch.zeros_like(pool)
    sent[msg.indices] = True
    assert int((sent & pool).sum()) == n - round(0.8 * n)  # exactly the target sparsity
    assert bool(sent[~pool].all())  # biases travel whole
    assert torch.equal(msg.expand(exp.model.layout)[sent], x[sent])
    p = fresh_progress(exp)
    run_round(exp, p, Sequential(), 0)
    global_density = float((p.server.x[pool] != 0).sum()) / n
    assert 0.2 < global_density <= 1.0  # the union of the client masks regrows the average


def test_sparsyfed_and_topk_prune_learn(synthetic, tmp_path):
    for name in ("sparsyfed", "topk_prune"):
        summary = run(sparsy(**{"algorithm.name": name, "rounds": 6}), tmp_path / name, progress=False)
        assert summary["final_accuracy"] > 0.7, (name, summary)  # chance is 0.25
        assert summary["uplink_compression"] > 2


def test_round_metrics_are_logged(synthetic, tmp_path):
    import csv

    run(sparsy(rounds=3), tmp_path, progress=False)
    with open(tmp_path / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    for r in table:
        assert 0 < float(r["global_density"]) <= 1 and abs(float(r["client_density"]) - 0.2) < 0.01
        assert 0 <= float(r["iou_clients"]) <= 1 and 0 <= float(r["iou_previous"]) <= 1
        assert int(r["regrowth"]) >= 0 and float(r["paper_cost_params"]) > 0
    assert int(table[0]["regrowth"]) == 0  # round 1 starts dense: nothing to regrow


def test_flash_mask_never_changes_after_round_one(synthetic):
    cfg = sparsy(**{"algorithm.name": "flash", "rounds": 4})
    exp = setup(cfg)
    pool = prunable(exp.model)
    p = fresh_progress(exp)
    run_round(exp, p, Sequential(), 0)
    mask = (p.server.x != 0) & pool
    assert int(mask.sum()) == int(pool.sum()) - round(0.8 * int(pool.sum()))  # exactly the target sparsity
    for t in range(1, 4):
        run_round(exp, p, Sequential(), t)
        assert torch.equal((p.server.x != 0) & pool, mask)


def test_zerofl_trains_swat_layers_but_keeps_the_first_conv_dense():
    from torch import nn

    from fedpress.algorithms.sparsyfed import ZeroFL
    from fedpress.models import build_model
    from fedpress.models.powerprop import SwatConv2d, SwatLinear

    module = ZeroFL(0.9).prepare_model(build_model("lenet5", (1, 28, 28), 10), None)
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    assert not isinstance(convs[0], SwatConv2d) and all(isinstance(c, SwatConv2d) for c in convs[1:])
    assert all(isinstance(m, SwatLinear) for m in module.modules() if isinstance(m, nn.Linear))


def test_swat_forward_uses_the_top_weights_and_trains_them_all():
    from fedpress.models.powerprop import SwatLinear

    layer = SwatLinear(4, 1, bias=False, sparsity=0.5).to_empty(device="cpu")
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -3.0, 0.5, 2.0]]))
    a = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    y = layer(a)
    assert y.item() == -1.0  # only -3 and 2 take part in the forward
    y.backward()
    # every weight, pruned in the forward or not, gets dL/dw = a (straight-through to the dense weights)
    assert torch.equal(layer.weight.grad, torch.ones(1, 4))


def test_each_sparse_baseline_learns(synthetic, tmp_path):
    for name in ("zerofl", "flash"):
        summary = run(sparsy(**{"algorithm.name": name, "rounds": 6}), tmp_path / name, progress=False)
        assert summary["final_accuracy"] > 0.6, (name, summary)
