"""Every registered algorithm keeps the algorithm contract (tests/algorithms/contract.py).

`TestRegistered` covers each name in the registry, so an algorithm registered tomorrow is
checked without touching this file; `TASK` holds what a family needs on the tiny task (a
hyperparameter that makes a few rounds informative). The other classes add the
variants whose steps differ: other plan terms (Proximal, MaskedDistance, CompressedPoint,
a momentum reset, a gradient mask), other messages (fp16/bf16, seeded indices, QSGD,
min-max codes, a compressed reply) and models with convolutions for the pruning family.
"""

from fedpress.algorithms.registry import REGISTRY
from tests.algorithms.contract import AlgorithmContract, Case

FEW = {"ratio": 0.1}  # top-k / random-k keep 10%: informative in three rounds
ACCUMULATE = {"keep_percent": 5.0}  # FLARE's default keeps one entry a tensor
PRUNE = {"sparsity": 0.8}
TASK = {
    **dict.fromkeys(("topk", "topk_ef", "randk", "randk_ef"), {"params": FEW}),
    **dict.fromkeys(("flare", "ec", "ec_prox", "ef21"), {"params": ACCUMULATE}),
    # SparsyFed's family re-parameterises the model's Linear and Conv2d layers
    # (prepare_model): the MLP's Linear layers here, a CNN in TestPruningWithConvolutions
    **dict.fromkeys(("sparsyfed", "topk_prune", "zerofl", "flash"), {"params": PRUNE}),
}


def registered(name: str) -> Case:
    return Case(name, **TASK.get(name, {}))


class TestRegistered(AlgorithmContract):
    cases = [registered(name) for name in REGISTRY]


class TestDenseAndSparseUplinkVariants(AlgorithmContract):
    cases = [
        Case("fedavg", {"server_momentum": 0.9, "prox_mu": 0.01, "downlink": "fp16", "precision": "bf16"},
             label="momentum_prox_fp16_down"),
        Case("topk_ef", {**FEW, "scope": "tensor", "precision": "fp16"}, label="tensor_fp16"),
        Case("randk", {**FEW, "seeded": True, "unbiased": True}, label="seeded_unbiased"),
        Case("threshold", {"error_feedback": True, "precision": "fp16"}, label="ef_fp16"),
        Case("qsgd", {"levels": 4, "bucket": 0, "elias": True}, label="elias"),
    ]


class TestFedSparQAndFLAREOptions(AlgorithmContract):
    cases = [
        Case("fedsparq", {"selection": "random", "values": "fp32", "residual": "quantization_only"},
             label="random_fp32"),
        Case("fedsparq", {"selection": "static", "strict": True, "server_momentum": 0.0, "prox_mu": 0.0},
             label="static"),
        Case("flare", {**ACCUMULATE, "penalty": "l2", "compat": True, "p": 3}, label="l2_compat"),
    ]


class TestFedComLocVariants(AlgorithmContract):
    cases = [  # CompressedPoint in the plan; a compressed reply; compressed uplinks moving h
        Case("fedcomloc", {"variant": "local", "compressor": "topk_qsgd", "bits": 6}, label="local"),
        Case("fedcomloc", {"variant": "global", "compressor": "qsgd", "bits": 8}, label="global"),
        Case("fedcomloc", {"variant": "com", "compressor": "topk_minmax", "cv_ref": "compressed"},
             label="com_minmax"),
        Case("scaffnew", {"p": 0.5}, {"clients_per_round": 12}, label="full_participation"),
    ]


# FedAvg's CNN on the 1x4x4 samples: Conv2d layers for Powerprop, SWAT (whose first
# convolution stays dense) and the global pruning pool; it learns slowly, so iid clients,
# plain SGD and five rounds
CNN = {"model": {"name": "cnn"}, "data": {"dataset": "mnist", "num_clients": 12, "partition": "iid"},
       "train.lr": 0.2, "train.momentum": 0.0}


class TestPruningWithConvolutions(AlgorithmContract):
    cases = [Case(name, PRUNE, CNN, steps=5, label="cnn") for name in ("sparsyfed", "topk_prune", "zerofl", "flash")]


class TestQuantizedAsynchronous(AlgorithmContract):
    cases = [
        Case("qafel", {"client_quantizer": "top_k", "client_ratio": 0.2, "server_quantizer": "minmax_affine"},
             label="topk_minmax"),
        Case("naive", {"server_quantizer": "minmax_affine", "server_bits": 8, "client_quantizer": "fp32"},
             label="minmax"),
        Case("fedbuff", {"server_step": "sum", "server_lr": 0.5}, label="sum"),
    ]


def test_every_registered_algorithm_has_a_case():
    assert [c.name for c in TestRegistered.cases] == list(REGISTRY)
