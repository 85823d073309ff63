"""FLARE study (issue 4): the MNIST CNN setup at R = 0.001%, FLARE vs EC vs EC+prox vs EF21 vs
FedAvg, with all 10 clients and with 3, 5 and 7 of 10 clients working each round.

    FEDPRESS_MIRROR=../shared/datasets .venv/bin/python benchmarks/study_flare.py [--rounds 80]
"""

import argparse
from pathlib import Path

from study import run_grid

KEEP = ["algorithm.keep_percent=0.001"]
VARIANTS = {
    "flare": [],
    "ec": ["algorithm.name=ec", *KEEP],
    "ef21": ["algorithm.name=ef21", *KEEP],
    "ec_prox": ["algorithm.name=ec_prox", *KEEP, "algorithm.tau0=0.05", "algorithm.c=1.1"],
    "fedavg": ["algorithm.name=fedavg"],  # equal 600-image clients: weighted mean = unweighted
}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=80)
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--out", default="runs/study_flare")
    ap.add_argument("--unavailable-variants", default="flare,ec,ef21,fedavg")
    ap.add_argument("--report-only", action="store_true", help="only write the tables of finished runs")
    args = ap.parse_args()
    rounds = [f"rounds={args.rounds}"]
    text = run_grid("configs/flare/mnist_cnn.toml", {"flare_mnist_cnn_all10": rounds}, VARIANTS,
                    Path(args.out), args.target, Path("docs/figures/flare"), args.report_only)
    few = {k: VARIANTS[k] for k in args.unavailable_variants.split(",")}
    settings = {f"flare_mnist_cnn_{m}of10": [*rounds, f"clients_per_round={m}"] for m in (7, 5, 3)}
    text += run_grid("configs/flare/mnist_cnn.toml", settings, few, Path(args.out), args.target,
                     Path("docs/figures/flare"), args.report_only)
    print(text)
