"""One-output models: the binary logistic loss in local training and evaluation (QAFeL's
logistic regression, spec §5.4)."""

import torch

from fedpress.local import FlatModel, LocalPlan, TrainSpec, evaluate, loss_of, train
from fedpress.models import build_model


def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64).float()
    y = (x[:, 0] + 0.3 * torch.randn(n, generator=g) > 0).long()
    return x, y


def test_the_one_logit_loss_is_log_1_plus_exp_z_minus_y_z():
    z = torch.tensor([[-3.0], [0.0], [2.0], [40.0]])
    y = torch.tensor([0, 1, 1, 0])
    expected = (torch.log1p(torch.exp(z[:, 0])) - y * z[:, 0]).mean()
    assert torch.allclose(loss_of(z, y), expected)


def test_full_batch_gd_with_weight_decay_is_gradient_descent_on_the_regularised_objective():
    """Q full-batch steps of train() equal x <- x - lr (grad f_i(x) + lambda x), written out by hand."""
    x, y = data()
    model = FlatModel.of(build_model("logreg", (5,), 1, init="zeros"))
    lam, lr = 0.1, 0.5
    out = train(
        model,
        LocalPlan(model.initial()),
        x,
        y,
        TrainSpec(lr=lr, batch_size=1000, steps=4, weight_decay=lam),
        torch.Generator(),
    )
    w = torch.zeros(6)  # [weights | bias]
    a = torch.cat([x, torch.ones(len(y), 1)], 1)
    for _ in range(4):
        p = torch.sigmoid(a @ w)
        w = w - lr * (a.T @ (p - y) / len(y) + lam * w)
    assert torch.allclose(out.x, w, atol=1e-6)


def test_evaluate_gives_accuracy_from_the_sign_of_the_logit():
    x, y = data()
    model = FlatModel.of(build_model("logreg", (5,), 1, init="zeros"))
    w = torch.zeros(6)
    w[0] = 5.0  # predicts y = [x_0 > 0]
    acc, loss = evaluate(model, w, x, y)
    assert acc == int(((x[:, 0] > 0).long() == y).sum()) / len(y) and 0.9 < acc < 1
    assert abs(loss - float(loss_of(x[:, :1] * 5.0, y))) < 1e-6
    assert abs(evaluate(model, torch.zeros(6), x, y)[1] - float(torch.log(torch.tensor(2.0)))) < 1e-6
