"""A real deployment on loopback: a SuperLink, three SuperNodes and `flwr run`, every process stopped by PID."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

ROOT = Path(__file__).resolve().parents[2]
MIRROR = Path(os.environ.get("FEDPRESS_MIRROR", ROOT.parent / "shared" / "datasets"))
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (MIRROR / "mnist").is_dir(), reason="MNIST files not available")
@pytest.mark.skipif(not (BIN / "flower-superlink").exists(), reason="Flower's commands are not installed")
def test_three_rounds_of_topk_ef_on_a_local_superlink(tmp_path):
    home, out = tmp_path / "flwr_home", tmp_path / "run"
    home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FEDPRESS_MIRROR": str(MIRROR), "PATH": f"{BIN}:{os.environ['PATH']}"}
    link = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "here"\n[superlink.here]\n'
                                      f'address = "127.0.0.1:{link}"\ninsecure = true\n')
    app = tmp_path / "app"
    shutil.copytree(ROOT / "flower_app", app)
    started: list[subprocess.Popen] = []
    try:
        started.append(subprocess.Popen(
            [BIN / "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
             "--disable-runtime-dependency-installation"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        time.sleep(3)
        for i in range(3):
            started.append(subprocess.Popen(
                [BIN / "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}", "--port",
                 str(free_port()), "--node-config", f"partition-id={i} num-partitions=3"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        overrides = ("rounds=3 data.num_clients=3 clients_per_round=3 eval_every=1 checkpoint_every=0 "
                     "algorithm.name=topk_ef algorithm.ratio=0.01 algorithm.precision=fp16")
        run_config = f"config='{ROOT / 'configs' / 'quickstart.toml'}' overrides='{overrides}' out='{out}'"
        done = subprocess.run([BIN / "flwr", "run", str(app), "here", "--stream", "--run-config", run_config],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        deadline = time.monotonic() + 60
        while not (out / "summary.json").exists() and time.monotonic() < deadline:
            time.sleep(1)
        summary = json.loads((out / "summary.json").read_text())
    finally:
        for p in started:  # by PID, whatever happened; their child processes watch them and exit
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in started:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    assert summary["rounds"] == 3 and summary["final_accuracy"] > 0.5, summary  # chance is 0.1
    assert summary["rejected_updates"] == 0
    # top 1% of LeNet-5's 61,706 parameters as fp16 + indices: far below one dense frame per client
    assert summary["uplink_bytes"] < 3 * 3 * 2500 and summary["uplink_compression"] > 50
