"""fedpress on Flower's runtime: the ServerApp's side, made of the runtime core.

Nothing of an algorithm is written again here. The ServerApp runs the simulator's own
loop (`sim.rounds.drive` -> `server_round`) over `GridClients`, a fleet whose clients are
Flower nodes reached through the `Grid`, or, for FedBuff, QAFeL and Naive, the real-time
loop of `flower.asynchronous`. The ClientApp (`flower.client`) runs the runtime core's
client turn for the node's partition. Every message is the fedpress wire frame in one
Array (`records.py`); what the messages hold is read and written in `messages.py`.
"""

from __future__ import annotations

import os
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedpress.config import Config, dumps, from_dict
from fedpress.flower.asynchronous import run_async
from fedpress.flower.client import client_app
from fedpress.flower.messages import (
    REPLY,
    TRAIN,
    addressee,
    catchup_content,
    count_bytes,
    discover,
    error_reason,
    parse_reply,
)
from fedpress.flower.records import WIRE_KEY, wire_record
from fedpress.runtime import downlink
from fedpress.runtime.downlink import Catchup
from fedpress.runtime.experiment import Experiment, setup
from fedpress.runtime.outputs import RunDirectory
from fedpress.runtime.rejections import Rejection
from fedpress.runtime.turn import ClientReply
from fedpress.sim.asynchronous import AsyncProgress
from fedpress.sim.rounds import Progress, drive, prepare

__all__ = ["ConfigSource", "FixedSource", "GridClients", "RunConfigSource", "client_app", "config_of", "run_flower",
           "serve", "server_app"]


# --- how a process gets its Experiment ---


class ConfigSource:
    """Builds the Experiment of a config in whatever process needs it (a Ray actor, a
    SuperNode's ClientApp process), once per process."""

    _cache: dict[str, Experiment] = {}

    def __init__(self, config_text: str):
        self.config_text = config_text

    @classmethod
    def of(cls, cfg: Config) -> ConfigSource:
        return cls(dumps(cfg))

    def __call__(self, context: Context | None = None) -> Experiment:
        if self.config_text not in self._cache:
            self._cache[self.config_text] = setup(from_dict(tomllib.loads(self.config_text)))
        return self._cache[self.config_text]


class FixedSource:
    """An Experiment built beforehand, carried to the client processes by value (tests,
    data that exists only in the driver)."""

    def __init__(self, exp: Experiment):
        self.exp = exp

    def __call__(self, context: Context | None = None) -> Experiment:
        return self.exp


class RunConfigSource:
    """The Experiment named by the run config of `flwr run`: `config` (a TOML path) and
    `overrides` (space-separated dotted.key=value, as --set), built once per process."""

    _cache: dict[tuple[str, str], Experiment] = {}

    def __call__(self, context: Context | None = None) -> Experiment:
        key = (str(context.run_config["config"]), str(context.run_config.get("overrides", "")))
        if key not in self._cache:
            self._cache[key] = setup(config_of(context))
        return self._cache[key]


def config_of(context: Context) -> Config:
    from fedpress.config import load

    overrides = str(context.run_config.get("overrides", "")).split()
    return load(str(context.run_config["config"]), overrides)


# --- the server side ---


class GridClients:
    """The fleet of `server_round`, reached through Flower's Grid. Replies are matched to
    clients by node, and `server_round` takes them in client-id order whatever order they
    came in; a node that does not answer within `timeout` seconds is left out of the round."""

    def __init__(self, grid: Grid, exp: Experiment, timeout: float | None = None, wait: float = 600.0):
        self.grid, self.exp, self.timeout = grid, exp, timeout
        self.node_of = discover(grid, exp.config.data.num_clients, wait)  # {client: node_id}
        self.client_of = {n: c for c, n in self.node_of.items()}
        self.flower_bytes = {"up": 0, "down": 0, "lost": 0}  # this round's: Flower's count_bytes(), lost replies

    def train(self, round_: int, downlinks: dict[int, bytes | Catchup | None]) -> dict[int, ClientReply]:
        self.flower_bytes = {"up": 0, "down": 0, "lost": 0}
        messages = []
        for c, data in downlinks.items():
            content = RecordDict({"config": ConfigRecord({"round": round_})})
            if isinstance(data, Catchup):  # [downlink]: the node brings its copy of x̂ up to date
                catchup_content(content, data)
            elif data is not None:
                content[WIRE_KEY] = wire_record(data)
            self.flower_bytes["down"] += count_bytes(content)
            messages.append(Message(content, dst_node_id=self.node_of[c], message_type=TRAIN,
                                    group_id=str(round_)))
        replies = {}
        for r in self.grid.send_and_receive(messages, timeout=self.timeout):
            c = self.client_of.get(r.metadata.src_node_id, self.client_of.get(addressee(r, messages)))
            if c is None:
                continue
            if r.has_error():  # the ClientApp raised, or the SuperLink gave the node up
                replies[c] = ClientReply(None, float("nan"), 0, error_reason(r))
                continue
            self.flower_bytes["up"] += count_bytes(r.content)
            replies[c] = parse_reply(r.content)
        lost = Rejection.NO_REPLY.name
        self.flower_bytes["lost"] = sum(1 for c in downlinks if c not in replies or replies[c].refused == lost)
        return replies

    def reply(self, round_: int, clients: list[int], data: bytes) -> None:
        messages = [Message(RecordDict({"config": ConfigRecord({"round": round_}), WIRE_KEY: wire_record(data)}),
                            dst_node_id=self.node_of[c], message_type=REPLY, group_id=str(round_)) for c in clients]
        for m in messages:
            self.flower_bytes["down"] += count_bytes(m.content)
        list(self.grid.send_and_receive(messages, timeout=self.timeout))

    def annotate(self, row: dict) -> None:
        """Flower's own byte counts beside the ledger's, in the round's metrics row."""
        row.update(flower_uplink_bytes=self.flower_bytes["up"], flower_downlink_bytes=self.flower_bytes["down"],
                   lost=self.flower_bytes["lost"])


def server_app(exp: Experiment, out: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
               timeout: float | None = None, progress: bool = False, result: dict | None = None) -> ServerApp:
    """A ServerApp that runs the config's rounds over the connected nodes and writes the
    same run directory as the simulator; `result["summary"]` receives the summary."""
    app = ServerApp()
    result = {} if result is None else result

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result["summary"] = serve(grid, exp, out, resume=resume, overwrite=overwrite, timeout=timeout,
                                  progress=progress)

    return app


def serve(grid: Grid, exp: Experiment, out: str | Path | None, *, resume: bool = False, overwrite: bool = False,
          timeout: float | None = None, progress: bool = False, clock: Callable[[], float] = time.monotonic) -> dict:
    """The ServerApp's work: synchronous rounds over `GridClients`, or (FedBuff, QAFeL, Naive)
    the real-time asynchronous loop of `fedpress.flower.asynchronous` (`clock`: its seconds).
    Returns the summary."""
    timeout = timeout if timeout is not None else exp.config.round_timeout or None
    if exp.config.is_async:
        return run_async(grid, exp, out, resume=resume, overwrite=overwrite, timeout=timeout, progress=progress,
                         clock=clock)
    run_dir, p = prepare(exp, out, resume, overwrite)
    if p.hidden is not None and p.round:  # resumed: what the nodes kept is not known (maybe new nodes)
        p.hidden = downlink.forget(p.hidden)
    clients = GridClients(grid, exp, timeout)
    return drive(exp, p, clients, run_dir, progress=progress, on_round_end=clients.annotate)


# --- Flower's simulation engine ---


def run_flower(cfg: Config, out: str | Path | None = None, *, resume: bool = False, overwrite: bool = False,
               progress: bool = True, timeout: float | None = None, source: Callable[[], Experiment] | None = None,
               exp: Experiment | None = None, cpus: int | None = None, mods: Sequence = (),
               ray_address: str | None = None) -> dict[str, Any]:
    """`fedpress run --engine flower`: the config through Flower's simulation engine (Ray),
    one SuperNode per client, one CPU and one torch thread per ClientApp.

    `ray_address` None: a Ray of its own on this machine, of `cpus` CPUs (default all), even
    if `RAY_ADDRESS` is set or `ray start` left a cluster here. Otherwise the address of an
    existing Ray cluster (`host:port` of its head, or anything `ray.init(address=...)` takes):
    its nodes hold the ClientApps, one per CPU the nodes were started with; this process holds
    the ServerApp and writes `out`."""
    import logging

    from flwr.simulation import run_simulation

    if ray_address is not None and cpus is not None:
        raise ValueError("run_flower: cpus sizes the Ray it starts itself; on a cluster (ray_address) "
                         "each node's `ray start --num-cpus` does")
    if ray_address is None:  # "local": Ray would otherwise attach to $RAY_ADDRESS or the last `ray start` here
        ray_init = {"address": "local", "num_cpus": cpus or os.cpu_count() or 1}
    else:  # Ray refuses num_cpus, num_gpus, resources, object_store_memory for an existing cluster
        ray_init = {"address": ray_address}
        host, _, port = ray_address.rpartition(":")
        if host and port.isdigit() and "://" not in ray_address:  # host:port; Ray would retry a dead one ~12 min
            import socket

            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
            except OSError as e:
                raise ConnectionError(f"no Ray head answers at {ray_address} ({e}); see `ray status "
                                      f"--address={ray_address}` on a node of the cluster") from None
    # the run directory first: a directory that cannot take the run fails before any data is loaded
    RunDirectory.open(cfg, out, AsyncProgress if cfg.is_async else Progress, resume=resume, overwrite=overwrite,
                      write=False)
    exp = setup(cfg) if exp is None else exp
    result: dict = {}
    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(
        server_app=server_app(exp, out, resume=resume, overwrite=overwrite, timeout=timeout, progress=progress,
                              result=result),
        client_app=client_app(source or ConfigSource.of(cfg), mods=mods),
        num_supernodes=cfg.data.num_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {**ray_init, "logging_level": "ERROR", "log_to_driver": False}},
    )
    if "summary" not in result:
        raise RuntimeError("flower: the ServerApp ended without finishing the run (see the log above)")
    return result["summary"]
