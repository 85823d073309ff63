"""FLARE's rules on tiny hand-computed cases (spec §6.2), and EF21."""

import pytest
import torch

from fedpress.algorithms import RoundContext, Uplink, build
from fedpress.algorithms.flare import EF21, FLARE, percentile_mask, tau_at
from fedpress.compress.select import flare_indices
from fedpress.layout import Layout
from fedpress.wire import Dense, Message
from tests.algorithms.helpers import LAYOUT, MODEL, ctx, result

D = LAYOUT.numel


def test_tau_schedule():
    assert tau_at(0.05, 1.1, 0) == pytest.approx(0.05 / 1.1)
    assert tau_at(0.05, 1.1, 9) == pytest.approx(0.05 / 1.1**10)
    assert tau_at(0.0, 1.1, 3) == 0.0


def test_mask_is_above_the_per_tensor_percentile():
    layout = Layout.from_shapes({"a": (4,), "b": (5,)})
    e = torch.tensor([0.1, -0.5, 0.3, 0.9, 1.0, 2.0, -3.0, 4.0, 5.0])
    # a: sorted |e| 0.1 0.3 0.5 0.9, index round(0.5 * 3) = 2 -> 0.5: keep 0.9
    # b: sorted 1 2 3 4 5, index 2 -> 3: keep 4, 5
    assert percentile_mask(e, layout, 50).tolist() == [False, False, False, True, False, False, False, True, True]
    assert not percentile_mask(torch.zeros(9), layout, 50).any()  # round 0: e = 0, nothing masked


def plan_with_accumulator(alg, e, received, round_=0):
    state = alg.init_client(LAYOUT)
    state = type(state)(e, state.inner)
    return alg.client_begin(state, received, ctx(round_)), state


def test_regulariser_gradient_only_on_masked_coordinates():
    alg = FLARE(tau0=0.05, c=1.1, p=1)
    e = torch.randn(D, generator=torch.Generator().manual_seed(0))
    w = torch.randn(D, generator=torch.Generator().manual_seed(1))
    plan, _ = plan_with_accumulator(alg, e, w, round_=2)
    y = torch.randn(D, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    (grad,) = torch.autograd.grad(plan.penalty(y, 0), y)
    mask = percentile_mask(e, MODEL.param_layout, 50)
    tau = 0.05 / 1.1**3
    assert torch.equal(grad[~mask], torch.zeros(int((~mask).sum())))
    assert torch.allclose(grad[mask], tau * torch.sign(y - (w + e))[mask])
    l2 = FLARE(penalty="l2")
    plan, _ = plan_with_accumulator(l2, e, w, round_=2)
    (grad,) = torch.autograd.grad(plan.penalty(y, 0), y)
    assert torch.allclose(grad[mask], 2 * tau * (y - (w + e)).detach()[mask])


def test_regulariser_applies_only_to_the_first_p_local_steps():
    from fedpress.local import LocalPlan, TrainSpec, train

    calls = []
    alg = FLARE(p=2)
    e = torch.randn(D, generator=torch.Generator().manual_seed(0))
    plan, _ = plan_with_accumulator(alg, e, MODEL.initial())
    assert plan.penalty_steps == 2

    def spy(y, step):
        calls.append(step)
        return plan.penalty(y, step)

    x, y = torch.randn(40, 4), torch.randint(0, 2, (40,))
    spied = LocalPlan(plan.x0, penalty=spy, penalty_steps=plan.penalty_steps)
    train(MODEL, spied, x, y, TrainSpec(batch_size=8, steps=5), torch.Generator().manual_seed(0))
    assert calls == [0, 1]


def test_compat_flags():
    a = torch.arange(100, dtype=torch.float32)
    assert flare_indices(a, 0.01).tolist() == [98, 99]  # k = 1, keeps k + 1
    assert flare_indices(torch.randn(524_288).abs(), 1e-5).numel() == 6  # spec §6.2: the 524,288 kernel keeps 6
    plan, _ = plan_with_accumulator(FLARE(compat=True, p=3), torch.randn(D), MODEL.initial())
    assert plan.momentum_reset_step == 3
    assert FLARE().uplink.name.endswith("per tensor))")


def test_tau0_zero_has_no_regulariser():
    plan, _ = plan_with_accumulator(FLARE(tau0=0.0), torch.randn(D), MODEL.initial())
    assert plan.penalty is None


def test_accumulator_is_the_residual_of_per_tensor_top_k():
    alg = FLARE(keep_percent=20.0)
    state = alg.init_client(LAYOUT)
    for r in range(3):
        plan = alg.client_begin(state, torch.zeros(D), ctx(r))
        delta = torch.randn(D, generator=torch.Generator().manual_seed(r))
        u = delta + state.residual
        msg, state = alg.client_end(state, plan, result(plan, delta), ctx(r))
        assert torch.equal(msg.expand(LAYOUT) + state.residual, u)  # e <- u - s
        for e in LAYOUT:  # k = max(1, ceil(0.2 * n)) per tensor
            n_kept = int(((msg.indices >= e.offset) & (msg.indices < e.stop)).sum())
            assert n_kept == max(1, -(-2 * e.numel // 10))


def test_server_takes_the_unweighted_mean():
    alg = FLARE()
    rctx = RoundContext(0, 0, (0, 1), MODEL, 10)
    ups = [Uplink(0, Message(D, Dense(torch.ones(D))), 100.0), Uplink(1, Message(D, Dense(3 * torch.ones(D))), 1.0)]
    assert torch.equal(alg.aggregate(alg.init_server(torch.zeros(D), LAYOUT), ups, rctx).x, 2 * torch.ones(D))


def test_ef21_client_and_server_estimates():
    alg = EF21(keep_percent=50.0)
    state = alg.init_client(LAYOUT)
    delta = torch.randn(D, generator=torch.Generator().manual_seed(0))
    plan = alg.client_begin(state, torch.zeros(D), ctx())
    msg, state2 = alg.client_end(state, plan, result(plan, delta), ctx())
    assert torch.equal(state2.g, msg.expand(LAYOUT))  # g_i = 0 + c_i, c_i = C(delta - 0)
    plan = alg.client_begin(state2, torch.zeros(D), ctx(1))
    msg2, state3 = alg.client_end(state2, plan, result(plan, delta), ctx(1))
    expected, _ = alg.compressor.encode(delta - state2.g, LAYOUT, None)
    assert torch.equal(msg2.expand(LAYOUT), expected.expand(LAYOUT))  # c_i = C(delta - g_i)
    server = alg.init_server(torch.zeros(D), LAYOUT)
    rctx = RoundContext(0, 0, (0,), MODEL, 4)
    server = alg.aggregate(server, [Uplink(0, msg, 1.0)], rctx)
    assert torch.allclose(server.g, msg.expand(LAYOUT) / 4)  # g = mean over the population of g_i
    assert torch.equal(server.x, server.g)


def test_registry_names():
    assert isinstance(build("flare", {}), FLARE)
    assert build("ec_prox", {}).regularizer == "prox"
    assert build("ec", {"keep_percent": 1.0}).weighting == "uniform"
