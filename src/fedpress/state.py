"""States as plain trees: for checkpoints (and Flower's Context.state), without pickle.

Algorithm and codec states are frozen dataclasses of tensors, nested in tuples. `to_tree`
turns one into dicts, lists, tensors and scalars, which `torch.save` writes and
`torch.load(weights_only=True)` reads back without running code from the file;
`from_tree` rebuilds the dataclasses, importing only classes from fedpress itself.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

_KIND = "__kind__"


def to_tree(obj: Any) -> Any:
    if obj is None or isinstance(obj, bool | int | float | str | torch.Tensor):
        return obj
    if dataclasses.is_dataclass(obj):
        cls = type(obj)
        fields = {f.name: to_tree(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {_KIND: "dataclass", "class": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(obj, tuple):
        return {_KIND: "tuple", "items": [to_tree(x) for x in obj]}
    if isinstance(obj, list):
        return [to_tree(x) for x in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str | int) for k in obj):
            raise TypeError("state dicts need str or int keys")
        return {_KIND: "dict", "items": [[k, to_tree(v)] for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a state; use tensors, scalars and dataclasses")


def from_tree(tree: Any) -> Any:
    if isinstance(tree, list):
        return [from_tree(x) for x in tree]
    if not isinstance(tree, dict):
        return tree
    kind = tree.get(_KIND)
    if kind == "tuple":
        return tuple(from_tree(x) for x in tree["items"])
    if kind == "dict":
        return {k: from_tree(v) for k, v in tree["items"]}
    if kind == "dataclass":
        module, _, qualname = tree["class"].partition(":")
        if not module.startswith("fedpress."):
            raise ValueError(f"refusing to rebuild {tree['class']}: only fedpress state classes are allowed")
        cls: Any = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if not dataclasses.is_dataclass(cls):
            raise ValueError(f"{tree['class']} is not a dataclass")
        return cls(**{k: from_tree(v) for k, v in tree["fields"].items()})
    raise ValueError(f"malformed state tree node: {sorted(tree)}")


def save(obj: Any, path: str | Path) -> None:
    """Write atomically: a run killed mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(to_tree(obj), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: str | Path) -> Any:
    return from_tree(torch.load(path, weights_only=True))
