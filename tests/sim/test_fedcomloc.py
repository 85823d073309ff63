"""Scaffnew, FedComLoc and Scaffold (spec §1.7, §4): properties from the papers, through the simulator."""

import math

import pytest
import torch

from fedpress.algorithms import build
from fedpress.algorithms.fedcomloc import FedComLoc, geometric_steps
from fedpress.compress import fp32
from fedpress.data import Dataset
from fedpress.errors import ConfigError
from fedpress.metrics.ledger import BROADCAST, DOWN, UP
from fedpress.runtime.executor import Sequential
from fedpress.runtime.transport import dense_frame_bytes
from fedpress.sim import setup
from fedpress.sim.rounds import run_round
from tests.sim.conftest import tiny_config, with_overrides
from tests.sim.test_run import fresh_progress


def test_expected_local_steps_is_one_over_p():
    for p in (0.1, 0.2, 0.5):
        g = torch.Generator().manual_seed(1)
        draws = torch.tensor([geometric_steps(p, g) for _ in range(20_000)], dtype=torch.float64)
        assert draws.min() >= 1
        sd = math.sqrt((1 - p) / p**2 / draws.numel())  # standard error of the mean of Geometric(p)
        assert abs(draws.mean() - 1 / p) < 5 * sd
        # P(L = 1) = p
        assert abs((draws == 1).double().mean() - p) < 5 * math.sqrt(p * (1 - p) / draws.numel())
    assert geometric_steps(1.0, torch.Generator()) == 1


def simulate(cfg, rounds, algorithm=None):
    exp = setup(cfg)
    if algorithm is not None:
        exp = type(exp)(exp.config, exp.dataset, exp.parts, exp.model, algorithm, exp.x0)
    p = fresh_progress(exp)
    for t in range(rounds):
        run_round(exp, p, Sequential(), t)
    return exp, p


def scaffnew_config(**overrides):
    return tiny_config(**{"algorithm.name": "scaffnew", "train.momentum": 0.0, "clients_per_round": 12,
                          "checkpoint_every": 0, **overrides})


@pytest.mark.parametrize("variant", ["com", "local", "global"])
def test_every_variant_with_the_identity_codec_is_scaffnew_bit_for_bit(synthetic, variant):
    """Partial participation (4 of 12), so the download of a missed x_bar is exercised too."""
    cfg = scaffnew_config(clients_per_round=4)
    _, reference = simulate(cfg, 5)
    _, same = simulate(cfg, 5, FedComLoc(p=0.2, variant=variant, compressor=fp32()))
    assert torch.equal(reference.server.x, same.server.x)
    assert reference.clients.keys() == same.clients.keys()
    for c in reference.clients:
        assert torch.equal(reference.clients[c].control_variate, same.clients[c].control_variate)
    assert reference.ledger.to_rows() == same.ledger.to_rows()


def test_control_variates_sum_to_zero_under_full_participation(synthetic):
    exp, p = simulate(scaffnew_config(), 6)
    h = torch.stack([s.control_variate for s in p.clients.values()])  # (n, P)
    assert len(h) == 12 and h.abs().max() > 1e-2  # they moved
    assert h.sum(0).abs().max() < 1e-5 * h.abs().max() * len(h)


def test_fedcomloc_com_keeps_sum_zero_only_with_the_compressed_reference(synthetic):
    """x_bar = mean C(x_hat_j): sum_i (x_bar - C(x_hat_i)) = 0, sum_i (x_bar - x_hat_i) is not (spec §4.2)."""
    sums = {}
    for ref in ("compressed", "uncompressed"):
        cfg = scaffnew_config(**{"algorithm.name": "fedcomloc", "algorithm.variant": "com",
                                 "algorithm.compressor": "topk", "algorithm.ratio": 0.3, "algorithm.cv_ref": ref})
        _, p = simulate(cfg, 4)
        h = torch.stack([s.control_variate for s in p.clients.values()])
        sums[ref] = h.sum(0).abs().max() / (h.abs().max() * len(h))
    assert sums["compressed"] < 1e-5
    assert sums["uncompressed"] > 1e-2


class Recording(Sequential):
    """Sequential, keeping the number of steps each client ran, round by round."""

    def __init__(self):
        self.steps = []

    def run(self, model, jobs, spec):
        results = super().run(model, jobs, spec)
        self.steps.append([r.steps for r in results])
        return results


def test_local_steps_are_one_shared_geometric_draw_per_round(synthetic):
    exp = setup(scaffnew_config(**{"algorithm.p": 0.25}))
    p, executor = fresh_progress(exp), Recording()
    for t in range(8):
        run_round(exp, p, executor, t)
    logged = [r["local_steps"] for r in p.rows]
    assert [set(s) for s in executor.steps] == [{L} for L in logged]  # every client ran the round's L
    assert len(set(logged)) > 1 and min(logged) >= 1


def test_scaffnew_bytes_one_download_then_one_reply_per_round(synthetic):
    exp, p = simulate(scaffnew_config(), 3)
    dense = dense_frame_bytes(exp.model.layout)
    for t in range(3):
        down = [e for e in p.ledger.entries if e.round == t and e.direction == DOWN]
        up = [e for e in p.ledger.entries if e.round == t and e.direction == UP]
        assert len(up) == 12 and all(e.nbytes == dense for e in up)
        # round 0: x0 to everybody, then x_bar to everybody; later rounds: the reply only
        assert [(e.client, e.receivers) for e in down] == [(BROADCAST, 12)] * (2 if t == 0 else 1)
        assert all(e.nbytes == dense for e in down)


def test_compressed_directions_send_fewer_bytes(synthetic):
    dense = dense_frame_bytes(setup(scaffnew_config()).model.layout)
    for variant, direction in (("com", UP), ("global", DOWN)):
        cfg = scaffnew_config(**{"algorithm.name": "fedcomloc", "algorithm.variant": variant,
                                 "algorithm.compressor": "topk", "algorithm.ratio": 0.1})
        _, p = simulate(cfg, 2)
        last = [e for e in p.ledger.entries if e.round == 1]
        assert all(e.nbytes < dense / 4 for e in last if e.direction == direction)
        assert all(e.nbytes == dense for e in last if e.direction != direction)


def test_fedcomloc_local_takes_gradients_at_the_compressed_model(synthetic):
    """Local training moves x, but the gradient is taken at C(x): with top-k it differs from
    Scaffnew, and both directions stay dense."""
    cfg = scaffnew_config(**{"algorithm.name": "fedcomloc", "algorithm.variant": "local",
                             "algorithm.compressor": "topk", "algorithm.ratio": 0.3})
    exp, p = simulate(cfg, 2)
    _, ref = simulate(scaffnew_config(), 2)
    assert not torch.equal(p.server.x, ref.server.x)
    dense = dense_frame_bytes(exp.model.layout)
    assert all(e.nbytes == dense for e in p.ledger.entries)


def test_scaffold_sends_model_and_control_variate_both_ways(synthetic):
    exp, p = simulate(scaffnew_config(**{"algorithm.name": "scaffold"}), 2)
    d, P = exp.model.layout.numel, exp.model.num_params
    fedavg = dense_frame_bytes(exp.model.layout)
    both = dense_frame_bytes(exp.wire)
    assert exp.wire.numel == d + P and both > 1.9 * fedavg
    assert all(e.nbytes == both for e in p.ledger.entries)
    # the server's c is the mean of the clients' c_i under full participation (|S| = N)
    c_i = torch.stack(list(p.clients.values()))
    assert torch.allclose(p.server.control_variate, c_i.mean(0), atol=1e-5)


def test_control_variate_methods_refuse_momentum(synthetic):
    for name in ("scaffnew", "scaffold", "fedcomloc"):
        with pytest.raises(ConfigError, match="train.momentum"):
            setup(scaffnew_config(**{"algorithm.name": name, "train.momentum": 0.9}))


def test_bad_fedcomloc_settings_are_named():
    with pytest.raises(ConfigError, match="algorithm.variant"):
        build("fedcomloc", {"variant": "uplink"})
    with pytest.raises(ConfigError, match="algorithm.bits"):
        build("fedcomloc", {"compressor": "minmax", "bits": 16})
    with pytest.raises(ConfigError, match="algorithm.p"):
        build("scaffnew", {"p": 0.0})


# --- convergence on a strongly convex problem with an exactly computed optimum ---


def heterogeneous_logistic(seed=0) -> Dataset:
    """Four classes in 4 dimensions; the `shards` split below gives each client one class."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 4, generator=g)
    y = torch.arange(4).repeat_interleave(50)
    x = centers[y] + 0.7 * torch.randn(200, 4, generator=g)
    return Dataset(x.view(200, 1, 2, 2), y, x[:8].view(8, 1, 2, 2), y[:8], num_classes=4, name="convex",
                   input_shape=(1, 2, 2))


MU = 0.5  # weight decay: every f_i is MU-strongly convex


def optimum(exp) -> torch.Tensor:
    """argmin (1/n) sum_i [CE_i(x) + MU/2 ||x||^2] by L-BFGS in float64, to a gradient norm
    below 1e-8 (so within 1e-8 / MU of x*)."""
    X = exp.dataset.x_train.reshape(len(exp.dataset.y_train), -1).double()
    Y = exp.dataset.y_train
    w = torch.zeros(4 * 4 + 4, dtype=torch.float64, requires_grad=True)

    def f():
        W, b = w[:16].view(4, 4), w[16:]
        losses = [torch.nn.functional.cross_entropy(X[idx] @ W.T + b, Y[idx]) for idx in exp.parts]
        return torch.stack(losses).mean() + MU / 2 * w.square().sum()

    opt = torch.optim.LBFGS([w], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=0,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = f()
        loss.backward()
        return loss

    opt.step(closure)
    (grad,) = torch.autograd.grad(f(), w)
    assert grad.norm() < 1e-8
    return w.detach()


@pytest.fixture
def convex(monkeypatch):
    ds = heterogeneous_logistic()
    monkeypatch.setattr("fedpress.runtime.experiment.load", lambda name, normalize=True: ds)
    return ds


def convex_config(name, **extra):
    raw = {"name": name, "seed": 0, "rounds": 300, "clients_per_round": 4, "eval_every": 1000, "checkpoint_every": 0,
           "data": {"dataset": "mnist", "num_clients": 4, "partition": "shards", "classes_per_client": 1},
           "model": {"name": "logreg"},
           "train": {"batch_size": 1000, "lr": 0.1, "weight_decay": MU},
           "algorithm": {"name": name}}
    return with_overrides(raw, extra)


def test_scaffnew_reaches_the_optimum_where_fedavg_drifts(convex):
    """Full-batch gradients, one class per client: Scaffnew and Scaffold converge to x*
    (float32 precision); FedAvg with the same number of local steps stops at another point."""
    cfg = convex_config("scaffnew", **{"algorithm.p": 0.2})
    exp, p = simulate(cfg, 150)
    x_star = optimum(exp)
    scaffnew = (p.server.x.double() - x_star).norm() / x_star.norm()
    _, q = simulate(convex_config("fedavg", **{"train.steps": 5}), 150)
    fedavg = (q.server.x.double() - x_star).norm() / x_star.norm()
    _, s = simulate(convex_config("scaffold", **{"train.steps": 5}), 150)
    scaffold = (s.server.x.double() - x_star).norm() / x_star.norm()
    assert scaffnew < 1e-5, scaffnew
    assert scaffold < 1e-5, scaffold
    assert fedavg > 1e-2, fedavg  # client drift: a fixed point that is not x*


def test_a_diverged_server_model_ends_the_run_with_its_outputs(synthetic, tmp_path):
    """FedComLoc-Global with a learning rate far too large: the average overflows, the server's
    reply cannot be encoded; the run stops there and keeps every whole round before it."""
    from fedpress.sim import run

    cfg = scaffnew_config(**{"algorithm.name": "fedcomloc", "algorithm.variant": "global",
                             "algorithm.compressor": "qsgd", "algorithm.bits": 4, "train.lr": 1e4, "rounds": 30})
    summary = run(cfg, tmp_path, progress=False)
    assert summary["diverged_at_round"] is not None and summary["rounds"] == summary["diverged_at_round"] - 1
    ledger_rounds = {int(line.split(",")[0]) for line in (tmp_path / "ledger.csv").read_text().splitlines()[1:]}
    # ledger.csv's rounds are 1-based, as metrics.csv's: nothing of the diverged round
    assert ledger_rounds and ledger_rounds <= set(range(1, summary["rounds"] + 1))
