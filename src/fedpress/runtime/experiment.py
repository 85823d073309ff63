"""What a config builds once, for every runtime: data, partition, model (on its device), algorithm."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from fedpress.algorithms import Algorithm, build
from fedpress.algorithms.base import MODEL
from fedpress.config import Config
from fedpress.data import Dataset, Partition, load, partition
from fedpress.errors import ConfigError
from fedpress.layout import Layout
from fedpress.local import FlatModel
from fedpress.models import build_model
from fedpress.rng import derive, derive_numpy
from fedpress.runtime.downlink import Downlink, codec_of


def resolve_device(name: str) -> torch.device:
    """The torch device of the config's `device` key: "auto" is CUDA where present, then
    MPS, else the CPU; a device this machine does not have is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device = {name!r}: this machine has no CUDA device (torch {torch.__version__} "
                              f"built {'with' if torch.version.cuda else 'without'} CUDA); use \"cpu\" or \"auto\"")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device = {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device = {name!r}: MPS is not available on this machine; use \"cpu\" or \"auto\"")
    return device


@dataclass(frozen=True)
class Experiment:
    """Everything a config builds once: data, partition, model, algorithm."""

    config: Config
    dataset: Dataset  # on the CPU: a client's batches go to the device as it trains
    parts: Partition  # every client's index slice into the training set (CSR: order + offsets)
    model: FlatModel  # its module on `device`
    algorithm: Algorithm
    x0: torch.Tensor  # (d,) initial model state, on the CPU like every state and message
    device: torch.device = torch.device("cpu")  # where local training and evaluation run
    downlink: Downlink | None = None  # [downlink]: the hidden-state compressed downlink; None: the algorithm's own

    @cached_property
    def wire(self) -> Layout:
        """The layout of the messages: the model state, unless the algorithm sends more
        (Scaffold's model and control variate)."""
        return self.algorithm.wire_layout(self.model)


def client_partition(cfg: Config, labels: torch.Tensor) -> Partition:
    """The clients' index tensors of a config: the one split its runs (and `fedpress partition`) use."""
    try:
        return partition(cfg.data.partition, labels, cfg.data.num_clients, derive_numpy(cfg.seed, "partition"),
                         **cfg.data.params)
    except ValueError as e:
        raise ConfigError(f"[data] {e}") from None


def setup(cfg: Config) -> Experiment:
    device = resolve_device(cfg.device)  # first: a device this machine lacks fails before any work
    ds = load(cfg.data.dataset, normalize=cfg.data.normalize)
    parts = client_partition(cfg, ds.y_train)
    outputs = cfg.model.outputs or ds.num_classes  # outputs = 1: one logit, the binary logistic loss
    if cfg.model.outputs and ds.num_classes != 2:
        raise ConfigError(f"model.outputs = 1 (binary logistic loss) needs a two-class dataset; "
                          f"{cfg.data.dataset} has {ds.num_classes} classes")
    try:
        module = build_model(cfg.model.name, ds.input_shape, outputs, derive(cfg.seed, "init"), **cfg.model.options)
    except ValueError as e:
        raise ConfigError(f"[model] {e}") from None
    algorithm = build(cfg.algorithm.name, cfg.algorithm.params)
    if algorithm.plain_sgd and cfg.train.momentum:
        raise ConfigError(f"train.momentum = {cfg.train.momentum}: {cfg.algorithm.name} needs plain SGD local steps "
                          f"(its control variates assume x <- x - lr (g - h)); set train.momentum = 0")
    downlink = hidden_downlink(cfg, algorithm)
    # re-parameterised models (SparsyFed's Powerprop layers); the default hook returns the module
    module = algorithm.prepare_model(module, derive(cfg.seed, "init", "reparameterise"))
    model = FlatModel.of(module)
    x0 = model.initial().detach().clone()  # on the CPU, before the module moves
    module.to(device)  # in place: the model's layouts stay as they are
    return Experiment(cfg, ds, parts, model, algorithm, x0, device, downlink)


def hidden_downlink(cfg: Config, algorithm: Algorithm) -> Downlink | None:
    """The [downlink] table's hidden-state downlink, for an algorithm whose broadcast is the
    model (`RoundsAlgorithm.downlink_content`); a ConfigError for one whose is not."""
    if cfg.downlink is None:
        return None
    seeded = cfg.downlink.init == "seeded"
    if algorithm.runtime == "buffered":  # QAFeL's own hidden state: only its clients' first model is chosen here
        if not algorithm.keeps_hidden_state:
            raise ConfigError(f"[downlink] sets how clients get a hidden state x̂; {cfg.algorithm.name} keeps none "
                              f"(its clients download the model with every start)")
        return Downlink(None, seeded)
    what = algorithm.downlink_content
    if what != MODEL:
        raise ConfigError(f"[downlink] compresses a broadcast of the model with a hidden state; "
                          f"{cfg.algorithm.name}'s downlink is {what}")
    if cfg.algorithm.params.get("downlink", "fp32") != "fp32":
        raise ConfigError(f"algorithm.downlink = {cfg.algorithm.params['downlink']!r} and a [downlink] table both "
                          f"set the downlink; use one (downlink.codec = \"{cfg.algorithm.params['downlink']}\" is "
                          f"the hidden-state version of it)")
    return Downlink(codec_of(cfg.downlink), seeded)
