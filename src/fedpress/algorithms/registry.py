"""Short names for algorithms, with their hyperparameters, defaults and allowed values.

`build("topk_ef", {"ratio": 0.01, "precision": "fp16"})` returns the algorithm object; a
key that the algorithm does not take, or a value outside what it allows, raises
`ConfigError` naming `algorithm.<key>` and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fedpress.algorithms import fedbuff, fedcomloc
from fedpress.algorithms.fedavg import FedAvg
from fedpress.algorithms.fedsparq import FedSparQ
from fedpress.algorithms.flare import EF21, FLARE, flare_uplink
from fedpress.algorithms.params import AlgorithmSpec, Param, boolean, momentum_range, nonneg, positive, unit
from fedpress.algorithms.sparsyfed import FLASH, SparsyFed, ZeroFL
from fedpress.compress import (
    Codec,
    bf16,
    chain,
    error_feedback,
    fp16,
    fp32,
    qsgd,
    random_k,
    threshold,
    top_k,
)
from fedpress.errors import ConfigError

PRECISIONS: dict[str, Callable[[], Codec]] = {"fp32": fp32, "fp16": fp16, "bf16": bf16}


COMMON = {
    "server_lr": Param(1.0, "server learning rate eta_s", check=positive, rule="> 0"),
    "server_momentum": Param(0.0, "server momentum beta_s (FedAvgM)", check=momentum_range, rule="in [0, 1)"),
    "prox_mu": Param(0.0, "FedProx coefficient mu", check=nonneg, rule=">= 0"),
    "downlink": Param("fp32", "precision of the broadcast model", choices=tuple(PRECISIONS)),
}
PRECISION = {"precision": Param("fp32", "precision of the values sent up", choices=tuple(PRECISIONS))}
RATIO = {
    "ratio": Param(0.01, "fraction of coordinates kept, k = max(1, ceil(ratio * d))", check=unit, rule="in (0, 1]"),
}


def _then_precision(select: Codec, precision: str) -> Codec:
    return select if precision == "fp32" else chain(select, PRECISIONS[precision]())


def _fedavg(name: str, uplink: Codec, p: Mapping[str, Any]) -> FedAvg:
    return FedAvg(uplink=uplink, downlink=PRECISIONS[p["downlink"]](), server_lr=p["server_lr"],
                  server_momentum=p["server_momentum"], prox_mu=p["prox_mu"], name=name)


def _topk_codec(p) -> Codec:
    return _then_precision(top_k(p["ratio"], scope=p["scope"]), p["precision"])


def _randk_codec(p) -> Codec:
    return _then_precision(random_k(p["ratio"], seeded=p["seeded"], unbiased=p["unbiased"]), p["precision"])


TOPK_PARAMS = {**RATIO, "scope": Param("global", "top-k over the whole vector or per tensor",
                                       choices=("global", "tensor")), **PRECISION, **COMMON}
RANDK_PARAMS = {**RATIO, "seeded": Param(False, "send a seed instead of the indices", choices=(False, True)),
                "unbiased": Param(False, "scale kept values by d/k", choices=(False, True)), **PRECISION, **COMMON}

REGISTRY: dict[str, AlgorithmSpec] = {
    "fedavg": AlgorithmSpec(
        "FedAvg: dense updates (fp32, or fp16/bf16 with precision=)", {**PRECISION, **COMMON},
        lambda n, p: _fedavg(n, PRECISIONS[p["precision"]](), p)),
    "topk": AlgorithmSpec("Top-k sparsification without error feedback", TOPK_PARAMS,
                          lambda n, p: _fedavg(n, _topk_codec(p), p)),
    "topk_ef": AlgorithmSpec("Top-k sparsification with error feedback (EF14)", TOPK_PARAMS,
                             lambda n, p: _fedavg(n, error_feedback(_topk_codec(p)), p)),
    "randk": AlgorithmSpec("Random-k sparsification without error feedback", RANDK_PARAMS,
                           lambda n, p: _fedavg(n, _randk_codec(p), p)),
    "randk_ef": AlgorithmSpec("Random-k sparsification with error feedback", RANDK_PARAMS,
                              lambda n, p: _fedavg(n, error_feedback(_randk_codec(p)), p)),
    "threshold": AlgorithmSpec(
        "Static threshold: send |x_j| >= tau",
        {"tau": Param(1e-3, "threshold tau", check=nonneg, rule=">= 0"),
         "error_feedback": Param(False, "keep the dropped part as a residual", choices=(False, True)),
         **PRECISION, **COMMON},
        lambda n, p: _fedavg(n, (error_feedback if p["error_feedback"] else (lambda c: c))(
            _then_precision(threshold(p["tau"]), p["precision"])), p)),
    "qsgd": AlgorithmSpec(
        "QSGD: stochastic quantization with s levels per sign and one norm per bucket",
        {"levels": Param(15, "levels per sign s", check=lambda v: 1 <= v <= 32767, rule="in [1, 32767]"),
         "bucket": Param(512, "bucket size (0: one bucket for the whole vector)", check=lambda v: 0 <= v < 2**32,
                         rule="in [0, 2^32)"),
         "elias": Param(False, "Elias-code the symbols (QSGD paper) instead of bit-packing", choices=(False, True)),
         **COMMON},
        lambda n, p: _fedavg(n, qsgd(p["levels"], p["bucket"] or None, elias=p["elias"]), p)),
}


def _pick(p: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: p[k] for k in keys}


FEDSPARQ_PARAMS = {
    "beta": Param(0.9, "EMA factor of the per-tensor threshold", check=lambda v: 0 <= v < 1, rule="in [0, 1)"),
    "statistic": Param("mean_abs", "per-tensor statistic fed to the EMA",
                       choices=("mean_abs", "rms", "std", "max_abs")),
    "factor": Param(1.0, "keep |u| >= factor * tau", check=positive, rule="> 0"),
    "values": Param("fp16", "precision of the kept values", choices=("fp16", "fp32")),
    "error_feedback": boolean("keep the residual e_i (ablation: False)", True),
    "selection": Param("ema", "ema threshold | static threshold tau | random at the EMA's density",
                       choices=("ema", "static", "random")),
    "tau": Param(1e-3, "the static threshold (selection = static)", check=nonneg, rule=">= 0"),
    "residual": Param("full", "what e_i keeps: everything not delivered, or only the fp16 error of kept values",
                      choices=("full", "quantization_only")),
    "ema_init": Param("first", "EMA starts at the first statistic, or at 0", choices=("first", "zero")),
    "statistic_of": Param("update_plus_residual", "the statistic is taken of u = delta + e, or of delta",
                          choices=("update_plus_residual", "update")),
    "strict": boolean("keep |u| > tau instead of >="),
    "prox_mu": Param(0.01, "FedProx coefficient mu (ablation: 0)", check=nonneg, rule=">= 0"),
    "server_momentum": Param(0.9, "server momentum beta_s (ablation: 0)", check=momentum_range, rule="in [0, 1)"),
    "server_lr": Param(1.0, "server learning rate eta_s", check=positive, rule="> 0"),
}
KEEP_PERCENT = {
    "keep_percent": Param(0.001, "R: percent of each tensor's entries kept (0.001 = 1e-5 of them)",
                          check=lambda v: 0 < v <= 100, rule="in (0, 100]"),
    "compat": boolean("FLARE reference code: 'k+1 per tensor' selection (and momentum reset at step p)"),
    "server_lr": Param(1.0, "server learning rate", check=positive, rule="> 0"),
}
FLARE_PARAMS = {
    **KEEP_PERCENT,
    "tau0": Param(0.05, "regulariser weight tau0 (0: EC)", check=nonneg, rule=">= 0"),
    "c": Param(1.1, "decay: tau_r = tau0 / c^(r+1)", check=lambda v: v >= 1, rule=">= 1"),
    "p": Param(1, "regularised local steps per round", check=nonneg, rule=">= 0"),
    "t": Param(50.0, "mask percentile of |e| per tensor", check=lambda v: 0 <= v <= 100, rule="in [0, 100]"),
    "penalty": Param("l1", "distance of the regulariser", choices=("l1", "l2")),
}
REGISTRY.update({
    "fedsparq": AlgorithmSpec(
        "FedSparQ: per-tensor EMA thresholds, fp16 values, error feedback, FedProx, server momentum",
        FEDSPARQ_PARAMS, lambda n, p: FedSparQ(**p, name=n)),
    "flare": AlgorithmSpec(
        "FLARE: per-tensor top-k with accumulated error, regularised toward w + e for the first p steps",
        FLARE_PARAMS, lambda n, p: FLARE(**p, name=n)),
    "ec": AlgorithmSpec(
        "EC: per-tensor top-k with error accumulation, unweighted mean (FLARE's baseline, FLARE with tau0 = 0)",
        KEEP_PERCENT,
        lambda n, p: FedAvg(uplink=flare_uplink(p["keep_percent"], p["compat"]), server_lr=p["server_lr"],
                            weighting="uniform", name=n)),
    "ec_prox": AlgorithmSpec(
        "EC + FedProx-style penalty tau_r ||y - w||^2 on all local steps (FLARE's second baseline)",
        {k: v for k, v in FLARE_PARAMS.items() if k not in ("p", "t", "penalty")},
        lambda n, p: FLARE(**p, regularizer="prox", name=n)),
    "ef21": AlgorithmSpec("EF21 with per-tensor top-k (FLARE's third baseline)", KEEP_PERCENT,
                          lambda n, p: EF21(**p, name=n)),
})


SPARSITY = {"sparsity": Param(0.9, "target sparsity of the conv/linear weights after local training",
                             check=lambda v: 0 <= v < 1, rule="in [0, 1)")}
REGISTRY.update({
    "sparsyfed": AlgorithmSpec(
        "SparsyFed: Powerprop layers, activation pruning, global magnitude pruning, sparse states both ways",
        {**SPARSITY, "beta": Param(1.25, "Powerprop exponent", check=lambda v: v >= 1, rule=">= 1"),
         "activation_pruning": boolean("prune saved activations at the layer's weight sparsity", True)},
        lambda n, p: SparsyFed(**p, name=n)),
    "topk_prune": AlgorithmSpec(
        "SparsyFed's Top-K baseline: plain layers, dense local training, the same global pruning",
        SPARSITY, lambda n, p: SparsyFed(sparsity=p["sparsity"], beta=1.0, activation_pruning=False, name=n)),
    "zerofl": AlgorithmSpec(
        "ZeroFL: SWAT weight and activation sparsity in training, global pruning to sparsity - mask_ratio",
        {**SPARSITY, "mask_ratio": Param(0.0, "m: upload at sparsity - m", check=lambda v: 0 <= v < 1,
                                         rule="in [0, 1)")},
        lambda n, p: ZeroFL(**p, name=n)),
    "flash": AlgorithmSpec("FLASH: dense warm-up round, then a fixed mask from the first global model",
                           SPARSITY, lambda n, p: FLASH(**p, name=n)),
})

REGISTRY.update(fedcomloc.SPECS)  # scaffnew, fedcomloc, scaffold
REGISTRY.update(fedbuff.SPECS)  # fedbuff, qafel, naive (asynchronous)


def list_algorithms() -> list[str]:
    return sorted(REGISTRY)


def resolve_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The algorithm's full hyperparameters: defaults overridden by `params`, all checked."""
    if name not in REGISTRY:
        raise ConfigError(f"algorithm.name = {name!r} is not an algorithm; allowed: {', '.join(list_algorithms())}")
    spec = REGISTRY[name].params
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ConfigError(f"algorithm.{unknown[0]} is not a hyperparameter of {name!r}; "
                          f"allowed: {', '.join(sorted(spec))}")
    out = {}
    for key, param in spec.items():
        value = params.get(key, param.default)
        wrong = (
            isinstance(param.default, bool) != isinstance(value, bool)
            or (isinstance(param.default, float) and not isinstance(value, int | float))
            or (type(param.default) is int and type(value) is not int)
            or (isinstance(param.default, str) and not isinstance(value, str))
        )
        if wrong:
            kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
                type(param.default), f"a {type(param.default).__name__}")
            raise ConfigError(f"algorithm.{key} = {value!r} must be {kind} ({param.doc})")
        if param.choices is not None and value not in param.choices:
            raise ConfigError(f"algorithm.{key} = {value!r} is not allowed; allowed: {list(param.choices)}")
        if param.check is not None and not param.check(value):
            raise ConfigError(f"algorithm.{key} = {value!r} must be {param.rule} ({param.doc})")
        out[key] = float(value) if isinstance(param.default, float) else value
    return out


def build(name: str, params: Mapping[str, Any]):
    resolved = resolve_params(name, params)  # a ConfigError naming a wrong name or value
    spec = REGISTRY[name]
    algorithm = spec.build(name, resolved)
    if getattr(type(algorithm), "runtime", None) != spec.runtime:  # the protocol it subclasses says
        raise TypeError(f"algorithm {name!r}: its registry entry says runtime {spec.runtime!r}, but "
                        f"{type(algorithm).__name__} does not follow that protocol (subclass "
                        f"{'RoundsAlgorithm' if spec.runtime == 'rounds' else 'BufferedAlgorithm'})")
    return algorithm
