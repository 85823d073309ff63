"""Run configuration: TOML in, frozen dataclasses out, every key and value checked.

    seed = 0
    rounds = 100
    clients_per_round = 10
    eval_every = 5

    [data]       dataset, num_clients, partition, and the partitioner's own keys (alpha, ...)
    [model]      name, and the model's own options
    [train]      epochs | steps, batch_size, lr, momentum, weight_decay, lr_schedule, ...
    [algorithm]  name, and that algorithm's hyperparameters (ratio, precision, ...)
    [async]      asynchronous algorithms only (fedbuff, qafel, naive): arrivals, durations,
                 staleness weighting; `rounds` then counts server steps
    [downlink]   synchronous algorithms whose downlink is the model: a hidden-state
                 compressed downlink with catch-up (runtime/downlink.py): codec, ratio, ...
    [client_state]  where the simulator keeps the clients' states (runtime/store.py):
                 store = "memory" | "disk", precision, cache_mb

`load(path, overrides)` reads a file and applies `--set dotted.key=value` overrides; an
unknown key or a bad value raises ConfigError naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpress.algorithms.registry import REGISTRY, resolve_params
from fedpress.errors import ConfigError

LR_SCHEDULES = ("constant", "exponential", "step", "cosine")
EXECUTORS = ("sequential", "threads", "processes", "vmap", "auto")  # runtime.executor.EXECUTORS
ARRIVALS = ("concurrency", "rate")
DURATIONS = ("half_normal", "exponential", "constant")
STALENESS = ("constant", "polynomial", "hinge")
DOWNLINK_STAGES = ("fp32", "fp16", "bf16", "top_k", "random_k", "qsgd", "minmax_affine")  # runtime/downlink.py
DOWNLINK_INIT = ("whole", "seeded")
CLIENT_STORES = ("memory", "disk")
STATE_PRECISIONS = ("fp32", "fp16", "bf16")  # runtime.store.PRECISIONS


def async_algorithms() -> tuple[str, ...]:
    """The registry entries that need the buffered runtime (sim/asynchronous.py), configured
    by [async]; read when a config is, so an algorithm registered later counts too."""
    return tuple(name for name, spec in REGISTRY.items() if spec.runtime == "buffered")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    num_clients: int = 100
    partition: str = "dirichlet"
    params: dict = field(default_factory=lambda: {"alpha": 0.5})  # the partitioner's own keys
    normalize: bool = True  # standardise inputs per channel (False: pixels / 255, as FLARE's code)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lenet5"
    options: dict = field(default_factory=dict)  # the model's own keys
    outputs: int = 0  # 0: one per class; 1: one logit and the binary logistic loss (asynchronous engine)


@dataclass(frozen=True)
class AsyncConfig:
    """The virtual clock of the asynchronous engine (spec §1.8, §5.4, §5.6.7).

    Starts: `concurrency` keeps that many clients training (each arrival starts an idle
    client at once: QAFeL's logistic-regression code, where all 100 clients always train);
    `rate` starts one client every 1/rate time units (FLSim's constant training rate),
    skipped while every client is busy. Durations: |N(0, 1)|, Exp(1) or 1, times `scale`,
    divided by a per-client speed factor exp(speed_sigma z_c), z_c ~ N(0, 1) drawn once.
    Staleness weight w(τ): constant 1, polynomial 1/(1+τ)^a, or hinge (1 for τ <= b, else
    1/(1 + a(τ − b))); updates older than max_staleness (>= 0) are dropped.
    """

    arrivals: str = "concurrency"
    concurrency: int = 100
    rate: float = 125.0
    duration: str = "half_normal"
    scale: float = 1.0
    speed_sigma: float = 0.0
    staleness: str = "constant"
    a: float = 0.5
    b: float = 4.0
    max_staleness: int = -1  # -1: no limit
    eval_train: bool = False  # also evaluate the l2-regularised training objective (float64) at eval steps


@dataclass(frozen=True)
class DownlinkConfig:
    """A hidden-state compressed downlink (`runtime/downlink.py`): the server sends
    q = C(x − x̂) and both sides apply x̂ ← x̂ + q; a client that missed broadcasts catches
    up in the smallest exact form. `codec` names the stages of C joined by "+" (a
    selection, then the values' precision: "top_k+fp16"; "qsgd"; "minmax_affine"; "fp32"
    is the identity, today's dense downlink). `init`: a client's first download is x̂
    whole ("whole"), or it rebuilds x0 from the run seed at no cost ("seeded")."""

    codec: str = "fp32"
    ratio: float = 0.01  # top_k, random_k: fraction of coordinates kept
    levels: int = 15  # qsgd: levels per sign
    bucket: int = 512  # qsgd: bucket size (0: one bucket)
    bits: int = 8  # minmax_affine: bits per value
    init: str = "whole"

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(self.codec.split("+"))


@dataclass(frozen=True)
class ClientStateConfig:
    """Where the simulator keeps each client's algorithm state (`runtime/store.py`):
    "memory", or "disk" (SQLite in the run directory, committed with each checkpoint; only
    the round's clients in memory, plus a page cache of `cache_mb`). `precision` "fp16" or
    "bf16" stores the states' float32 tensors narrowed: half the bytes, and a residual kept
    to that precision (an explicit choice; "fp32" keeps states exact)."""

    store: str = "memory"
    precision: str = "fp32"
    cache_mb: int = 64


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    steps: int = 0  # > 0: a fixed number of local steps instead of epochs
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_gamma: float = 1.0  # exponential: lr * gamma^t; step: lr * gamma^(t // lr_step)
    lr_step: int = 1
    lr_min: float = 0.0  # cosine: decays to lr_min at the last round

    def lr_at(self, round_: int, rounds: int) -> float:
        """The local learning rate of a (0-based) round under the schedule."""
        if self.lr_schedule == "exponential":
            return self.lr * self.lr_gamma**round_
        if self.lr_schedule == "step":
            return self.lr * self.lr_gamma ** (round_ // self.lr_step)
        if self.lr_schedule == "cosine":
            return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1 + math.cos(math.pi * round_ / max(rounds - 1, 1)))
        return self.lr


@dataclass(frozen=True)
class AlgorithmConfig:
    name: str = "fedavg"
    params: dict = field(default_factory=dict)  # the algorithm's hyperparameters, resolved


@dataclass(frozen=True)
class Config:
    name: str = "run"
    plugins: tuple[str, ...] = ()  # modules imported before the config is checked: they register names
    seed: int = 0
    rounds: int = 100
    clients_per_round: int = 10
    eval_every: int = 5
    checkpoint_every: int = 10
    executor: str = "sequential"  # how a batch of local trainings runs: see runtime/executor.py
    workers: int = 0  # threads or processes of the threads/processes executors (0: the cores)
    device: str = "cpu"  # where local training and evaluation run: "cpu", "auto", "cuda", "cuda:N", "mps"
    round_timeout: float = 0.0  # Flower: seconds a round waits for replies; the rest are lost (0: no limit)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    asynchronous: AsyncConfig | None = None  # the [async] table; set exactly for asynchronous algorithms
    downlink: DownlinkConfig | None = None  # the [downlink] table: a hidden-state compressed downlink
    client_state: ClientStateConfig | None = None  # the [client_state] table; None: in memory, exact

    @property
    def is_async(self) -> bool:
        return self.asynchronous is not None

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as TOML-shaped nested dicts (open tables flattened back)."""
        top = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not dataclasses.is_dataclass(
            getattr(self, f.name)) and f.name not in ("asynchronous", "downlink", "client_state", "plugins")}
        if self.plugins:  # first, so that a resolved config names what it needs before it uses it
            top = {"plugins": list(self.plugins), **top}
        tables = {"async": dataclasses.asdict(self.asynchronous)} if self.asynchronous is not None else {}
        if self.downlink is not None:
            tables["downlink"] = dataclasses.asdict(self.downlink)
        if self.client_state is not None:
            tables["client_state"] = dataclasses.asdict(self.client_state)
        return {
            **top,
            "data": {"dataset": self.data.dataset, "num_clients": self.data.num_clients,
                     "partition": self.data.partition, "normalize": self.data.normalize, **self.data.params},
            "model": {"name": self.model.name, **self.model.options,
                      **({"outputs": self.model.outputs} if self.model.outputs else {})},
            "train": dataclasses.asdict(self.train),
            "algorithm": {"name": self.algorithm.name, **self.algorithm.params},
            **tables,
        }


# ---------------------------------------------------------------------------- checking


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_type(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{key} = {value!r} must be {_KINDS.get(type(default), 'a ' + type(default).__name__)}")
    return value


def _fixed(cls, table: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Check a table whose keys are the dataclass's scalar fields (those with a plain default)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    out = {}
    for key, value in table.items():
        if key not in defaults:
            raise ConfigError(f"{prefix}{key} is not a config key; allowed: {', '.join(sorted(defaults))}")
        out[key] = _check_type(prefix + key, value, defaults[key])
    return out


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def from_dict(raw: Mapping[str, Any]) -> Config:
    raw = dict(raw)
    plugins = raw.pop("plugins", [])
    _require(isinstance(plugins, list | tuple) and all(isinstance(m, str) and m for m in plugins),
             f"plugins = {plugins!r} must be a list of module names")
    from fedpress.extend import import_plugins

    import_plugins(plugins)  # what they register is then a name like the built-in ones
    raw_tables = set(raw) & {"async", "downlink", "client_state"}
    tables = {}
    for name in ("data", "model", "train", "algorithm", "async", "downlink", "client_state"):
        table = raw.pop(name, {})
        _require(isinstance(table, dict), f"[{name}] must be a table, got {table!r}")
        tables[name] = dict(table)
    top = _fixed(Config, raw, "")
    cfg = Config(**top, plugins=tuple(plugins))
    _require(cfg.rounds >= 1, f"rounds = {cfg.rounds} must be >= 1")
    _require(cfg.eval_every >= 1, f"eval_every = {cfg.eval_every} must be >= 1")
    _require(cfg.checkpoint_every >= 0, "checkpoint_every must be >= 0 (0: no checkpoints)")
    _require(cfg.executor in EXECUTORS, f"executor = {cfg.executor!r}; allowed: {list(EXECUTORS)}")
    _require(cfg.workers >= 0, f"workers = {cfg.workers} must be >= 0 (0: the cores)")
    _require(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device) is not None,
             f"device = {cfg.device!r}; allowed: \"auto\", \"cpu\", \"cuda\", \"cuda:N\", \"mps\"")
    _require(cfg.round_timeout >= 0 and math.isfinite(cfg.round_timeout),
             f"round_timeout = {cfg.round_timeout} must be >= 0 seconds (0: no limit)")
    algorithm = _algorithm(tables["algorithm"])
    model = _model(tables["model"])
    is_async = REGISTRY[algorithm.name].runtime == "buffered"
    _require(is_async or not tables["async"],
             f"[async] configures the asynchronous algorithms ({', '.join(async_algorithms())}); "
             f"algorithm.name = {algorithm.name!r} runs in synchronous rounds")
    _require(is_async or not model.outputs,
             f"model.outputs is read by the asynchronous engine only ({', '.join(async_algorithms())}); "
             f"the synchronous loop builds one output per class")
    _require(not is_async or set(tables["downlink"]) <= {"init"},
             f"[downlink] of an asynchronous algorithm takes only `init` (QAFeL's q is "
             f"algorithm.server_quantizer); got {', '.join(sorted(tables['downlink']))}")
    data = _data(tables["data"], cfg, is_async)
    return dataclasses.replace(
        cfg,
        data=data,
        model=model,
        train=_train(tables["train"]),
        algorithm=algorithm,
        asynchronous=_async(tables["async"], data.num_clients) if is_async else None,
        downlink=_downlink(tables["downlink"]) if "downlink" in raw_tables else None,
        client_state=_client_state(tables["client_state"]) if "client_state" in raw_tables else None,
    )


def _client_state(table: dict) -> ClientStateConfig:
    c = ClientStateConfig(**_fixed(ClientStateConfig, table, "client_state."))
    _require(c.store in CLIENT_STORES, f"client_state.store = {c.store!r}; allowed: {list(CLIENT_STORES)}")
    _require(c.precision in STATE_PRECISIONS,
             f"client_state.precision = {c.precision!r}; allowed: {list(STATE_PRECISIONS)}")
    _require(c.cache_mb >= 1, f"client_state.cache_mb = {c.cache_mb} must be >= 1 (MiB of SQLite page cache)")
    return c


def _data(table: dict, cfg: Config, is_async: bool = False) -> DataConfig:
    from fedpress.data import dataset_names
    from fedpress.data.partition import PARTITIONERS

    d = DataConfig()
    dataset = _check_type("data.dataset", table.pop("dataset", d.dataset), d.dataset)
    num_clients = _check_type("data.num_clients", table.pop("num_clients", d.num_clients), d.num_clients)
    partition = _check_type("data.partition", table.pop("partition", d.partition), d.partition)
    normalize = _check_type("data.normalize", table.pop("normalize", d.normalize), d.normalize)
    _require(dataset in dataset_names(), f"data.dataset = {dataset!r}; allowed: {', '.join(dataset_names())}")
    _require(partition in PARTITIONERS, f"data.partition = {partition!r}; allowed: {', '.join(PARTITIONERS)}")
    _require(num_clients >= 1, "data.num_clients must be >= 1")
    _require(is_async or 1 <= cfg.clients_per_round <= num_clients,  # async: [async] concurrency instead
             f"clients_per_round = {cfg.clients_per_round} must be in [1, data.num_clients = {num_clients}]")
    entry = PARTITIONERS[partition]
    params = table if table or partition != d.partition else dict(d.params)
    allowed = entry.required + entry.optional
    for key in params:
        _require(key in allowed, f"data.{key} is not a key of partition {partition!r}; allowed: dataset, "
                                 f"num_clients, partition, normalize, {', '.join(allowed) or '(none)'}")
    for key in entry.required:
        _require(key in params, f"data.{key} is required by partition {partition!r}")
    return DataConfig(dataset, num_clients, partition, params, normalize)


def _model(table: dict) -> ModelConfig:
    from fedpress.models import list_models, model_options

    name = _check_type("model.name", table.pop("name", ModelConfig.name), ModelConfig.name)
    outputs = _check_type("model.outputs", table.pop("outputs", ModelConfig.outputs), ModelConfig.outputs)
    _require(name in list_models(), f"model.name = {name!r}; allowed: {', '.join(list_models())}")
    _require(outputs in (0, 1), f"model.outputs = {outputs}; allowed: 0 (one per class), "
                                f"1 (one logit, binary logistic loss)")
    allowed = model_options(name)
    for key in table:
        _require(key in allowed, f"model.{key} is not an option of model {name!r}; "
                                 f"allowed: name, outputs, {', '.join(allowed) or '(none)'}")
    return ModelConfig(name, table, outputs)


def _async(table: dict, num_clients: int) -> AsyncConfig:
    a = AsyncConfig(**_fixed(AsyncConfig, table, "async."))
    _require(a.arrivals in ARRIVALS, f"async.arrivals = {a.arrivals!r}; allowed: {list(ARRIVALS)}")
    _require(a.duration in DURATIONS, f"async.duration = {a.duration!r}; allowed: {list(DURATIONS)}")
    _require(a.staleness in STALENESS, f"async.staleness = {a.staleness!r}; allowed: {list(STALENESS)}")
    _require(1 <= a.concurrency <= (num_clients if a.arrivals == "concurrency" else a.concurrency),
             f"async.concurrency = {a.concurrency} must be in [1, data.num_clients = {num_clients}]")
    _require(a.rate > 0 and math.isfinite(a.rate), f"async.rate = {a.rate} must be > 0")
    _require(a.scale > 0 and math.isfinite(a.scale), f"async.scale = {a.scale} must be > 0")
    _require(a.speed_sigma >= 0, f"async.speed_sigma = {a.speed_sigma} must be >= 0")
    _require(a.a >= 0, f"async.a = {a.a} must be >= 0")
    _require(a.b >= 0, f"async.b = {a.b} must be >= 0")
    _require(a.max_staleness >= -1, f"async.max_staleness = {a.max_staleness} must be >= 0, or -1 (no limit)")
    return a


def _downlink(table: dict) -> DownlinkConfig:
    d = DownlinkConfig(**_fixed(DownlinkConfig, table, "downlink."))
    stages = d.stages
    for stage in stages:
        _require(stage in DOWNLINK_STAGES, f"downlink.codec = {d.codec!r}: stage {stage!r} is not a downlink codec; "
                                           f"allowed stages: {', '.join(DOWNLINK_STAGES)}, joined by '+'")
    selections, values = ("top_k", "random_k"), ("fp32", "fp16", "bf16", "qsgd", "minmax_affine")
    _require(len(stages) == 1 or (len(stages) == 2 and stages[0] in selections and stages[1] in values),
             f"downlink.codec = {d.codec!r}: a chain is a selection ({', '.join(selections)}) then the values' "
             f"coding ({', '.join(values)}), e.g. \"top_k+fp16\"")
    _require(0 < d.ratio <= 1, f"downlink.ratio = {d.ratio} must be in (0, 1]")
    _require(1 <= d.levels <= 32767, f"downlink.levels = {d.levels} must be in [1, 32767]")
    _require(0 <= d.bucket < 2**32, f"downlink.bucket = {d.bucket} must be in [0, 2^32) (0: one bucket)")
    _require(1 <= d.bits <= 8, f"downlink.bits = {d.bits} must be in [1, 8]")
    _require(d.init in DOWNLINK_INIT, f"downlink.init = {d.init!r}; allowed: {list(DOWNLINK_INIT)}")
    return d


def _train(table: dict) -> TrainConfig:
    t = TrainConfig(**_fixed(TrainConfig, table, "train."))
    _require(t.epochs >= 1 or t.steps >= 1, "train.epochs or train.steps must be >= 1")
    _require(t.steps >= 0, "train.steps must be >= 0 (0: use train.epochs)")
    _require(t.batch_size >= 1, "train.batch_size must be >= 1")
    _require(t.lr > 0, f"train.lr = {t.lr} must be > 0")
    _require(0 <= t.momentum < 1, f"train.momentum = {t.momentum} must be in [0, 1)")
    _require(t.weight_decay >= 0, "train.weight_decay must be >= 0")
    _require(t.lr_schedule in LR_SCHEDULES, f"train.lr_schedule = {t.lr_schedule!r}; allowed: {list(LR_SCHEDULES)}")
    _require(t.lr_step >= 1, "train.lr_step must be >= 1")
    _require(t.lr_gamma > 0, f"train.lr_gamma = {t.lr_gamma} must be > 0")
    _require(0 <= t.lr_min <= t.lr, f"train.lr_min = {t.lr_min} must be in [0, train.lr]")
    return t


def _algorithm(table: dict) -> AlgorithmConfig:
    name = _check_type("algorithm.name", table.pop("name", AlgorithmConfig.name), AlgorithmConfig.name)
    _require(name in REGISTRY, f"algorithm.name = {name!r}; allowed: {', '.join(sorted(REGISTRY))}")
    return AlgorithmConfig(name, resolve_params(name, table))


# ---------------------------------------------------------------------------- files and overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value); the value is read as TOML, else as a bare string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {part} is not a table")
        if path[0] == "algorithm" and path[-1] == "name" and len(path) == 2 and node.get("name") != value:
            # A new algorithm keeps only the hyperparameters it also takes.
            spec = REGISTRY.get(value)
            if spec is not None:
                for key in [k for k in node if k != "name" and k not in spec.params]:
                    del node[key]
        node[path[-1]] = value
    return raw


def load(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    raw.setdefault("name", path.stem)
    return from_dict(apply_overrides(raw, overrides))


def dumps(cfg: Config) -> str:
    """The resolved config as TOML text (what `fedpress run` writes to DIR/config.toml)."""
    d = cfg.to_dict()
    lines = [f"{k} = {_toml(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for name, table in d.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]"] + [f"{k} = {_toml(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} to TOML")
