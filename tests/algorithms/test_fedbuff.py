"""FedBuff, QAFeL and Naive as pure step functions (spec §1.8, §5.2), without the engine."""

import pytest
import torch

from fedpress.algorithms import ClientContext, RoundContext, Uplink, build
from fedpress.algorithms.fedbuff import Buffered
from fedpress.compress import minmax_affine, qsgd
from fedpress.errors import ConfigError
from fedpress.local import FlatModel, LocalPlan, LocalResult
from fedpress.models import build_model
from fedpress.wire.message import Dense, Message

MODEL = FlatModel.of(build_model("mlp", (6,), 3, widths=[5]))
LAYOUT = MODEL.layout
D = LAYOUT.numel


def rctx(t=0):
    return RoundContext(t, 0, (), MODEL)


def cctx(seq=0, client=0):
    return ClientContext(seq, client, 10, 0, MODEL)


def dense(x):
    return Message(D, Dense(x))


def fill(alg, server, updates, weights=None):
    for i, u in enumerate(updates):
        w = 1.0 if weights is None else weights[i]
        server = alg.receive(server, Uplink(i, dense(u), 10.0, 0, w), rctx(server.version))
    return server


def test_registry_builds_the_three_methods_with_their_quantizers():
    fb = build("fedbuff", {})
    assert isinstance(fb, Buffered) and fb.start == "model" and fb.buffer_size == 10
    qa = build(
        "qafel", {"client_quantizer": "minmax_affine", "client_bits": 4, "server_quantizer": "qsgd", "server_levels": 8}
    )
    assert qa.start == "hidden_state" and qa.client_codec.name == minmax_affine(4).name
    assert qa.server_codec.name == qsgd(8).name
    assert build("naive", {"server_quantizer": "top_k", "server_ratio": 0.5}).server_codec.name.startswith("top_k")
    with pytest.raises(ConfigError, match="algorithm.client_quantizer is not a hyperparameter of 'fedbuff'"):
        build("fedbuff", {"client_quantizer": "qsgd"})
    with pytest.raises(ConfigError, match=r"algorithm.server_quantizer = 'int4' is not allowed; allowed: \['qsgd'"):
        build("qafel", {"server_quantizer": "int4"})
    with pytest.raises(ConfigError, match="algorithm.server_step = 'avg' is not allowed"):
        build("fedbuff", {"server_step": "avg"})


@pytest.mark.parametrize("server_step,scale", [("mean", 0.5 / 3), ("sum", 0.5)])
def test_server_step_is_eta_b_over_k_or_eta_b(server_step, scale):
    alg = Buffered(buffer_size=3, server_lr=0.5, server_step=server_step)
    x0 = torch.randn(D, generator=torch.Generator().manual_seed(0))
    updates = [torch.randn(D, generator=torch.Generator().manual_seed(i + 1)) for i in range(3)]
    server = fill(alg, alg.init_server(x0, LAYOUT), updates[:2])
    assert not alg.ready(server) and server.count == 2
    server = fill(alg, server, updates[2:])
    assert alg.ready(server)
    stepped, q = alg.flush(server, rctx())
    assert q is None and stepped.version == 1 and stepped.count == 0 and not stepped.buffer.any()
    assert torch.allclose(stepped.x, x0 + scale * sum(updates), atol=1e-6)


def test_the_buffer_weighs_each_update_by_its_staleness_weight():
    alg = Buffered(buffer_size=2, server_lr=1.0, server_step="sum")
    u = torch.ones(D)
    server = fill(alg, alg.init_server(torch.zeros(D), LAYOUT), [u, 2 * u], weights=[0.5, 0.25])
    assert torch.equal(server.buffer, torch.full((D,), 1.0))


def test_qafel_broadcasts_the_quantized_difference_and_both_sides_add_it():
    alg = build("qafel", {"buffer_size": 1, "server_lr": 1.0, "server_quantizer": "minmax_affine", "server_bits": 2})
    x0 = torch.randn(D, generator=torch.Generator().manual_seed(3))
    server = alg.init_server(x0, LAYOUT)
    assert torch.equal(server.x_hat, x0)  # x_hat_0 = x_0
    join = alg.join(server, rctx())
    assert torch.equal(join.expand(LAYOUT), x0)  # a newcomer downloads x_hat whole
    down, _ = alg.dispatch(server, cctx())
    assert down is None  # QAFeL clients start from their copy of x_hat
    u = torch.randn(D, generator=torch.Generator().manual_seed(4))
    stepped, q = alg.flush(fill(alg, server, [u]), rctx())
    expected_q, _ = minmax_affine(2).encode(stepped.x - x0, LAYOUT, None)
    assert q.same_as(expected_q)  # q = Q_s(x - x_hat), deterministic min-max
    assert torch.equal(stepped.x_hat, x0 + q.expand(LAYOUT))
    assert torch.equal(alg.apply_broadcast(x0, q, LAYOUT), stepped.x_hat)  # a client's copy moves the same way
    assert not torch.equal(stepped.x_hat, stepped.x)


def test_naive_clients_start_from_the_quantized_model_and_fedbuff_from_x():
    x = torch.randn(D, generator=torch.Generator().manual_seed(5))
    naive = build("naive", {"server_quantizer": "minmax_affine", "server_bits": 3})
    down, _ = naive.dispatch(naive.init_server(x, LAYOUT), cctx())
    assert down.same_as(minmax_affine(3).encode(x, LAYOUT, None)[0])
    assert naive.join(naive.init_server(x, LAYOUT), rctx()) is None
    fedbuff = build("fedbuff", {})
    down, _ = fedbuff.dispatch(fedbuff.init_server(x, LAYOUT), cctx())
    assert torch.equal(down.expand(LAYOUT), x)


def test_client_uploads_the_quantized_delta_with_its_own_stream():
    alg = build("qafel", {"client_quantizer": "qsgd", "client_levels": 4})
    y0 = torch.randn(D, generator=torch.Generator().manual_seed(6))
    y1 = y0 + 0.1 * torch.randn(D, generator=torch.Generator().manual_seed(7))
    plan = alg.client_begin(None, y0, cctx())
    assert torch.equal(plan.x0, y0)
    result = LocalResult(y1, 3, 0.5)
    up, state = alg.client_end(None, plan, result, cctx(seq=1, client=2))
    again, _ = alg.client_end(None, plan, result, cctx(seq=1, client=2))
    other, _ = alg.client_end(None, LocalPlan(y0), result, cctx(seq=2, client=2))
    assert state is None and up.same_as(again) and not up.same_as(other)
    expected, _ = qsgd(4).encode(y1 - y0, LAYOUT, None, cctx(seq=1, client=2).rng("uplink"))
    assert up.same_as(expected)
