"""What a registry entry is: an algorithm's hyperparameters with defaults and allowed values.

Each family of algorithms may declare its entries next to its code (`SPECS` in its module);
`registry.py` gathers them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    default: Any
    doc: str
    choices: tuple | None = None  # allowed values, when the set is finite
    check: Callable[[Any], bool] | None = None  # a range rule
    rule: str = ""  # the rule in words, for the error message


def positive(v) -> bool:
    return v > 0


def unit(v) -> bool:
    return 0 < v <= 1


def nonneg(v) -> bool:
    return v >= 0


def momentum_range(v) -> bool:
    return 0 <= v < 1


@dataclass(frozen=True)
class AlgorithmSpec:
    doc: str
    params: dict[str, Param]
    build: Callable[[str, Mapping[str, Any]], Any]
    runtime: str = "rounds"  # the engine it needs: "rounds" (synchronous) or "buffered" (asynchronous)

    def __post_init__(self):
        if self.runtime not in ("rounds", "buffered"):
            raise ValueError(f"AlgorithmSpec.runtime must be 'rounds' or 'buffered', got {self.runtime!r}")


def boolean(doc: str, default: bool = False) -> Param:
    return Param(default, doc, choices=(False, True))
