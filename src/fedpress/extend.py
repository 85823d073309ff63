"""Bring your own model, data, partitioner, codec and algorithm (docs/extending.md).

Each `register_*` adds a name that configs, the CLI, the simulator and Flower then accept
like the built-in ones, and that the run directory records (`summary.json`'s `model`,
`dataset`, `algorithm` are the names you registered). Register from a script before
`load`/`from_dict`, or from a module a config lists in `plugins = ["my_plugin"]` (imported
when the config is read, in every process that reads it: Flower's nodes, a process pool's
workers).

    import fedpress

    @fedpress.register_model("tiny_mlp")
    def tiny_mlp(input_shape, num_classes, generator, *, width: int = 64):
        ...                                    # any torch.nn.Module; keyword-only options
                                               # become [model] keys with their defaults

    fedpress.register_dataset("blobs", fedpress.dataset_from(x_train, y_train, x_test, y_test))

Names are checked: re-registering a built-in or an existing name is an error unless
`replace=True`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fedpress.algorithms.params import AlgorithmSpec, Param
from fedpress.compress import Codec

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def _check_name(kind: str, name: str, taken: Any, replace: bool) -> None:
    if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS:
        raise ValueError(f"register_{kind}: the name must be lowercase letters, digits and '_', got {name!r}")
    if name in taken and not replace:
        raise ValueError(f"register_{kind}: {name!r} is taken; pass replace=True to replace it")


# ---------------------------------------------------------------------------- models


def register_model(name: str, builder: Callable[..., nn.Module] | None = None, *, replace: bool = False):
    """A model builder `builder(input_shape, num_classes, generator, **options) -> nn.Module`
    under `name` (usable as a decorator). `input_shape` is a sample's shape without the batch
    dimension, `generator` the run's init generator (draw parameters from it for seeded
    runs, or ignore it); keyword-only arguments are the model's options, set in [model]."""
    from fedpress.models import registry

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _check_name("model", name, registry._BUILDERS, replace)
        params = list(inspect.signature(fn).parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(positional) != 3:
            raise TypeError(f"register_model({name!r}): the builder takes (input_shape, num_classes, generator) "
                            f"and keyword-only options; it takes {[p.name for p in positional]}")
        registry._BUILDERS[name] = fn
        return fn

    return add if builder is None else add(builder)


# ---------------------------------------------------------------------------- data


def dataset_from(x_train, y_train, x_test, y_test, *, num_classes: int | None = None, name: str = "custom"):
    """A `Dataset` from plain tensors or numpy arrays: inputs (N, ...) as float32, labels (N,)
    as class indices in [0, num_classes) (num_classes: max label + 1 when not given)."""
    from fedpress.data import Dataset

    def floats(a) -> torch.Tensor:
        return torch.as_tensor(a).to(torch.float32).contiguous()

    def labels(a, what: str) -> torch.Tensor:
        t = torch.as_tensor(a)
        if t.is_floating_point() and not torch.equal(t, t.round()):
            raise ValueError(f"dataset_from: {what} must hold class indices, got fractional values")
        return t.to(torch.int64).contiguous()

    xs = [floats(x_train), floats(x_test)]
    ys = [labels(y_train, "y_train"), labels(y_test, "y_test")]
    for x, y, split in ((xs[0], ys[0], "train"), (xs[1], ys[1], "test")):
        if y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"dataset_from: x_{split} has {x.shape[0]} samples and y_{split} shape "
                             f"{tuple(y.shape)}; labels are one index per sample")
        if x.shape[0] == 0:
            raise ValueError(f"dataset_from: the {split} split is empty")
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise ValueError(f"dataset_from: train samples are {tuple(xs[0].shape[1:])}, test samples "
                         f"{tuple(xs[1].shape[1:])}")
    if not all(torch.isfinite(x).all() for x in xs):
        raise ValueError("dataset_from: the inputs hold NaN or infinite values")
    k = int(max(ys[0].max(), ys[1].max())) + 1 if num_classes is None else int(num_classes)
    if min(ys[0].min(), ys[1].min()) < 0 or max(ys[0].max(), ys[1].max()) >= k:
        raise ValueError(f"dataset_from: labels must be in [0, {k})")
    return Dataset(xs[0], ys[0], xs[1], ys[1], num_classes=k, name=name, input_shape=tuple(xs[0].shape[1:]))


def register_dataset(name: str, data=None, *, replace: bool = False):
    """A dataset under `name`: a `Dataset` (`dataset_from(...)`), or a loader
    `loader(normalize: bool) -> Dataset` called when a run needs it (usable as a
    decorator). `[data] normalize` reaches the loader; a `Dataset` given whole is used as
    it is."""
    from fedpress.data import loaders, sources

    def add(source):
        _check_name("dataset", name, {**sources.SOURCES, **loaders.CUSTOM}, replace)
        if isinstance(source, loaders.Dataset):
            dataset = source if source.name == name else _renamed(source, name)
            loaders.CUSTOM[name] = lambda normalize=True: dataset
        elif callable(source):
            loaders.CUSTOM[name] = source
        else:
            raise TypeError(f"register_dataset({name!r}): give a Dataset (see dataset_from) or a loader "
                            f"function, got {type(source).__name__}")
        return source

    return add if data is None else add(data)


def _renamed(ds, name: str):
    from dataclasses import replace

    return replace(ds, name=name)


def register_partitioner(name: str, fn: Callable[..., list[torch.Tensor]] | None = None, *,
                         takes_labels: bool = True, required: tuple[str, ...] = (), optional: tuple[str, ...] = (),
                         random: bool = True, replace: bool = False):
    """A partitioner `fn(labels | n_samples, num_clients, rng, **params) -> [index tensor per
    client]` under `name` (usable as a decorator); `required` and `optional` name its
    [data] keys; `rng` is a numpy Generator derived from the run seed."""
    from fedpress.data.partition import PARTITIONERS, _Entry

    def add(f):
        _check_name("partitioner", name, PARTITIONERS, replace)
        PARTITIONERS[name] = _Entry(f, takes_labels, tuple(required), tuple(optional), random)
        return f

    return add if fn is None else add(fn)


# ---------------------------------------------------------------------------- codecs and algorithms


def register_codec(name: str, factory: Callable[..., Codec] | None = None, *,
                   params: Mapping[str, Param] | None = None, doc: str = "", replace: bool = False):
    """A codec under `name`, as an uplink algorithm of the FedAvg family: `algorithm.name =
    name` sends `factory(**params)` of each client's update (with `algorithm.error_feedback
    = true`, wrapped in error feedback), with FedAvg's server options. `params` declares the
    factory's keyword arguments as [algorithm] keys (`Param(default, doc, ...)`)."""
    from fedpress.algorithms import registry
    from fedpress.compress import error_feedback

    declared = dict(params or {})

    def add(make: Callable[..., Codec]) -> Callable[..., Codec]:
        _check_name("codec", name, registry.REGISTRY, replace)
        keys = {**declared, "error_feedback": Param(False, "keep what the codec drops as a residual",
                                                    choices=(False, True)), **registry.COMMON}

        def build(alg_name: str, p: Mapping[str, Any]):
            codec = make(**{k: p[k] for k in declared})
            return registry._fedavg(alg_name, error_feedback(codec) if p["error_feedback"] else codec, p)

        registry.REGISTRY[name] = AlgorithmSpec(doc or f"FedAvg with the {name} uplink codec", keys, build)
        return make

    return add if factory is None else add(factory)


def register_algorithm(name: str, build: Callable[[str, Mapping[str, Any]], Any] | None = None, *,
                       params: Mapping[str, Param] | None = None, doc: str = "", replace: bool = False):
    """An algorithm under `name`: `build(name, params) -> algorithm`, where the algorithm is a
    frozen dataclass subclassing `fedpress.RoundsAlgorithm` (synchronous rounds) or
    `fedpress.BufferedAlgorithm` (the asynchronous engine), and `params` declares its
    [algorithm] keys (`Param(default, doc, choices=..., check=..., rule=...)`). The runtime
    it needs is read from the class `build` returns with the defaults."""
    from fedpress.algorithms import registry
    from fedpress.algorithms.base import BufferedAlgorithm, RoundsAlgorithm

    declared = dict(params or {})

    def add(make):
        _check_name("algorithm", name, registry.REGISTRY, replace)
        sample = make(name, {k: p.default for k, p in declared.items()})
        mro = type(sample).__mro__  # the protocol it subclasses says which runtime it needs
        if RoundsAlgorithm in mro:
            runtime = "rounds"
        elif BufferedAlgorithm in mro:
            runtime = "buffered"
        else:
            raise TypeError(f"register_algorithm({name!r}): build returned a {type(sample).__name__}, which "
                            f"subclasses neither fedpress.RoundsAlgorithm nor fedpress.BufferedAlgorithm")
        registry.REGISTRY[name] = AlgorithmSpec(doc or (type(sample).__doc__ or name).strip().splitlines()[0],
                                                declared, make, runtime)
        return make

    return add if build is None else add(build)


def import_plugins(modules) -> None:
    """Import each module a config's `plugins` names (what it registers then exists); a
    module that cannot be imported is a ConfigError naming it."""
    import importlib

    from fedpress.errors import ConfigError

    for module in modules:
        if not isinstance(module, str) or not module:
            raise ConfigError(f"plugins: each entry is an importable module name, got {module!r}")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"plugins: cannot import {module!r}: {e}") from None
