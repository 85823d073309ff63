"""FedSparQ's client rules on tiny hand-computed cases (spec §2.2)."""

import torch

from fedpress.algorithms import build
from fedpress.algorithms.fedsparq import FedSparQ
from tests.algorithms.helpers import LAYOUT, ctx, result

D = LAYOUT.numel


def step(alg, state, delta, round_=0):
    plan = alg.client_begin(state, torch.zeros(D), ctx(round_))
    return alg.client_end(state, plan, result(plan, delta), ctx(round_))


def delta_of(seed):
    return torch.randn(D, generator=torch.Generator().manual_seed(seed))


def test_ema_thresholds_per_tensor_by_hand():
    alg = FedSparQ(beta=0.5)
    d1 = torch.arange(1, D + 1, dtype=torch.float32)  # tensor means of |u|: known numbers
    msg, state = step(alg, alg.init_client(LAYOUT), d1)
    means = torch.stack([d1[e.offset:e.stop].mean() for e in LAYOUT])
    assert torch.equal(state.thresholds.tau, means)  # first round: tau = m
    kept = set(msg.indices.tolist())
    for e, m in zip(LAYOUT, means, strict=True):
        assert {j for j in range(e.offset, e.stop) if d1[j] >= m} == {j for j in kept if e.offset <= j < e.stop}
    d2 = torch.ones(D)
    _, state2 = step(alg, state, d2)
    u2 = d2 + state.residual
    means2 = torch.stack([u2[e.offset:e.stop].abs().mean() for e in LAYOUT])
    assert torch.allclose(state2.thresholds.tau, 0.5 * means + 0.5 * means2)


def test_residual_is_what_the_receiver_did_not_get_including_fp16_error():
    alg = FedSparQ()
    state = alg.init_client(LAYOUT)
    for r in range(5):  # the EF invariant across rounds, bit for bit
        delta = delta_of(r) / 3
        u = delta + state.residual
        msg, state = step(alg, state, delta, r)
        assert msg.values.data.dtype == torch.float16
        assert torch.equal(msg.expand(LAYOUT) + state.residual, u)
        assert state.residual[msg.indices].abs().max() > 0  # fp16 rounding error is kept too


def test_ablation_switches():
    delta = delta_of(1)
    msg, state = step(FedSparQ(error_feedback=False), FedSparQ().init_client(LAYOUT), delta)
    assert state.residual.abs().sum() == 0
    msg, state = step(FedSparQ(values="fp32"), FedSparQ().init_client(LAYOUT), delta)
    assert msg.values.data.dtype == torch.float32 and torch.equal(state.residual[msg.indices], torch.zeros(msg.n))
    msg, _ = step(FedSparQ(selection="static", tau=0.5), FedSparQ().init_client(LAYOUT), delta)
    assert msg.indices.tolist() == (delta.abs() >= 0.5).nonzero().squeeze(1).tolist()
    ema, _ = step(FedSparQ(), FedSparQ().init_client(LAYOUT), delta)
    rnd, _ = step(FedSparQ(selection="random"), FedSparQ().init_client(LAYOUT), delta)
    per_tensor = [lambda m, e=e: int(((m.indices >= e.offset) & (m.indices < e.stop)).sum()) for e in LAYOUT]
    assert [f(ema) for f in per_tensor] == [f(rnd) for f in per_tensor]  # same density per tensor
    assert not torch.equal(ema.indices, rnd.indices)


def test_third_party_reading_options():
    delta = delta_of(2)
    msg, state = step(FedSparQ(residual="quantization_only"), FedSparQ().init_client(LAYOUT), delta)
    dropped = torch.ones(D, dtype=torch.bool)
    dropped[msg.indices] = False
    assert state.residual[dropped].abs().sum() == 0  # only the fp16 error of kept entries survives
    _, state = step(FedSparQ(ema_init="zero", beta=0.9), FedSparQ().init_client(LAYOUT), delta)
    means = torch.stack([delta[e.offset:e.stop].abs().mean() for e in LAYOUT])
    assert torch.allclose(state.thresholds.tau, 0.1 * means)
    strict, _ = step(FedSparQ(selection="static", tau=1.0, strict=True), FedSparQ().init_client(LAYOUT),
                     torch.ones(D))
    assert strict.n == 0


def test_statistic_of_update_ignores_the_residual():
    alg = FedSparQ(statistic_of="update", beta=0.0)
    _, state = step(alg, alg.init_client(LAYOUT), delta_of(3))
    delta = delta_of(4)
    _, state2 = step(alg, state, delta)
    means = torch.stack([delta[e.offset:e.stop].abs().mean() for e in LAYOUT])
    assert torch.allclose(state2.thresholds.tau, means)


def test_fedprox_term_and_dense_downlink():
    from fedpress.algorithms import RoundContext
    from tests.algorithms.helpers import MODEL

    alg = build("fedsparq", {"prox_mu": 0.5})
    server = alg.init_server(torch.arange(D, dtype=torch.float32), LAYOUT)
    msg, _ = alg.broadcast(server, RoundContext(0, 0, (0,), MODEL, 1))
    assert msg.indices is None and msg.seed is None and msg.values.data.dtype == torch.float32
    assert torch.equal(msg.expand(LAYOUT), server.x)
    plan = alg.client_begin(alg.init_client(LAYOUT), torch.ones(D), ctx())
    w = torch.full((LAYOUT.numel,), 3.0)
    assert float(plan.penalty(w, 0)) == 0.25 * 4.0 * D  # (mu/2) ||w - x||^2
    assert build("fedsparq", {"prox_mu": 0.0}).client_begin(None, torch.ones(D), ctx()).penalty is None
