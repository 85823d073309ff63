import pytest

from fedpress.config import apply_overrides, dumps, from_dict, load, parse_override
from fedpress.errors import ConfigError


def base():
    return {"rounds": 5, "data": {"dataset": "mnist", "num_clients": 20, "partition": "dirichlet", "alpha": 0.3},
            "model": {"name": "mlp", "widths": [16]}, "algorithm": {"name": "topk_ef", "ratio": 0.05}}


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = from_dict(base())
    path = tmp_path / "c.toml"
    path.write_text(dumps(cfg))
    again = load(path)
    assert dumps(again) == dumps(cfg)
    assert again.algorithm.params["ratio"] == 0.05 and again.algorithm.params["precision"] == "fp32"
    assert again.data.params == {"alpha": 0.3}


@pytest.mark.parametrize("change,message", [
    ({"bogus": 1}, "bogus is not a config key"),
    ({"rounds": 0}, "rounds = 0 must be >= 1"),
    ({"rounds": "ten"}, "rounds = 'ten' must be an integer"),
    ({"clients_per_round": 50}, r"clients_per_round = 50 must be in \[1, data.num_clients = 20\]"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset = 'imagenet'; allowed: .*mnist"),
    ({"data": {"partition": "dirichlet", "classes_per_client": 2}}, "data.classes_per_client is not a key"),
    ({"data": {"partition": "shards"}}, "data.classes_per_client is required"),
    ({"model": {"name": "resnet50"}}, "model.name = 'resnet50'; allowed"),
    ({"model": {"name": "mlp", "depth": 3}}, "model.depth is not an option of model 'mlp'"),
    ({"train": {"lr": -1.0}}, "train.lr = -1.0 must be > 0"),
    ({"train": {"lr_schedule": "warmup"}}, "train.lr_schedule = 'warmup'; allowed"),
    ({"train": {"lr_gamma": -0.5}}, "train.lr_gamma = -0.5 must be > 0"),
    ({"train": {"lr_min": 1.0}}, r"train.lr_min = 1.0 must be in \[0, train.lr\]"),
    ({"data": 5}, r"\[data\] must be a table"),
    ({"algorithm": {"name": "fedsgd"}}, "algorithm.name = 'fedsgd'; allowed"),
    ({"algorithm": {"name": "topk", "ratio": 2.0}}, r"algorithm.ratio = 2.0 must be in \(0, 1\]"),
    ({"algorithm": {"name": "topk", "precision": "fp8"}}, "algorithm.precision = 'fp8' is not allowed"),
    ({"algorithm": {"name": "fedavg", "ratio": 0.1}}, "algorithm.ratio is not a hyperparameter of 'fedavg'"),
    ({"algorithm": {"name": "qsgd", "levels": "many"}}, "algorithm.levels = 'many' must be an integer"),
    ({"round_timeout": -1.0}, r"round_timeout = -1.0 must be >= 0 seconds"),
])
def test_bad_configs_name_the_key_and_what_is_allowed(change, message):
    raw = base()
    for key, value in change.items():
        if key == "data" and isinstance(value, dict) and "dataset" not in value:
            raw[key] = {"dataset": "mnist", "num_clients": 20, **value}
        elif key in ("model", "algorithm", "data"):
            raw[key] = value  # a new table replaces the old one
        elif isinstance(value, dict):
            raw[key] = {**raw.get(key, {}), **value}
        else:
            raw[key] = value
    with pytest.raises(ConfigError, match=message):
        from_dict(raw)


def test_overrides_parse_toml_values_and_bare_strings():
    assert parse_override("algorithm.ratio=0.01") == (["algorithm", "ratio"], 0.01)
    assert parse_override("algorithm.name=topk") == (["algorithm", "name"], "topk")
    assert parse_override('model.widths=[8, 8]') == (["model", "widths"], [8, 8])
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override("rounds")


def test_switching_algorithm_drops_hyperparameters_the_new_one_does_not_take():
    raw = apply_overrides(base(), ["algorithm.name=qsgd", "algorithm.levels=7"])
    cfg = from_dict(raw)
    assert cfg.algorithm.name == "qsgd" and "ratio" not in cfg.algorithm.params


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_learning_rate_schedules():
    from fedpress.config import TrainConfig

    assert TrainConfig(lr=0.1).lr_at(50, 100) == 0.1
    assert TrainConfig(lr=0.1, lr_schedule="exponential", lr_gamma=0.5).lr_at(3, 100) == pytest.approx(0.0125)
    assert TrainConfig(lr=0.1, lr_schedule="step", lr_gamma=0.1, lr_step=10).lr_at(25, 100) == pytest.approx(0.001)
    cos = TrainConfig(lr=0.1, lr_schedule="cosine", lr_min=0.01)
    assert cos.lr_at(0, 101) == pytest.approx(0.1) and cos.lr_at(50, 101) == pytest.approx(0.055)
    assert cos.lr_at(100, 101) == pytest.approx(0.01)  # reaches lr_min at the last round


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/**/*.toml"))
    assert configs
    for path in configs:
        load(path)
