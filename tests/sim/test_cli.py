import sys

import pytest

from fedpress.cli import main
from fedpress.config import dumps
from tests.sim.conftest import tiny_config


def test_run_then_compare(synthetic, tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(dumps(tiny_config(rounds=4)))
    assert main(["run", str(config), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["run", str(config), "--set", "algorithm.name=topk_ef", "--set", "algorithm.ratio=0.05",
                 "--set", "algorithm.precision=fp16", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "final accuracy" in out and str(tmp_path / "b") in out
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--target-accuracy", "0.5"]) == 0
    table = capsys.readouterr().out
    assert "fedavg" in table and "topk_ef" in table and "MB to 50%" in table
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_config_errors_are_one_clear_line(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(dumps(tiny_config()))
    assert main(["run", str(config), "--set", "train.momentum=1.5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "fedpress: config error: train.momentum = 1.5 must be in [0, 1)"


def test_missing_dataset_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDPRESS_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("FEDPRESS_MIRROR", str(tmp_path / "empty"))
    monkeypatch.setattr("fedpress.data.sources.download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    from fedpress.data import loaders

    loaders.clear_cache()
    config = tmp_path / "tiny.toml"
    config.write_text(dumps(tiny_config()))
    assert main(["run", str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "mnist" in err and "FEDPRESS_MIRROR" in err
    loaders.clear_cache()


def test_algorithms_and_datasets_listings(capsys):
    assert main(["algorithms"]) == 0
    assert "topk_ef" in capsys.readouterr().out
    assert main(["datasets", "list"]) == 0
    assert "cifar10" in capsys.readouterr().out


def test_partition_command_shows_the_split_the_run_uses(synthetic, tmp_path, capsys, monkeypatch):
    from fedpress.sim import setup

    monkeypatch.setattr("fedpress.data.load", lambda name, normalize=True: synthetic)
    config = tmp_path / "tiny.toml"
    cfg = tiny_config()
    config.write_text(dumps(cfg))
    assert main(["partition", str(config), "--plot", str(tmp_path / "split.png")]) == 0
    out = capsys.readouterr().out
    sizes = sorted(int(p.numel()) for p in setup(cfg).parts)
    assert str(max(sizes)) in out and str(min(sizes)) in out
    assert (tmp_path / "split.png").stat().st_size > 0


def test_version(capsys):
    from fedpress import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"fedpress {__version__}\n"


def test_run_with_tensorboard_writes_its_events_into_the_run_directory(synthetic, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    config = tmp_path / "tiny.toml"
    config.write_text(dumps(tiny_config(rounds=2)))
    assert main(["run", str(config), "--out", str(tmp_path / "r"), "--tensorboard", "--quiet"]) == 0
    assert list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))
    (tmp_path / "r" / "tensorboard" / "stale").write_text("")
    assert main(["run", str(config), "--out", str(tmp_path / "r"), "--overwrite", "--quiet"]) == 0
    assert not (tmp_path / "r" / "tensorboard").exists()  # --overwrite replaced the run, its events too


def test_tensorboard_without_the_package_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    config = tmp_path / "tiny.toml"
    config.write_text(dumps(tiny_config()))
    assert main(["run", str(config), "--out", str(tmp_path / "r"), "--tensorboard", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'fedpress[tensorboard]'" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_tensorboard_on_flower_is_refused(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(dumps(tiny_config()))
    assert main(["run", str(config), "--engine", "flower", "--tensorboard", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == "fedpress: --tensorboard needs --engine sim"
