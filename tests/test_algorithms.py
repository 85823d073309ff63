import torch

from fedpress.algorithms import FedAvg, RoundContext, Uplink, build
from fedpress.compress import error_feedback, fp16, top_k
from fedpress.layout import Layout
from fedpress.local import FlatModel
from fedpress.models import build_model
from fedpress.wire import Dense, Message

MODEL = FlatModel.of(build_model("mlp", (4,), 2, widths=[3]))
LAYOUT = MODEL.layout
CTX = RoundContext(0, 0, (0, 1), MODEL)


def uplink(client, values, weight):
    return Uplink(client, Message(LAYOUT.numel, Dense(torch.as_tensor(values, dtype=torch.float32))), weight)


def test_weighted_average_and_server_learning_rate():
    d = LAYOUT.numel
    alg = FedAvg(server_lr=0.5)
    server = alg.init_server(torch.zeros(d), LAYOUT)
    server = alg.aggregate(server, [uplink(0, torch.ones(d), 1.0), uplink(1, 4 * torch.ones(d), 3.0)], CTX)
    assert torch.allclose(server.x, torch.full((d,), 0.5 * 3.25))


def test_server_momentum_is_fedavgm():
    d = LAYOUT.numel
    alg = FedAvg(server_momentum=0.9)
    server = alg.init_server(torch.zeros(d), LAYOUT)
    for _ in range(2):
        server = alg.aggregate(server, [uplink(0, torch.ones(d), 1.0)], CTX)
    assert torch.allclose(server.momentum, torch.full((d,), 1.9))  # m = 0.9 * 1 + 1
    assert torch.allclose(server.x, torch.full((d,), 2.9))  # x = 1 + 1.9


def test_no_uplinks_leave_the_server_unchanged():
    alg = FedAvg()
    server = alg.init_server(torch.ones(LAYOUT.numel), LAYOUT)
    assert alg.aggregate(server, [], CTX) is server


def test_registry_builds_the_named_compositions():
    alg = build("topk_ef", {"ratio": 0.1, "precision": "fp16"})
    assert alg.uplink.name == error_feedback(top_k(0.1)).name.replace("top_k(0.1)", "top_k(0.1) -> fp16")
    assert build("fedavg", {"precision": "fp16"}).uplink.name == fp16().name
    assert build("qsgd", {"levels": 3, "bucket": 0}).uplink.name == "qsgd(levels=3)"
    assert build("randk_ef", {"seeded": True}).uplink.name.startswith("error_feedback(random_k(0.01, seeded")


def test_algorithms_do_not_import_the_simulator():
    import subprocess
    import sys

    code = "import sys, fedpress.algorithms; print(sorted(m for m in sys.modules if m.startswith('fedpress.sim')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_layout_flat_helper():
    assert Layout.flat(7).numel == 7
