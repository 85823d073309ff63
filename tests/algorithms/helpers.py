import torch

from fedpress.algorithms import ClientContext
from fedpress.local import FlatModel, LocalResult
from fedpress.models import build_model

MODEL = FlatModel.of(build_model("mlp", (4,), 2, torch.Generator().manual_seed(0), widths=[3]))
LAYOUT = MODEL.layout  # fc weights (3,4), bias (3,), out (2,3), bias (2,): d = 23


def ctx(round_=0, client=0):
    return ClientContext(round_, client, 10, 0, MODEL)


def result(plan, delta):
    return LocalResult(plan.x0 + delta, 1, 0.0)
