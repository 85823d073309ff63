"""fedpress compression in a plain Flower app that knows nothing of fedpress: two lines."""

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg, Strategy  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from fedpress.compress import chain, error_feedback, fp16, top_k  # noqa: E402
from fedpress.flower.mod import Decompress, compress_mod, flatten, layout_of, unflatten  # noqa: E402
from tests.sim.conftest import synthetic_dataset  # noqa: E402

DATA = synthetic_dataset()  # four gaussian classes in 16 dimensions


def plain_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def plain_client_app(mods=()) -> ClientApp:
    """An ordinary Flower ClientApp: load arrays, train one epoch of SGD on its shard, reply."""
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        model = plain_model()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        part, parts = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
        x, y = DATA.x_train[part::parts], DATA.y_train[part::parts]
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for at in range(0, len(y), 32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[at : at + 32]), y[at : at + 32]).backward()
            opt.step()
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(y)})}), reply_to=msg)

    return app


class Counting(Strategy):
    """Flower's own count of the train replies' arrays, before anything else sees them."""

    def __init__(self, inner: Strategy, counted: list):
        self.inner, self.counted = inner, counted

    def configure_train(self, *args):
        return self.inner.configure_train(*args)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.counted.append(sum(r.content["arrays"].count_bytes() for r in replies if r.has_content()))
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, *args):
        return self.inner.configure_evaluate(*args)

    def aggregate_evaluate(self, *args):
        return self.inner.aggregate_evaluate(*args)

    def summary(self):
        self.inner.summary()


def accuracy(arrays: ArrayRecord) -> float:
    model = plain_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    with torch.no_grad():
        return float((model(DATA.x_test).argmax(1) == DATA.y_test).float().mean())


def run_plain(compressed: bool) -> tuple[list[int], float]:
    counted, result = [], {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3)
        if compressed:
            strategy = Decompress(strategy)  # line 2 of 2 on the server
        out = Counting(strategy, counted).start(grid=grid, initial_arrays=ArrayRecord(plain_model().state_dict()),
                                                num_rounds=3, train_config=ConfigRecord({}))
        result["accuracy"] = accuracy(out.arrays)

    codec = error_feedback(chain(top_k(0.05), fp16()))
    client = plain_client_app([compress_mod(codec)] if compressed else [])  # line 1 of 2 on the client
    run_simulation(server_app=server, client_app=client, num_supernodes=3,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "logging_level": "ERROR", "log_to_driver": False}})
    return counted, result["accuracy"]


def test_flat_view_of_an_array_record_round_trips():
    record = ArrayRecord(plain_model().state_dict())
    x = flatten(record)
    assert x.numel() == layout_of(record).numel == 16 * 32 + 32 + 32 * 4 + 4
    back = unflatten(x, record)
    for key in record:
        assert (back[key].numpy() == record[key].numpy()).all()


def test_compress_mod_cuts_a_plain_apps_uplink_and_it_still_learns():
    dense, dense_acc = run_plain(compressed=False)
    sparse, sparse_acc = run_plain(compressed=True)
    assert len(dense) == len(sparse) == 3
    # top 5% of 676 values as fp16 + indices: about 10x fewer bytes than 676 fp32 values
    assert all(d > 6 * s for d, s in zip(dense, sparse, strict=True)), (dense, sparse)
    assert dense_acc > 0.6 and sparse_acc > 0.5, (dense_acc, sparse_acc)  # chance is 0.25
