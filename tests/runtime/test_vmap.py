"""The vectorized executor equals Sequential to its stated tolerance, masks ragged clients
exactly, and falls back to Sequential (bit for bit, with a notice) for what it cannot stack."""

import csv
import math

import pytest
import torch
from torch import nn

import fedpress.runtime.executor as executor_module
from fedpress.compress import qsgd
from fedpress.local import CompressedPoint, FlatModel, LocalPlan, MaskedDistance, Proximal, TrainSpec, batches
from fedpress.models import build_model
from fedpress.models.powerprop import powerpropagate, swatify
from fedpress.runtime.executor import Job, Sequential
from fedpress.runtime.vmap import Vectorized
from fedpress.sim import run
from tests.sim.conftest import synthetic, tiny_config  # noqa: F401

RTOL = 1e-5  # max |x_vmap - x_seq| <= RTOL * (1 + |x_seq|), elementwise (the module docstring's bound)


def model(name: str, shape, classes=3, **kw) -> FlatModel:
    return FlatModel.of(build_model(name, shape, classes, torch.Generator().manual_seed(1), **kw))


def data(sizes, shape, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)) for n in sizes]


def make_jobs(plans, samples, seed=100):
    """Fresh jobs (fresh generators): each executor gets its own."""
    return [Job(plan, x, y, torch.Generator().manual_seed(seed + i))
            for i, (plan, (x, y)) in enumerate(zip(plans, samples, strict=True))]


def both(fm, plans, samples, spec, vectorized=None):
    """(Sequential's results, Vectorized's results, the Vectorized executor)."""
    ex = vectorized or Vectorized()
    return (Sequential().run(fm, make_jobs(plans, samples), spec), ex.run(fm, make_jobs(plans, samples), spec), ex)


def assert_close(seq, vec):
    assert len(seq) == len(vec)
    for a, b in zip(seq, vec, strict=True):
        assert a.steps == b.steps
        assert b.x.device.type == "cpu" and b.x.shape == a.x.shape and b.x.dtype == a.x.dtype
        assert bool(((a.x - b.x).abs() <= RTOL * (1 + a.x.abs())).all()), ((a.x - b.x).abs().max())
        if math.isnan(a.loss):
            assert math.isnan(b.loss)
        else:
            assert b.loss == pytest.approx(a.loss, rel=RTOL)


def assert_identical(seq, vec):
    for a, b in zip(seq, vec, strict=True):
        assert torch.equal(a.x, b.x) and a.steps == b.steps
        assert (math.isnan(a.loss) and math.isnan(b.loss)) or a.loss == b.loss


@pytest.fixture
def fresh_notices(monkeypatch):
    """Forget the notices this process printed, so each test sees its own."""
    monkeypatch.setattr(executor_module, "_told", set())


# ---------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("name,shape,kw", [("mlp", (1, 4, 4), {"widths": [16, 8]}),
                                           ("lenet5", (1, 28, 28), {})])  # LeNet-5 needs >= 1x12x12
def test_equals_sequential_with_every_stackable_plan_term(name, shape, kw, capsys):
    """Momentum, weight decay, two passes with ragged last batches, clients of different
    sizes (14, 6, 8, 0 and 4 steps, and 7 fixed steps over 5 samples), Proximal with penalty_steps, grad_offset,
    grad_mask, plan.lr, plan.steps and momentum_reset_step, in one batch."""
    fm = model(name, shape, **kw)
    x0, P = fm.initial().detach(), fm.num_params
    g = torch.Generator().manual_seed(7)
    plans = [
        LocalPlan(x0),
        LocalPlan(x0, penalty=Proximal(x0 + 0.1 * torch.randn(P, generator=g), 0.3), penalty_steps=3),
        LocalPlan(x0, grad_offset=0.01 * torch.randn(P, generator=g),
                  grad_mask=(torch.rand(P, generator=g) > 0.3).float(), lr=0.02),
        LocalPlan(x0, steps=7, momentum_reset_step=2, penalty=Proximal(x0, 0.05)),
        LocalPlan(x0),  # no samples
        LocalPlan(x0 + 0.01, momentum_reset_step=1, grad_offset=torch.full((P,), -0.01)),
    ]
    samples = data([100, 37, 64, 5, 0, 20], shape)
    spec = TrainSpec(lr=0.05, batch_size=16, epochs=2, momentum=0.9, weight_decay=1e-3)
    seq, vec, ex = both(fm, plans, samples, spec)
    assert ex.last_fallback is None and capsys.readouterr().err == ""
    assert [r.steps for r in seq] == [14, 6, 8, 7, 0, 4]
    assert_close(seq, vec)
    assert all(not torch.equal(r.x, p.x0) for r, p, (x, _) in zip(vec, plans, samples, strict=True) if len(x))
    assert torch.equal(vec[4].x, x0) and math.isnan(vec[4].loss)


def test_equals_sequential_for_the_one_logit_loss_plain_sgd_and_fixed_steps():
    """The binary logistic loss (one output, labels 0/1), no momentum, one shared lr,
    spec.steps past the end of a client's data (reshuffled passes)."""
    fm = model("logreg", (1, 4, 4), classes=1)
    x0 = fm.initial().detach()
    samples = [(x, y % 2) for x, y in data([50, 9, 23], (1, 4, 4))]
    spec = TrainSpec(lr=0.5, batch_size=8, steps=9, weight_decay=0.02)
    seq, vec, ex = both(fm, [LocalPlan(x0)] * 3, samples, spec)
    assert ex.last_fallback is None
    assert_close(seq, vec)


def test_the_generators_are_asked_what_train_asks():
    """After a batch, every client's generator is where Sequential leaves it; a client
    with no samples or no steps draws nothing."""
    fm = model("mlp", (1, 4, 4), widths=[8])
    x0 = fm.initial().detach()
    plans = [LocalPlan(x0), LocalPlan(x0, steps=0), LocalPlan(x0), LocalPlan(x0, steps=11)]
    samples = data([40, 30, 0, 17], (1, 4, 4))
    spec = TrainSpec(batch_size=16, epochs=1, momentum=0.5)
    a, b = make_jobs(plans, samples), make_jobs(plans, samples)
    Sequential().run(fm, a, spec)
    Vectorized().run(fm, b, spec)
    assert all(torch.equal(ja.rng.get_state(), jb.rng.get_state()) for ja, jb in zip(a, b, strict=True))
    untouched = make_jobs(plans, samples)
    assert torch.equal(b[1].rng.get_state(), untouched[1].rng.get_state())
    assert torch.equal(b[2].rng.get_state(), untouched[2].rng.get_state())
    assert Vectorized().run(fm, [], spec) == []


def test_chunks_of_max_clients_give_the_same_results():
    fm = model("mlp", (1, 4, 4), widths=[8])
    x0 = fm.initial().detach()
    samples = data([30, 50, 10, 70, 20], (1, 4, 4))
    spec = TrainSpec(batch_size=16, epochs=1, momentum=0.9)
    seq, vec, _ = both(fm, [LocalPlan(x0)] * 5, samples, spec, Vectorized(max_clients=2))
    assert_close(seq, vec)


# ---------------------------------------------------------------------------- masking


def test_a_finished_client_stops_moving():
    """A 1-step client batched with a 10-step one: its result is its one step (Sequential's,
    and Vectorized's for it alone), and it is the same bit for bit whether the other client
    goes on for 10 steps or 2: after its step nothing touches it."""
    fm = model("mlp", (1, 4, 4), widths=[8])
    x0 = fm.initial().detach()
    samples = data([16, 160], (1, 4, 4))
    spec = TrainSpec(lr=0.1, batch_size=16, epochs=1, momentum=0.9, weight_decay=1e-3)
    plans = [LocalPlan(x0), LocalPlan(x0)]  # 1 step and 10 steps
    seq, vec, ex = both(fm, plans, samples, spec)
    assert [r.steps for r in vec] == [1, 10] and ex.last_fallback is None
    assert_close(seq, vec)
    alone = Vectorized().run(fm, make_jobs(plans[:1], samples[:1]), spec)
    assert_close(alone, vec[:1])
    shorter = Vectorized().run(fm, make_jobs([plans[0], LocalPlan(x0, steps=2)], samples), spec)
    assert shorter[1].steps == 2 and not torch.equal(shorter[1].x, vec[1].x)
    assert torch.equal(shorter[0].x, vec[0].x) and shorter[0].loss == vec[0].loss


def test_a_short_minibatch_is_the_mean_over_its_real_samples():
    """5 samples in a batch of 16, beside a client with full batches: one step is
    x0 - lr * grad(mean loss over the 5), as if unpadded."""
    fm = model("mlp", (1, 4, 4), widths=[8])
    x0 = fm.initial().detach()
    samples = data([5, 64], (1, 4, 4))
    spec = TrainSpec(lr=0.1, batch_size=16, steps=1)
    out = Vectorized().run(fm, make_jobs([LocalPlan(x0)] * 2, samples), spec)[0]
    x, y = samples[0]
    g = torch.Generator().manual_seed(100)
    torch.randint(0, 2**62, (1,), generator=g)
    (idx,) = batches(5, 16, 1, g)
    w = x0.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(torch.func.functional_call(fm.module, fm.tensors(w), (x[idx],)), y[idx])
    (grad,) = torch.autograd.grad(loss, w)
    assert torch.allclose(out.x, x0 - 0.1 * grad, rtol=0, atol=1e-7)
    assert out.loss == pytest.approx(float(loss), rel=1e-6)


# ---------------------------------------------------------------------------- fallbacks


class Counter(nn.Module):
    """A model with an integer buffer (not part of the flat state)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 3)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        return self.linear(x.flatten(1))


def _mlp():
    return build_model("mlp", (1, 4, 4), 3, torch.Generator().manual_seed(1), widths=[8])


UNSTACKABLE_MODELS = [  # (the model, the words its notice says)
    pytest.param(lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                       nn.Linear(64, 3)), "floating buffers (BatchNorm", id="batchnorm"),
    pytest.param(Counter, "the model has buffers", id="integer-buffer"),
    pytest.param(lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)),
                 "dropout layers", id="dropout-layer"),
    pytest.param(lambda: build_model("simple_convnet", (1, 4, 4), 3, torch.Generator().manual_seed(1), dropout=0.2),
                 "randomness in its forward", id="functional-dropout"),
    pytest.param(lambda: powerpropagate(_mlp(), 1.25, torch.Generator().manual_seed(2)), "Powerprop/SWAT",
                 id="powerprop"),
    pytest.param(lambda: swatify(_mlp(), 0.5), "Powerprop/SWAT", id="swat"),
]


@pytest.mark.parametrize("build,reason", UNSTACKABLE_MODELS)
def test_a_model_it_cannot_stack_trains_sequentially_bit_for_bit_with_one_notice(build, reason, fresh_notices,
                                                                                capsys):
    fm = FlatModel.of(build())
    x0 = fm.initial().detach()
    samples = data([40, 25], (1, 4, 4))
    spec = TrainSpec(lr=0.05, batch_size=16, epochs=1, momentum=0.9)
    for _ in range(2):
        seq, vec, ex = both(fm, [LocalPlan(x0)] * 2, samples, spec)
        assert_identical(seq, vec)
        assert reason in ex.last_fallback
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "executor = vmap" in lines[0] and reason in lines[0]


def _plan_cases(x0, fm):
    P = fm.num_params
    mask = torch.arange(P) % 3 == 0
    return {
        "MaskedDistance penalty": LocalPlan(x0, penalty=MaskedDistance(mask, x0[mask] - 0.2, 0.3)),
        "CompressedPoint": LocalPlan(x0, grad_at=CompressedPoint(qsgd(3, 8), fm.param_layout, 5)),
        "callable grad_at": LocalPlan(x0, grad_at=torch.zeros_like),
        "function penalty (only Proximal": LocalPlan(x0, penalty=lambda w, step: 0.1 * w.square().sum()),
    }


@pytest.mark.parametrize("reason", ["MaskedDistance penalty", "CompressedPoint", "callable grad_at",
                                    "function penalty (only Proximal"])
def test_a_plan_it_cannot_stack_trains_the_batch_sequentially_with_one_notice(reason, fresh_notices, capsys):
    fm = model("mlp", (1, 4, 4), widths=[8])
    x0 = fm.initial().detach()
    plans = [LocalPlan(x0), _plan_cases(x0, fm)[reason], LocalPlan(x0, penalty=Proximal(x0, 0.1))]
    samples = data([40, 25, 30], (1, 4, 4))
    spec = TrainSpec(lr=0.05, batch_size=16, epochs=1, momentum=0.9)
    for _ in range(2):
        seq, vec, ex = both(fm, plans, samples, spec)
        assert_identical(seq, vec)
        assert reason in ex.last_fallback
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and reason in lines[0]


def test_clients_with_samples_of_different_shapes_train_sequentially(fresh_notices, capsys):
    fm = model("mlp", (1, 4, 4), widths=[8])
    x0 = fm.initial().detach()
    (x, y), (u, v) = data([20, 20], (1, 4, 4))
    samples = [(x, y), (u.view(20, 16), v)]  # the MLP flattens either
    seq, vec, ex = both(fm, [LocalPlan(x0)] * 2, samples, TrainSpec(batch_size=8))
    assert_identical(seq, vec)
    assert "shape" in ex.last_fallback and len(capsys.readouterr().err.splitlines()) == 1


# ---------------------------------------------------------------------------- devices and whole runs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_the_stack_lives_on_the_device_and_results_come_back_to_the_cpu():
    fm = model("lenet5", (1, 16, 16))
    fm.module.cuda()
    x0, P = fm.initial().detach().cpu(), fm.num_params
    plans = [LocalPlan(x0, penalty=Proximal(x0 + 0.1, 0.2)), LocalPlan(x0, grad_offset=torch.full((P,), 0.01)),
             LocalPlan(x0)]
    spec = TrainSpec(lr=0.05, batch_size=16, epochs=1, momentum=0.9, device=torch.device("cuda"))
    seq, vec, ex = both(fm, plans, data([50, 17, 33], (1, 16, 16)), spec)
    assert ex.last_fallback is None
    assert_close(seq, vec)


class Recording(Vectorized):
    """Vectorized, remembering whether any batch fell back."""

    fallbacks: list = []

    def run(self, model, jobs, spec):
        out = super().run(model, jobs, spec)
        Recording.fallbacks.append(self.last_fallback)
        return out


@pytest.mark.parametrize("overrides", [{}, {"algorithm.name": "scaffnew", "train.momentum": 0.0}],
                         ids=["fedavg", "scaffnew"])
def test_a_whole_run_through_vmap_learns_as_sequential_does(synthetic, tmp_path, monkeypatch, overrides):  # noqa: F811
    """FedAvg (momentum, Dirichlet clients of different sizes) and Scaffnew (grad_offset,
    random plan.steps), dense fp32: the same accuracy within noise, every round's losses
    within 1e-4 (equal at metrics.csv's six digits when measured), the same bytes."""
    cfg = tiny_config(**overrides)
    reference = run(cfg, tmp_path / "seq", progress=False)
    monkeypatch.setitem(executor_module.EXECUTORS, "sequential", Recording)
    monkeypatch.setattr(Recording, "fallbacks", [])
    ours = run(cfg, tmp_path / "vmap", progress=False)
    assert Recording.fallbacks and all(f is None for f in Recording.fallbacks)
    assert abs(ours["final_accuracy"] - reference["final_accuracy"]) <= 0.03
    for key in ("uplink_bytes", "downlink_bytes", "dense_uplink_bytes", "dense_downlink_bytes"):
        assert ours[key] == reference[key], key
    for a, b in zip(metrics(tmp_path / "seq"), metrics(tmp_path / "vmap"), strict=True):
        assert {k: v for k, v in a.items() if "bytes" in k} == {k: v for k, v in b.items() if "bytes" in k}
        for key in ("train_loss", "test_loss"):
            assert (a[key] == b[key] == "") or float(b[key]) == pytest.approx(float(a[key]), rel=1e-4)


def metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))
