"""The [async] table and model.outputs: defaults, round trips, and errors that name the key."""

import pytest

from fedpress.config import AsyncConfig, dumps, from_dict, load


def base(algorithm="qafel", **tables):
    raw = {
        "rounds": 5,
        "data": {"dataset": "mnist", "num_clients": 200, "partition": "iid"},
        "model": {"name": "mlp", "widths": [16]},
        "algorithm": {"name": algorithm},
    }
    raw.update(tables)
    return raw


def test_asynchronous_algorithms_get_the_async_defaults_and_synchronous_ones_none():
    assert from_dict(base()).asynchronous == AsyncConfig()
    assert from_dict(base("fedbuff")).is_async
    sync = from_dict(base("fedavg"))
    assert sync.asynchronous is None and not sync.is_async
    assert "[async]" not in dumps(sync) and "outputs" not in dumps(sync)  # synchronous configs read as before


def test_async_config_round_trips_through_toml(tmp_path):
    cfg = from_dict(
        base(
            **{
                "async": {
                    "arrivals": "rate",
                    "rate": 627,
                    "staleness": "polynomial",
                    "a": 0.5,
                    "max_staleness": 20,
                    "speed_sigma": 0.3,
                },
                "model": {"name": "logreg", "outputs": 1},
            }
        )
    )
    path = tmp_path / "c.toml"
    path.write_text(dumps(cfg))
    again = load(path)
    assert dumps(again) == dumps(cfg)
    assert again.asynchronous.rate == 627.0 and again.asynchronous.max_staleness == 20
    assert again.model.outputs == 1


def test_set_overrides_reach_the_async_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(dumps(from_dict(base())))
    cfg = load(path, ["async.concurrency=7", "algorithm.name=fedbuff"])
    assert cfg.asynchronous.concurrency == 7 and cfg.algorithm.name == "fedbuff"
    assert "client_quantizer" not in cfg.algorithm.params  # switching algorithm drops what it does not take


def test_clients_per_round_is_not_checked_for_asynchronous_runs():
    raw = base(**{"async": {"concurrency": 5}})
    raw["data"]["num_clients"] = 6
    cfg = from_dict({**raw, "clients_per_round": 50})  # more than the 6 clients: unused here
    assert cfg.asynchronous.concurrency == 5


@pytest.mark.parametrize(
    "change,message",
    [
        ({"async": {"bogus": 1}}, "async.bogus is not a config key; allowed: a, arrivals, b, concurrency"),
        ({"async": {"arrivals": "poisson"}}, r"async.arrivals = 'poisson'; allowed: \['concurrency', 'rate'\]"),
        ({"async": {"duration": "gamma"}}, r"async.duration = 'gamma'; allowed: \['half_normal', 'exponential'"),
        ({"async": {"staleness": "exp"}}, r"async.staleness = 'exp'; allowed: \['constant', 'polynomial', 'hinge'\]"),
        ({"async": {"concurrency": 201}}, r"async.concurrency = 201 must be in \[1, data.num_clients = 200\]"),
        ({"async": {"concurrency": 0}}, r"async.concurrency = 0 must be in \[1"),
        ({"async": {"rate": 0}}, "async.rate = 0.0 must be > 0"),
        ({"async": {"scale": -1.0}}, "async.scale = -1.0 must be > 0"),
        ({"async": {"max_staleness": -2}}, "async.max_staleness = -2 must be >= 0, or -1"),
        ({"async": {"speed_sigma": -0.1}}, "async.speed_sigma = -0.1 must be >= 0"),
        ({"async": {"concurrency": "many"}}, "async.concurrency = 'many' must be an integer"),
        ({"async": {"eval_train": 1}}, "async.eval_train = 1 must be true or false"),
        ({"model": {"name": "logreg", "outputs": 2}}, r"model.outputs = 2; allowed: 0 \(one per class\), 1"),
        (
            {"model": {"name": "logreg", "width": 2}},
            "model.width is not an option of model 'logreg'; allowed: name, outputs, bias, init",
        ),
    ],
)
def test_bad_async_values_name_the_key_and_the_allowed_values(change, message):
    from fedpress.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        from_dict(base(**change))


def test_async_only_keys_are_refused_for_synchronous_algorithms():
    from fedpress.errors import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"\[async\] configures the asynchronous algorithms \(fedbuff, qafel, "
        r"naive\); algorithm.name = 'fedavg' runs in synchronous rounds",
    ):
        from_dict(base("fedavg", **{"async": {"concurrency": 3}}))
    with pytest.raises(ConfigError, match="model.outputs is read by the asynchronous engine only"):
        from_dict(base("fedavg", model={"name": "logreg", "outputs": 1}))


def test_the_runtime_comes_from_the_registry_when_the_config_is_read(monkeypatch):
    """An entry registered after import is configured by the runtime its entry names."""
    from fedpress.algorithms.fedbuff import SPECS
    from fedpress.algorithms.registry import REGISTRY

    monkeypatch.setitem(REGISTRY, "fedbuff2", SPECS["fedbuff"])
    assert from_dict(base("fedbuff2", **{"async": {"concurrency": 2}})).is_async
