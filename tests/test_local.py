"""Local training equals a plain PyTorch loop, and its hooks do what they say."""

import torch
import torch.nn.functional as F

from fedpress.local import FlatModel, LocalPlan, TrainSpec, batches, evaluate, train
from fedpress.models import build_model


def setup(name="mlp", **kw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    model = build_model(name, (1, 4, 4), 3, torch.Generator().manual_seed(1), **kw)
    return model, x, y


def test_equals_torch_optim_sgd_bit_for_bit():
    module, x, y = setup(widths=[8])
    fm = FlatModel.of(module)
    spec = TrainSpec(lr=0.1, batch_size=10, epochs=2, momentum=0.9, weight_decay=1e-3)
    ours = train(fm, LocalPlan(fm.initial()), x, y, spec, torch.Generator().manual_seed(5)).x

    ref = build_model("mlp", (1, 4, 4), 3, torch.Generator().manual_seed(1), widths=[8])
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(5)
    torch.randint(0, 2**62, (1,), generator=g)  # train() draws the dropout seed first
    for idx in batches(96, 10, 20, g):
        opt.zero_grad()
        F.cross_entropy(ref(x[idx]), y[idx]).backward()
        opt.step()
    assert torch.equal(ours, fm.layout.flatten(dict(ref.named_parameters())))


def test_steps_and_epochs():
    module, x, y = setup(widths=[8])
    fm = FlatModel.of(module)
    g = torch.Generator().manual_seed(0)
    assert train(fm, LocalPlan(fm.initial()), x, y, TrainSpec(batch_size=32, epochs=2), g).steps == 6
    assert train(fm, LocalPlan(fm.initial(), steps=7), x, y, TrainSpec(batch_size=32), g).steps == 7
    assert train(fm, LocalPlan(fm.initial()), x, y, TrainSpec(batch_size=32, steps=4), g).steps == 4


def test_penalty_gradient_enters_the_step():
    """One full-batch step with FedProx's (mu/2)||w - a||^2: x0 - lr (g + mu (x0 - a))."""
    module, x, y = setup(widths=[8])
    fm = FlatModel.of(module)
    x0 = fm.initial()
    anchor = x0 + 0.3
    spec = TrainSpec(lr=0.1, batch_size=96, steps=1)
    free = train(fm, LocalPlan(x0), x, y, spec, torch.Generator().manual_seed(0)).x  # x0 - lr g

    def prox(w, step):
        return 0.5 * 2.0 * (w - anchor).square().sum()

    held = train(fm, LocalPlan(x0, penalty=prox), x, y, spec, torch.Generator().manual_seed(0)).x
    assert torch.allclose(held, free - 0.1 * 2.0 * (x0 - anchor), atol=1e-6)


def test_gradient_offset_is_added_to_every_step():
    """Equals torch.optim.SGD with the offset added to every parameter's gradient (Scaffnew's -h_i)."""
    module, x, y = setup(widths=[8])
    fm = FlatModel.of(module)
    offset = torch.randn(fm.num_params, generator=torch.Generator().manual_seed(9))
    spec = TrainSpec(lr=0.1, batch_size=16, steps=4, momentum=0.5)
    ours = train(fm, LocalPlan(fm.initial(), grad_offset=offset), x, y, spec, torch.Generator().manual_seed(5)).x
    ref = build_model("mlp", (1, 4, 4), 3, torch.Generator().manual_seed(1), widths=[8])
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.5)
    pieces = fm.param_layout.unflatten(offset)
    g = torch.Generator().manual_seed(5)
    torch.randint(0, 2**62, (1,), generator=g)
    for idx in batches(96, 16, 4, g):
        opt.zero_grad()
        F.cross_entropy(ref(x[idx]), y[idx]).backward()
        for name, p in ref.named_parameters():
            p.grad += pieces[name]
        opt.step()
    assert torch.equal(ours, fm.layout.flatten(dict(ref.named_parameters())))


def test_zero_steps_return_the_start_point():
    module, x, y = setup(widths=[8])
    fm = FlatModel.of(module)
    out = train(fm, LocalPlan(fm.initial(), steps=0), x, y, TrainSpec(), torch.Generator().manual_seed(0))
    assert torch.equal(out.x, fm.initial()) and out.steps == 0


def test_grad_at_takes_gradients_at_another_point():
    module, x, y = setup(widths=[8])
    fm = FlatModel.of(module)
    x0 = fm.initial()
    spec = TrainSpec(lr=0.1, batch_size=96, steps=1)
    at_zero = train(fm, LocalPlan(x0, grad_at=torch.zeros_like), x, y, spec, torch.Generator().manual_seed(0)).x
    zero = torch.zeros(fm.num_params).requires_grad_(True)
    loss = F.cross_entropy(torch.func.functional_call(module, fm.param_layout.unflatten(zero), (x,)), y)
    (g,) = torch.autograd.grad(loss, zero)
    assert torch.allclose(at_zero, x0 - 0.1 * g, atol=1e-7)


def test_batchnorm_buffers_travel_in_the_flat_state():
    module = build_model("resnet18", (3, 8, 8), 2, torch.Generator().manual_seed(0))
    fm = FlatModel.of(module)
    assert fm.layout.numel > fm.num_params  # running means and variances follow the parameters
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 2, (8,), generator=g)
    out = train(fm, LocalPlan(fm.initial()), x, y, TrainSpec(batch_size=8, steps=1), g).x
    P = fm.num_params
    assert not torch.equal(out[P:], fm.initial()[P:])  # BatchNorm updated its statistics
    acc, loss = evaluate(fm, out, x, y)
    assert 0 <= acc <= 1 and loss > 0


def test_training_does_not_touch_global_random_state():
    module, x, y = setup(widths=[8])
    fm = FlatModel.of(module)
    before = torch.get_rng_state()
    train(fm, LocalPlan(fm.initial()), x, y, TrainSpec(), torch.Generator().manual_seed(0))
    assert torch.equal(before, torch.get_rng_state())


def test_momentum_reset_step_restarts_the_velocity():
    """Equals torch.optim.SGD whose state is cleared before step 2 (FLARE's model copy)."""
    module, x, y = setup(widths=[8])
    fm = FlatModel.of(module)
    spec = TrainSpec(lr=0.1, batch_size=16, steps=4, momentum=0.9)
    ours = train(fm, LocalPlan(fm.initial(), momentum_reset_step=2), x, y, spec, torch.Generator().manual_seed(5)).x
    ref = build_model("mlp", (1, 4, 4), 3, torch.Generator().manual_seed(1), widths=[8])
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(5)
    torch.randint(0, 2**62, (1,), generator=g)
    for step, idx in enumerate(batches(96, 16, 4, g)):
        if step == 2:
            opt.state.clear()
        opt.zero_grad()
        F.cross_entropy(ref(x[idx]), y[idx]).backward()
        opt.step()
    assert torch.equal(ours, fm.layout.flatten(dict(ref.named_parameters())))


def test_a_plan_is_data_that_pickles_and_trains_to_the_same_result():
    """Every term a plan may hold (FedProx's and FLARE's penalties, FedComLoc-Local's
    compressed gradient point with its codec) crosses pickle and trains bit for bit alike."""
    import pickle

    from fedpress.compress import chain, qsgd, top_k
    from fedpress.local import CompressedPoint, MaskedDistance, Proximal

    module, x, y = setup(widths=[8])
    fm = FlatModel.of(module)
    x0, P = fm.initial().detach(), fm.num_params
    mask = torch.arange(P) % 3 == 0
    plans = [
        LocalPlan(x0, penalty=Proximal(x0[:P] + 0.1, 0.05)),
        LocalPlan(x0, penalty=MaskedDistance(mask, x0[:P][mask] - 0.2, 0.3, power=1), penalty_steps=2,
                  momentum_reset_step=2),
        LocalPlan(x0, steps=5, grad_offset=torch.full((P,), 0.01),
                  grad_at=CompressedPoint(chain(top_k(0.5), qsgd(7, 16)), fm.param_layout, 1234)),
    ]
    spec = TrainSpec(lr=0.1, batch_size=16, epochs=1, momentum=0.9)
    for plan in plans:
        copy = pickle.loads(pickle.dumps(plan))
        a = train(fm, plan, x, y, spec, torch.Generator().manual_seed(2)).x
        b = train(fm, copy, x, y, spec, torch.Generator().manual_seed(2)).x
        assert torch.equal(a, b) and not torch.equal(a, x0)


def test_the_compressed_point_draws_one_stream_per_training_as_a_closure_did():
    """CompressedPoint equals the closure it replaced: one generator seeded once, advanced
    step by step (FedComLoc-Local's ctx.rng("local_compress"))."""
    from fedpress.compress import qsgd
    from fedpress.local import CompressedPoint

    module, x, y = setup(widths=[8])
    fm = FlatModel.of(module)
    x0, codec, layout = fm.initial().detach(), qsgd(3, 8), fm.param_layout
    rng = torch.Generator().manual_seed(99)

    def closure(w):
        return codec.encode(w, layout, codec.init(layout), rng)[0].expand(layout)

    spec = TrainSpec(lr=0.1, batch_size=16, steps=6)
    ours = train(fm, LocalPlan(x0, grad_at=CompressedPoint(codec, layout, 99)), x, y, spec,
                 torch.Generator().manual_seed(4)).x
    theirs = train(fm, LocalPlan(x0, grad_at=closure), x, y, spec, torch.Generator().manual_seed(4)).x
    assert torch.equal(ours, theirs)
