"""docs/extending.md's examples, run top to bottom as a user would, and the registries' checks."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fedpress
from fedpress.algorithms import registry as algorithms
from fedpress.data import loaders
from fedpress.data.partition import PARTITIONERS
from fedpress.errors import ConfigError
from fedpress.models import registry as models

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture
def registries():
    """Whatever a test registers is forgotten after it (the registries are the process's)."""
    saved = (dict(models._BUILDERS), dict(loaders.CUSTOM), dict(PARTITIONERS), dict(algorithms.REGISTRY))
    yield
    for live, before in zip((models._BUILDERS, loaders.CUSTOM, PARTITIONERS, algorithms.REGISTRY), saved,
                            strict=True):
        live.clear()
        live.update(before)
    sys.modules.pop("my_plugin", None)


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_extending_guide_runs_as_written(registries, tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    monkeypatch.syspath_prepend(str(plugins))
    scope = {"RUNS": tmp_path, "PLUGIN_DIR": plugins}
    blocks = examples()
    assert len(blocks) >= 7
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), scope)  # noqa: S102 - the guide's own code
    # the run directories record the names that were registered
    assert '"dataset": "blobs"' in (tmp_path / "mine" / "summary.json").read_text()
    assert (tmp_path / "from_toml" / "config.toml").read_text().startswith('plugins = ["my_plugin"]')
    # the algorithm registered from the guide runs, and learns on the guide's blobs
    cfg = fedpress.config_from({"rounds": 3, "clients_per_round": 3, "eval_every": 3, "checkpoint_every": 0,
                                "data": {"dataset": "blobs", "num_clients": 3, "partition": "iid"},
                                "model": {"name": "tiny_mlp"}, "train": {"lr": 0.1},
                                "algorithm": {"name": "damped_fedavg", "step": 0.5}})
    assert fedpress.run(cfg, tmp_path / "damped", progress=False)["final_accuracy"] > 0.6
    codec = fedpress.config_from({**cfg.to_dict(), "algorithm": {"name": "top_half", "error_feedback": True}})
    summary = fedpress.run(codec, tmp_path / "top_half", progress=False)
    assert summary["uplink_compression"] > 1.0


def test_the_plugin_config_runs_from_the_shell(registries, tmp_path):
    """The guide's claim that `fedpress run mine.toml` works with the plugin importable, here
    with the processes executor: its workers import the plugin too (its model class)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    scope = {"RUNS": tmp_path, "PLUGIN_DIR": plugins}
    toml_block = next(b for b in examples() if "mine.toml" in b)
    setup_lines = toml_block.split("summary = fedpress.run")[0]  # write the plugin and the config only
    exec(compile("import fedpress\n" + setup_lines, str(DOC), "exec"), scope)  # noqa: S102
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "fedpress.cli", "run", str(tmp_path / "mine.toml"), "--out",
                           str(tmp_path / "shell"), "--quiet",
                           "--set", "executor=processes", "--set", "workers=2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"model": "linear2"' in (tmp_path / "shell" / "summary.json").read_text()


def test_a_missing_plugin_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="plugins: cannot import 'no_such_plugin_mod'"):
        fedpress.config_from({"plugins": ["no_such_plugin_mod"]})
    with pytest.raises(ConfigError, match="must be a list of module names"):
        fedpress.config_from({"plugins": "my_plugin"})


def test_names_are_checked_and_not_taken_twice(registries):
    with pytest.raises(ValueError, match="'lenet5' is taken"):
        fedpress.register_model("lenet5", lambda shape, k, g: torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="lowercase letters"):
        fedpress.register_dataset("My Data", fedpress.dataset_from([[0.0]], [0], [[1.0]], [0]))
    with pytest.raises(TypeError, match="takes \\(input_shape, num_classes, generator\\)"):
        fedpress.register_model("two_args", lambda shape, k: torch.nn.Linear(1, 1))
    with pytest.raises(TypeError, match="neither fedpress.RoundsAlgorithm nor fedpress.BufferedAlgorithm"):
        fedpress.register_algorithm("not_one", lambda name, p: object())
    fedpress.register_model("lenet5_again", models._BUILDERS["lenet5"])
    fedpress.register_model("lenet5_again", models._BUILDERS["mlp"], replace=True)
    assert models._BUILDERS["lenet5_again"] is models._BUILDERS["mlp"]


@pytest.mark.parametrize("bad, says", [
    (([[0.0]], [0.5], [[1.0]], [0]), "class indices"),
    (([[0.0], [1.0]], [0], [[1.0]], [0]), "x_train has 2 samples"),
    (([[float("nan")]], [0], [[1.0]], [0]), "NaN"),
    (([[0.0, 1.0]], [0], [[1.0]], [0]), "train samples are (2,), test samples (1,)"),
    (([[0.0]], [-1], [[1.0]], [0]), "labels must be in"),
])
def test_dataset_from_names_what_is_wrong(bad, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        fedpress.dataset_from(*bad)


def test_a_loader_that_returns_no_dataset_is_named(registries):
    fedpress.register_dataset("broken", lambda normalize: {"x": 1})
    with pytest.raises(ValueError, match="returned a dict, not a Dataset"):
        loaders.load("broken")
