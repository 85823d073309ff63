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
