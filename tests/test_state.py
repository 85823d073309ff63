import pytest
import torch

from fedpress import state
from fedpress.algorithms import ServerState
from fedpress.compress import ChainState, EMAThresholdState, ErrorFeedbackState


def test_nested_states_round_trip_through_a_file(tmp_path):
    obj = {
        "server": ServerState(torch.randn(5), None),
        "clients": {3: ErrorFeedbackState(torch.randn(5), ChainState((EMAThresholdState(torch.ones(2),
                                                                     torch.tensor([1, 2])), None)))},
        "rows": [{"round": 1, "acc": 0.5, "note": ""}],
    }
    state.save(obj, tmp_path / "ck.pt")
    back = state.load(tmp_path / "ck.pt")
    assert torch.equal(back["server"].x, obj["server"].x) and back["server"].momentum is None
    ef = back["clients"][3]
    assert isinstance(ef, ErrorFeedbackState) and torch.equal(ef.residual, obj["clients"][3].residual)
    assert isinstance(ef.inner, ChainState) and torch.equal(ef.inner.parts[0].seen, torch.tensor([1, 2]))
    assert back["rows"] == obj["rows"]


def test_only_fedpress_classes_are_rebuilt():
    tree = {"__kind__": "dataclass", "class": "os:system", "fields": {}}
    with pytest.raises(ValueError, match="only fedpress"):
        state.from_tree(tree)


def test_unsupported_objects_are_refused_with_their_type():
    with pytest.raises(TypeError, match="set"):
        state.to_tree({1, 2})


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    state.save({"round": 1}, path)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        state.save({"round": 2}, path)
    assert state.load(path) == {"round": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_state_bytes_round_trip_every_dtype_exactly():
    from fedpress.algorithms.fedcomloc import ScaffnewServer
    from fedpress.wire.message import Dense, Message

    g = torch.Generator().manual_seed(0)
    tensors = {str(dt): (torch.randn(3, 2, generator=g) * 100).to(dt) for dt in
               (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
                torch.int8, torch.uint8, torch.bool)}
    obj = {"tensors": tensors, "nested": (1, 2.5, "x", None, [torch.zeros(0)]),
           7: ScaffnewServer(torch.randn(4, generator=g), Message(4, Dense(torch.ones(4))), (1, 2))}
    back = state.from_bytes(state.to_bytes(obj))
    for name, t in tensors.items():
        assert back["tensors"][name].dtype == t.dtype and torch.equal(back["tensors"][name], t)
    assert back["nested"][:4] == (1, 2.5, "x", None) and back["nested"][4][0].numel() == 0
    assert torch.equal(back[7].x, obj[7].x) and back[7].holders == (1, 2)
    assert torch.equal(back[7].reply.values.data, torch.ones(4))


def test_state_bytes_refuse_corruption_by_name():
    data = state.to_bytes({"x": torch.arange(10)})
    with pytest.raises(ValueError, match="magic"):
        state.from_bytes(b"PK" + data[2:])
    with pytest.raises(ValueError, match="CRC"):
        state.from_bytes(data[:20] + bytes([data[20] ^ 1]) + data[21:])
    with pytest.raises(ValueError, match="CRC"):
        state.from_bytes(data[:-9])
