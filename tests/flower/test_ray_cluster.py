"""`--engine flower` on an existing Ray cluster: `--ray-address` / `RAY_ADDRESS` reach Flower's
`ray.init` as `address`, without the resource arguments Ray refuses for a cluster. No Ray
process is started here (run_simulation is replaced); the two-node run on loopback is
described in docs/flower.md, "Several machines with Ray"."""

import socket
from pathlib import Path

import pytest

pytest.importorskip("flwr")

import flwr.simulation  # noqa: E402

import fedpress.flower  # noqa: E402
import fedpress.sim  # noqa: E402
from fedpress.cli import main  # noqa: E402
from fedpress.flower import run_flower  # noqa: E402
from tests.sim.conftest import tiny_config  # noqa: E402

QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.toml")
# what Ray's ray.init refuses when it attaches to a cluster ("When connecting to an existing cluster, ...")
RESOURCES = {"num_cpus", "num_gpus", "resources", "labels", "object_store_memory", "_system_config"}


class Stop(Exception):
    pass


@pytest.fixture
def captured(monkeypatch):
    """flwr.simulation.run_simulation replaced: its keyword arguments recorded, then Stop."""
    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        raise Stop

    monkeypatch.setattr(flwr.simulation, "run_simulation", fake)
    return calls


@pytest.fixture
def head():
    """host:port of a socket listening on loopback, as a Ray head's GCS port would (run_flower only checks
    that something answers there before it hands the address to Ray)."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield f"127.0.0.1:{s.getsockname()[1]}"


def dead_address():
    with socket.create_server(("127.0.0.1", 0)) as s:
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed on return: nothing listens there any more


def init_args(captured, tmp_path, **kwargs):
    with pytest.raises(Stop):  # exp given: no data is loaded
        run_flower(tiny_config(), tmp_path / "run", exp=object(), progress=False, **kwargs)
    [call] = captured
    return call["backend_config"]["init_args"]


def test_ray_address_reaches_ray_init_without_resources(captured, tmp_path, head):
    args = init_args(captured, tmp_path, ray_address=head)
    assert args["address"] == head
    assert not RESOURCES & set(args)
    assert captured[0]["backend_config"]["client_resources"] == {"num_cpus": 1, "num_gpus": 0.0}  # per ClientApp


def test_without_an_address_flower_starts_a_local_ray(captured, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # not followed: "local" is a fresh Ray of its own
    args = init_args(captured, tmp_path, cpus=3)
    assert args["address"] == "local" and args["num_cpus"] == 3


def test_cpus_with_a_ray_address_is_refused(captured, tmp_path):
    with pytest.raises(ValueError, match="ray start --num-cpus"):
        run_flower(tiny_config(), tmp_path / "run", exp=object(), progress=False, cpus=2, ray_address="h:1")
    assert not captured


def test_a_ray_address_where_nothing_listens_fails_at_once(captured, tmp_path, capsys):
    address = dead_address()
    with pytest.raises(ConnectionError, match=f"no Ray head answers at {address}"):
        run_flower(tiny_config(), tmp_path / "run", exp=object(), progress=False, ray_address=address)
    assert not captured  # Ray itself would retry for about 12 minutes
    assert main(["run", QUICKSTART, "--engine", "flower", "--ray-address", address,
                 "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fedpress: no Ray head answers at {address}")
    assert not (tmp_path / "cli").exists()


def test_ray_address_needs_the_flower_engine(capsys):
    assert main(["run", QUICKSTART, "--ray-address", "127.0.0.1:6379"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ray-address needs --engine flower" in err


@pytest.fixture
def engine_calls(monkeypatch):
    """run_flower and the simulator, as `fedpress run` reaches them, recorded and stopped."""
    calls = []

    def fake(name):
        def engine(cfg, out, **kwargs):
            calls.append((name, kwargs))
            raise Stop
        return engine

    monkeypatch.setattr(fedpress.flower, "run_flower", fake("flower"))
    monkeypatch.setattr(fedpress.sim, "run", fake("sim"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


@pytest.mark.parametrize("argv, env, address", [
    ([], None, None),                                        # a Ray of its own, as before
    (["--ray-address", "10.0.0.5:6379"], None, "10.0.0.5:6379"),
    ([], "10.0.0.6:6379", "10.0.0.6:6379"),                  # RAY_ADDRESS, as for any Ray driver
    (["--ray-address", "10.0.0.5:6379"], "10.0.0.6:6379", "10.0.0.5:6379"),  # the option wins
], ids=["none", "option", "env", "option-over-env"])
def test_fedpress_run_passes_the_address(engine_calls, monkeypatch, tmp_path, argv, env, address):
    if env is not None:
        monkeypatch.setenv("RAY_ADDRESS", env)
    with pytest.raises(Stop):
        main(["run", QUICKSTART, "--engine", "flower", "--out", str(tmp_path / "run"), *argv])
    [(name, kwargs)] = engine_calls
    assert name == "flower" and kwargs["ray_address"] == address


def test_ray_address_env_does_not_concern_the_simulator(engine_calls, monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.6:6379")
    with pytest.raises(Stop):
        main(["run", QUICKSTART, "--out", str(tmp_path / "run")])
    [(name, kwargs)] = engine_calls
    assert name == "sim" and "ray_address" not in kwargs


# --- opt-in (-m slow): a real two-node Ray cluster on this machine, about 1 minute ---


def free_ports(n):
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(n)]
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_node(ray, temp_dir, log, *args):
    """`ray start ... --block` in a session of its own: the PID (and process group) of one node."""
    import subprocess

    ports = free_ports(6)
    return subprocess.Popen(
        [ray, "start", *args, "--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats",
         "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}", "--block",
         *(f"--{flag}={port}" for flag, port in zip(
             ("node-manager-port", "object-manager-port", "runtime-env-agent-port", "metrics-export-port",
              "dashboard-agent-listen-port", "dashboard-agent-grpc-port"), ports, strict=True))],
        stdout=log, stderr=log, start_new_session=True)


def stop_node(proc):
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` stops its node's processes on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def alive_nodes(ray, address):
    import re
    import subprocess

    status = subprocess.run([ray, "status", f"--address={address}"], capture_output=True, text=True, timeout=60)
    active = status.stdout.split("Active:")[-1].split("Pending:")[0]
    return len(re.findall(r"^\s*\d+ node_", active, re.M))


def actor_nodes(temp_dirs):
    """The nodes (temp dirs) whose logs name a ClientAppActor worker."""
    return {d.name for d in temp_dirs
            if any(":actor_name:ClientAppActor" in f.read_text(errors="replace")
                   for f in d.glob("session_latest/logs/worker-*.out"))}


@pytest.mark.slow
def test_flower_on_a_two_node_ray_cluster_equals_the_simulator(synthetic, one_thread, tmp_path):
    import shutil
    import sys
    import tempfile
    import time

    from fedpress.flower import FixedSource
    from fedpress.sim import run, setup
    from tests.sim.test_run import rows

    ray = str(Path(sys.executable).with_name("ray"))
    root = Path(tempfile.mkdtemp(prefix="rayfp", dir="/tmp"))  # short: Ray's socket paths live under it
    port, client_port = free_ports(2)
    address = f"127.0.0.1:{port}"
    nodes = []
    try:
        with open(tmp_path / "ray.log", "w") as log:
            nodes.append(start_node(ray, root / "head", log, "--head", f"--port={port}",
                                    f"--ray-client-server-port={client_port}", "--include-dashboard=false"))
            deadline = time.monotonic() + 90
            while alive_nodes(ray, address) < 1 and time.monotonic() < deadline:
                time.sleep(2)
            nodes.append(start_node(ray, root / "worker", log, f"--address={address}"))
            while alive_nodes(ray, address) < 2 and time.monotonic() < deadline:
                time.sleep(2)
            assert alive_nodes(ray, address) == 2, (tmp_path / "ray.log").read_text()[-3000:]

            cfg = tiny_config(rounds=3, **{"data.num_clients": 4}, clients_per_round=3, checkpoint_every=0)
            run(cfg, tmp_path / "sim", progress=False)
            exp = setup(cfg)  # carried to the nodes by value: they need no dataset files
            run_flower(cfg, tmp_path / "flower", exp=exp, source=FixedSource(exp), progress=False,
                       ray_address=address)
            assert actor_nodes([root / "head", root / "worker"]) == {"head", "worker"}  # both nodes trained
    finally:
        for proc in reversed(nodes):
            stop_node(proc)
        shutil.rmtree(root, ignore_errors=True)
    assert (tmp_path / "flower" / "ledger.csv").read_text() == (tmp_path / "sim" / "ledger.csv").read_text()
    for a, b in zip(rows(tmp_path / "sim" / "metrics.csv"), rows(tmp_path / "flower" / "metrics.csv"), strict=True):
        for key in ("test_accuracy", "test_loss", "train_loss", "uplink_bytes", "downlink_bytes", "clients"):
            assert a[key] == b[key], key
